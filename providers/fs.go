package providers

import (
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path"
	"strings"
	"syscall"

	"github.com/twinlet/twinlet/internal/atomicfile"
)

// This file is the confinement of providers to their root. Every file
// operation of a provider goes through a Dir: an os.Root handle (openat
// based), so that the kernel resolves each name relative to an open
// directory and no symbolic link, swapped in at any moment, can lead
// outside it. There is no step where a path is checked first and used
// later.
//
// Symbolic links. A Dir follows a relative link whose target stays inside
// the Dir (os.Root semantics). It refuses every absolute link, even one
// whose target would exist under the root ("/etc/x" meaning <root>/etc/x):
// os.Root treats absolute targets as escapes, and resolving them
// chroot-style by hand would reintroduce the check-then-use gap this file
// exists to close. On a device (root "/") this refuses links such as
// /var/run -> /run in the middle of a path; providers either name the real
// path or, like files, refuse paths that go through any link (Walk).

// ErrOutsideRoot is wrapped by errors for device paths that are not
// absolute or contain "..", and for names whose resolution would leave a
// Dir through a symbolic link (absolute links included).
var ErrOutsideRoot = errors.New("path leaves the root")

// ErrSymlink is wrapped by Walk's errors when a component of the path is
// a symbolic link.
var ErrSymlink = errors.New("a path component is a symbolic link")

// IsOutsideRoot reports whether err says that a name left its Dir (or the
// root), whether from this package or from os.Root itself.
func IsOutsideRoot(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, ErrOutsideRoot) {
		return true
	}
	// os.Root reports an escape with an unexported error; its text is
	// part of the os package's behaviour (pinned Go version, tested).
	for e := err; e != nil; e = errors.Unwrap(e) {
		if e.Error() == "path escapes from parent" {
			return true
		}
	}
	return false
}

// outside wraps an escape error of os.Root so that errors.Is(err,
// ErrOutsideRoot) holds; other errors are returned as they are.
func outside(err error) error {
	if err != nil && !errors.Is(err, ErrOutsideRoot) && IsOutsideRoot(err) {
		return fmt.Errorf("%w: %w", ErrOutsideRoot, err)
	}
	return err
}

// Rel turns an absolute device path into a name relative to the root, as
// Dir methods take it: "/etc/motd" is "etc/motd", "/" is ".". It refuses
// relative paths, ".." components and NUL bytes.
func Rel(p string) (string, error) {
	if !path.IsAbs(p) {
		return "", fmt.Errorf("%q: not an absolute path: %w", p, ErrOutsideRoot)
	}
	if strings.IndexByte(p, 0) >= 0 {
		return "", fmt.Errorf("%q: contains a NUL byte", p)
	}
	for _, c := range strings.Split(p, "/") {
		if c == ".." {
			return "", fmt.Errorf("%q: contains \"..\": %w", p, ErrOutsideRoot)
		}
	}
	rel := strings.TrimLeft(path.Clean(p), "/")
	if rel == "" {
		return ".", nil
	}
	return rel, nil
}

// OpenRoot opens the root the provider acts on. The caller closes it.
// When the agent holds a handle (Env.RootFS), the Dir is a fresh handle of
// that same directory (one openat), so that closing it never closes the
// agent's; otherwise Env.Root is opened.
func (e *Env) OpenRoot() (*Dir, error) {
	var (
		r   *os.Root
		err error
	)
	if e.RootFS != nil {
		r, err = e.RootFS.OpenRoot(".")
	} else {
		r, err = os.OpenRoot(e.Root)
	}
	if err != nil {
		return nil, fmt.Errorf("open root: %w", err)
	}
	return &Dir{Root: r, path: "/"}, nil
}

// Dir is an open directory inside the root. Names given to its methods
// (its own and those of the embedded os.Root) are relative to it and are
// resolved by the kernel from its handle; see the file comment for how
// links are treated. Note that os.Root's Chmod and Chown follow a final
// link (inside the Dir): to change an item that must not be a link, use
// OpenNoFollow and the File's Chmod and Chown. A Dir may be used by
// several goroutines at once.
type Dir struct {
	*os.Root
	path string // device path, for messages
}

// Path is the device path the Dir was opened as.
func (d *Dir) Path() string { return d.path }

