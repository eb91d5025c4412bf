package policy

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// ReadSecure reads a policy, configuration or key file after Trusted
// accepts it; the error says which file or directory was refused and why.
func ReadSecure(path string) ([]byte, error) {
	data, _, err := ReadTrusted(path)
	return data, err
}

// ReadTrusted is ReadSecure that also returns the file's FileInfo (its
// mode, for the checks that depend on it).
func ReadTrusted(path string) ([]byte, fs.FileInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, nil, fmt.Errorf("%s: not a regular file", path)
	}
	if err := trustedFile(path, fi); err != nil {
		return nil, nil, err
	}
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, nil, err
	}
	if len(data) > MaxFileSize {
		return nil, nil, fmt.Errorf("%s: larger than %d bytes", path, MaxFileSize)
	}
	return data, fi, nil
}

// Trusted checks a file the agent takes orders or secrets from, as sshd's
// StrictModes does: the file and every directory above it, up to "/",
// must be owned by root or by the agent's user and must not be writable by
// group or others, so that nobody else can change or replace it. The one
// exception is a directory with the sticky bit owned by root or the
// agent's user (like /tmp): others may create entries in it but cannot
// rename or remove ours. Both the path as written and its resolution
// through symbolic links are checked.
func Trusted(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	return trustedFile(path, fi)
}

func trustedFile(path string, fi fs.FileInfo) error {
	uid := os.Geteuid()
	if err := trustedMode(path, "", fi, uid, false); err != nil {
		return err
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	seen := map[string]bool{}
	for _, p := range []string{abs, real} {
		for dir := filepath.Dir(p); !seen[dir]; dir = filepath.Dir(dir) {
			seen[dir] = true
			di, err := os.Stat(dir)
			if err != nil {
				return fmt.Errorf("%s: directory %s: %w", path, dir, err)
			}
			if err := trustedMode(path, dir, di, uid, true); err != nil {
				return err
			}
		}
	}
	return nil
}

// trustedMode applies the owner and mode rule to one file or directory
// (dir names it in messages; "" for the file itself).
func trustedMode(path, dir string, fi fs.FileInfo, uid int, isDir bool) error {
	what := path
	if dir != "" {
		what = fmt.Sprintf("%s: directory %s", path, dir)
	}
	owner := -1
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		owner = int(st.Uid)
	}
	if owner != 0 && owner != uid {
		return fmt.Errorf("%s: refused: owned by uid %d, not by root or the agent's user (uid %d) (chown root %s)", what, owner, uid, or(dir, path))
	}
	perm := fi.Mode().Perm()
	if perm&0o022 == 0 || isDir && fi.Mode()&fs.ModeSticky != 0 {
		return nil
	}
	return fmt.Errorf("%s: refused: mode %04o lets group or others write it (chmod go-w %s)", what, perm, or(dir, path))
}

func or(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