// devPath joins a name to the Dir's device path, for messages.
func (d *Dir) devPath(name string) string { return path.Join(d.path, name) }

// Sub opens the directory name inside d, following relative links that
// stay inside d.
func (d *Dir) Sub(name string) (*Dir, error) {
	if name == "." || name == "" {
		r, err := d.Root.OpenRoot(".")
		if err != nil {
			return nil, err
		}
		return &Dir{Root: r, path: d.path}, nil
	}
	r, err := d.Root.OpenRoot(name)
	if err != nil {
		return nil, outside(err)
	}
	return &Dir{Root: r, path: d.devPath(name)}, nil
}

// Walk opens the directory name inside d without following any symbolic
// link: each component is opened from its parent's handle and must be the
// directory that Lstat saw there (same device and inode), so a link
// swapped in between is detected, not followed. A component that is a
// link fails with ErrSymlink; a missing one with fs.ErrNotExist. With
// create, missing components are created with perm.
func (d *Dir) Walk(name string, create bool, perm os.FileMode) (*Dir, error) {
	cur, err := d.Sub(".")
	if err != nil {
		return nil, err
	}
	if name == "." || name == "" {
		return cur, nil
	}
	for _, c := range strings.Split(name, "/") {
		if c == "" || c == "." {
			continue
		}
		next, err := cur.walkOne(c, create, perm)
		cur.Close()
		if err != nil {
			return nil, err
		}
		cur = next
	}
	return cur, nil
}

func (d *Dir) walkOne(c string, create bool, perm os.FileMode) (*Dir, error) {
	if c == ".." {
		return nil, fmt.Errorf("%s: %w", d.devPath(c), ErrOutsideRoot)
	}
	for try := 0; ; try++ {
		fi, err := d.Lstat(c)
		if errors.Is(err, fs.ErrNotExist) && create && try == 0 {
			if err := d.Mkdir(c, perm); err != nil && !errors.Is(err, fs.ErrExist) {
				return nil, err
			}
			continue
		}
		if err != nil {
			return nil, err
		}
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			return nil, fmt.Errorf("%s: %w", d.devPath(c), ErrSymlink)
		case !fi.IsDir():
			return nil, &fs.PathError{Op: "walk", Path: d.devPath(c), Err: syscall.ENOTDIR}
		}
		r, err := d.Root.OpenRoot(c)
		if err != nil {
			return nil, outside(err)
		}
		got, err := r.Stat(".")
		if err != nil {
			r.Close()
			return nil, err
		}
		if !os.SameFile(fi, got) {
			r.Close()
			return nil, fmt.Errorf("%s changed while it was opened: %w", d.devPath(c), ErrSymlink)
		}
		return &Dir{Root: r, path: d.devPath(c)}, nil
	}
}

// checkBase refuses names that are not a single path component.
func checkBase(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsRune(name, '/') {
		return fmt.Errorf("%q is not a single path component", name)
	}
	return nil
}

// OpenNoFollow opens the entry base (one component) of d without following
// it if it is a symbolic link: openat(2) with O_NOFOLLOW on d's handle.
// flag is added to O_NOFOLLOW|O_CLOEXEC|O_NOCTTY; add O_NONBLOCK to open
// something that might have become a FIFO without blocking. A link fails
// with ELOOP (wrapped in ErrSymlink).
func (d *Dir) OpenNoFollow(base string, flag int) (*os.File, error) {
	if err := checkBase(base); err != nil {
		return nil, err
	}
	self, err := d.Open(".")
	if err != nil {
		return nil, err
	}
	defer self.Close()
	sc, err := self.SyscallConn()
	if err != nil {
		return nil, err
	}
	fd := -1
	var oerr error
	if err := sc.Control(func(dirfd uintptr) {
		for {
			fd, oerr = syscall.Openat(int(dirfd), base, flag|syscall.O_NOFOLLOW|syscall.O_CLOEXEC|syscall.O_NOCTTY, 0)
			if oerr != syscall.EINTR {
				return
			}
		}
	}); err != nil {
		return nil, err
	}
	if oerr == syscall.ELOOP {
		return nil, &fs.PathError{Op: "open", Path: d.devPath(base), Err: fmt.Errorf("%w (%w)", ErrSymlink, oerr)}
	}
	if oerr != nil {
		return nil, &fs.PathError{Op: "open", Path: d.devPath(base), Err: oerr}
	}
	return os.NewFile(uintptr(fd), d.devPath(base)), nil
}

// Sync fsyncs the directory itself, so that a create, rename or remove in
// it is durable.
func (d *Dir) Sync() error {
	f, err := d.Open(".")
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", d.path, err)
	}
	return nil
}

// FileMeta is what WriteFileAtomic gives the new file before it replaces
// the old one, so that the file never appears with the wrong owner or
// mode.
type FileMeta struct {
	// Mode holds the permission bits and setuid, setgid and sticky.
	Mode os.FileMode
	// SetOwner applies UID and GID (-1 leaves one alone); otherwise the
	// file belongs to the agent.
	SetOwner bool
	UID, GID int
}

// split returns the parent Dir of name (created as needed with 0755
// directories, following links inside d) and the final component. The
// caller closes the Dir.
func (d *Dir) split(name string, create bool) (*Dir, string, error) {
	dir, base := path.Split(name)
	dir = strings.TrimSuffix(dir, "/")
	if err := checkBase(base); err != nil {
		return nil, "", err
	}
	if dir == "" {
		dir = "."
	}
	if create && dir != "." {
		if err := d.MkdirAll(dir, 0o755); err != nil {
			return nil, "", outside(err)
		}
	}
	p, err := d.Sub(dir)
	if err != nil {
		return nil, "", err
	}
	return p, base, nil
}

// WriteFileAtomic replaces name in d with data: a temporary file is
// created next to it (O_EXCL, so never through a link), written, given
// its owner and mode, fsynced, renamed over name, and the directory is
// fsynced. A crash leaves the old or the new content, never a mix. Missing
// parent directories are created (0755). A final link at name is replaced,
// never followed.
func (d *Dir) WriteFileAtomic(name string, data []byte, meta FileMeta) error {
	defer atomicfile.Hold()()
	p, base, err := d.split(name, true)
	if err != nil {
		return fmt.Errorf("atomic write %s: %w", d.devPath(name), err)
	}
	defer p.Close()
	if err := p.writeAtomic(base, data, meta); err != nil {
		return fmt.Errorf("atomic write %s: %w", d.devPath(name), err)
	}
	return nil
}

func (d *Dir) writeAtomic(base string, data []byte, meta FileMeta) error {
	tmp := fmt.Sprintf(".%s.tmp-%016x", base, rand.Uint64())
	f, err := d.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	ok := false
	defer func() {
		if !ok {
			f.Close()
			d.Remove(tmp)
		}
	}()
	if _, err := f.Write(data); err != nil {
		return err
	}
	if meta.SetOwner && (meta.UID >= 0 || meta.GID >= 0) {
		if err := f.Chown(meta.UID, meta.GID); err != nil {
			return err
		}
	}
	// After chown, which clears setuid and setgid.
	if err := f.Chmod(meta.Mode); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync: %w", err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := d.Rename(tmp, base); err != nil {
		return err
	}
	ok = true
	return d.Sync()
}

// SymlinkAtomic replaces name in d with a symbolic link to target: a
// crash leaves the old entry or the new link. The target is stored as
// given and never resolved here.
func (d *Dir) SymlinkAtomic(target, name string) error {
	p, base, err := d.split(name, true)
	if err != nil {
		return fmt.Errorf("symlink %s: %w", d.devPath(name), err)
	}
	defer p.Close()
	tmp := fmt.Sprintf(".%s.tmp-%016x", base, rand.Uint64())
	if err := p.Symlink(target, tmp); err != nil {
		return fmt.Errorf("symlink %s: %w", d.devPath(name), err)
	}
	if err := p.Rename(tmp, base); err != nil {
		p.Remove(tmp)
		return fmt.Errorf("symlink %s: %w", d.devPath(name), err)
	}
	return p.Sync()
}

// ReadFileIfExists reads name (following links inside d); a missing file
// is empty, not an error.
func (d *Dir) ReadFileIfExists(name string) ([]byte, error) {
	b, err := d.ReadFile(name)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		return nil, nil
	}
	return b, outside(err)
}
