package diagnostics

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/twinlet/twinlet/providers"
	"github.com/twinlet/twinlet/providers/commands"
)

// Manifest is manifest.json, the last entry of a bundle.
type Manifest struct {
	CreatedAt     time.Time `json:"createdAt"`
	MaxBundleSize int64     `json:"maxBundleSize"`
	Entries       []Entry   `json:"entries"`
}

// Entry is one collected item.
type Entry struct {
	Collector string `json:"collector"`
	// Path is the entry's name in the bundle; empty when nothing was
	// written (an error, or no room left).
	Path string `json:"path,omitempty"`
	// Source is what was read: a device path, a journalctl or a command
	// line.
	Source string `json:"source"`
	// Size and SHA256 describe the bytes in the bundle.
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256,omitempty"`
	// Truncated is set when the size cap (or the command's maxOutput) cut
	// the entry short or left it out; OriginalSize is then what it had.
	Truncated    bool   `json:"truncated,omitempty"`
	OriginalSize int64  `json:"originalSize,omitempty"`
	Error        string `json:"error,omitempty"`
}

type bundleSummary struct {
	manifest  Manifest
	size      int64
	truncated int
	errors    int
}

// bundle writes entries into a tar.gz under a budget of content bytes.
type bundle struct {
	tw     *tar.Writer
	left   int64
	m      *Manifest
	now    time.Time
	seen   map[string]bool
	failed int
	cut    int
}

// add writes data (the whole content, of which only what fits the budget
// goes in) as name and records it.
func (b *bundle) add(e Entry, data []byte, original int64) error {
	if original < int64(len(data)) {
		original = int64(len(data))
	}
	if int64(len(data)) > b.left {
		data = data[:b.left]
	}
	if int64(len(data)) < original {
		e.Truncated, e.OriginalSize = true, original
	}
	if e.Path != "" && b.seen[e.Path] {
		e.Error = "a second entry of the same name; left out"
		e.Path = ""
	}
	if e.Path != "" && (len(data) > 0 || original == 0) {
		hdr := &tar.Header{Name: e.Path, Mode: 0o600, Size: int64(len(data)), ModTime: b.now, Typeflag: tar.TypeReg, Format: tar.FormatPAX}
		if err := b.tw.WriteHeader(hdr); err != nil {
			return err
		}
		if _, err := b.tw.Write(data); err != nil {
			return err
		}
		b.seen[e.Path] = true
		sum := sha256.Sum256(data)
		e.Size, e.SHA256 = int64(len(data)), hex.EncodeToString(sum[:])
		b.left -= int64(len(data))
	} else {
		e.Path = ""
	}
	if e.Error != "" {
		b.failed++
	}
	if e.Truncated {
		b.cut++
	}
	b.m.Entries = append(b.m.Entries, e)
	return nil
}

func (b *bundle) fail(collector, source, format string, a ...any) {
	b.m.Entries = append(b.m.Entries, Entry{Collector: collector, Source: source, Error: fmt.Sprintf(format, a...)})
	b.failed++
}

// writeBundle collects every collector of spec into a tar.gz at hostPath.
func writeBundle(ctx context.Context, env *providers.Env, spec Spec, hostPath string) (bundleSummary, error) {
	f, err := os.OpenFile(hostPath, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return bundleSummary{}, err
	}
	defer f.Close()
	zw := gzip.NewWriter(f)
	t := now(env).UTC()
	b := &bundle{tw: tar.NewWriter(zw), left: spec.MaxBundleSize, m: &Manifest{CreatedAt: t, MaxBundleSize: spec.MaxBundleSize, Entries: []Entry{}}, now: t, seen: map[string]bool{}}
	for i, c := range spec.Collectors {
		if err := ctx.Err(); err != nil {
			return bundleSummary{}, err
		}
		env.Progress("collect "+c.Name, i, len(spec.Collectors))
		var err error
		switch {
		case c.Files != nil:
			err = collectFiles(env, b, c)
		case c.Journal != nil:
			err = collectJournal(ctx, env, b, c)
		case c.Command != nil:
			err = collectCommand(ctx, env, b, c)
		}
		if err != nil {
			return bundleSummary{}, err
		}
	}
	mb, _ := json.MarshalIndent(b.m, "", "  ")
	if err := b.tw.WriteHeader(&tar.Header{Name: "manifest.json", Mode: 0o600, Size: int64(len(mb)), ModTime: t, Typeflag: tar.TypeReg, Format: tar.FormatPAX}); err != nil {
		return bundleSummary{}, err
	}
	if _, err := b.tw.Write(mb); err != nil {
		return bundleSummary{}, err
	}
	if err := b.tw.Close(); err != nil {
		return bundleSummary{}, err
	}
	if err := zw.Close(); err != nil {
		return bundleSummary{}, err
	}
	if err := f.Sync(); err != nil {
		return bundleSummary{}, err
	}
	fi, err := f.Stat()
	if err != nil {
		return bundleSummary{}, err
	}
	return bundleSummary{manifest: *b.m, size: fi.Size(), truncated: b.cut, errors: b.failed}, nil
}

// literalPrefix is the directory part of a glob before its first
// component with a metacharacter ("/var/log" for "/var/log/*.log").
func literalPrefix(glob string) string {
	comps := strings.Split(strings.TrimPrefix(glob, "/"), "/")
	var lit []string
	for i, c := range comps {
		if strings.ContainsAny(c, `*?\`) || i == len(comps)-1 {
			break
		}
		lit = append(lit, c)
	}
	return "/" + strings.Join(lit, "/")
}

// collectFiles adds the regular files matching the collector's globs,
// reached through the root's Dir without following any symbolic link.
func collectFiles(env *providers.Env, b *bundle, c Collector) error {
	root, err := env.OpenRoot()
	if err != nil {
		return err
	}
	defer root.Close()
	for _, glob := range c.Files {
		prefix := literalPrefix(glob)
		rel, err := providers.Rel(prefix)
		if err != nil {
			b.fail(c.Name, glob, "%v", err)
			continue
		}
		d, err := root.Walk(rel, false, 0)
		if errors.Is(err, fs.ErrNotExist) {
			b.fail(c.Name, glob, "%s does not exist", prefix)
			continue
		}
		if err != nil {
			b.fail(c.Name, glob, "%v", err)
			continue
		}
		var found []string
		n := 0
		err = walkFiles(d, prefix, glob, &n, func(devPath string, dir *providers.Dir, base string) error {
			found = append(found, devPath)
			return addFile(b, c.Name, dir, base, devPath)
		})
		d.Close()
		if err != nil {
			return err
		}
		if len(found) == 0 {
			b.fail(c.Name, glob, "no file matches")
		}
	}
	return nil
}

// walkFiles calls fn for each regular file under d (device path p) whose
// path matches glob, in name order, skipping symbolic links, and entering
// only directories that a match can lie under.
func walkFiles(d *providers.Dir, p, glob string, n *int, fn func(devPath string, dir *providers.Dir, base string) error) error {
	self, err := d.Open(".")
	if err != nil {
		return nil
	}
	ents, err := self.ReadDir(-1)
	self.Close()
	if err != nil {
		return nil
	}
	sort.Slice(ents, func(i, j int) bool { return ents[i].Name() < ents[j].Name() })
	for _, e := range ents {
		child := path.Join(p, e.Name())
		switch {
		case e.Type()&fs.ModeSymlink != 0:
			continue
		case e.IsDir():
			if !mayContain(glob, child) {
				continue
			}
			sub, err := d.Walk(e.Name(), false, 0)
			if err != nil {
				continue
			}
			err = walkFiles(sub, child, glob, n, fn)
			sub.Close()
			if err != nil {
				return err
			}
		case e.Type().IsRegular() && providers.MatchGlob(glob, child, '/'):
			if *n >= maxFilesPerCollector {
				return nil
			}
			*n++
			if err := fn(child, d, e.Name()); err != nil {
				return err
			}
		}
	}
	return nil
}

// mayContain reports whether something under directory dir can match
// glob: the glob has "**", or dir has fewer components than the glob and
// its components match the glob's first ones.
func mayContain(glob, dir string) bool {
	if strings.Contains(glob, "**") {
		return true
	}
	g := strings.Split(strings.TrimPrefix(glob, "/"), "/")
	dc := strings.Split(strings.TrimPrefix(dir, "/"), "/")
	if len(dc) >= len(g) {
		return false
	}
	return providers.MatchGlob("/"+strings.Join(g[:len(dc)], "/"), dir, '/')
}

func addFile(b *bundle, collector string, d *providers.Dir, base, devPath string) error {
	e := Entry{Collector: collector, Source: devPath, Path: "files" + devPath}
	f, err := d.OpenNoFollow(base, syscall.O_RDONLY|syscall.O_NONBLOCK)
	if err != nil {
		e.Path, e.Error = "", err.Error()
		return b.add(e, nil, 0)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		e.Path, e.Error = "", "not a regular file"
		return b.add(e, nil, 0)
	}
	data, err := io.ReadAll(io.LimitReader(f, b.left))
	if err != nil {
		e.Path, e.Error = "", err.Error()
		return b.add(e, nil, 0)
	}
	return b.add(e, data, fi.Size())
}

// limitBuffer keeps the first max bytes written and counts the rest.
type limitBuffer struct {
	buf   bytes.Buffer
	max   int
	total int64
}

func (l *limitBuffer) Write(p []byte) (int, error) {
	l.total += int64(len(p))
	if room := l.max - l.buf.Len(); room > 0 {
		l.buf.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

// runBounded runs argv (never through a shell) with a timeout, keeping at
// most max bytes of its standard output and error (interleaved).
func runBounded(ctx context.Context, argv []string, timeout time.Duration, max int) (*limitBuffer, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	out := &limitBuffer{max: max}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8", "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0"}
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	if ctx.Err() == context.DeadlineExceeded {
		err = fmt.Errorf("timed out after %v", timeout)
	}
	return out, err
}

func collectCommand(ctx context.Context, env *providers.Env, b *bundle, c Collector) error {
	cmd := c.Command
	if cmd.Name != "" {
		return collectNamed(ctx, env, b, c)
	}
	out, err := runBounded(ctx, cmd.Argv, cmd.Timeout, cmd.MaxOutput)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	e := Entry{Collector: c.Name, Source: strings.Join(cmd.Argv, " "), Path: "commands/" + c.Name + ".out"}
	if err != nil {
		e.Error = err.Error()
	}
	return b.add(e, out.buf.Bytes(), out.total)
}

// collectNamed runs a command of the commands section as that section
// defines it (commands.Run: its user, working directory, clean
// environment whose values are redacted from the output, process group
// killed at its timeout, bounded tails) and stores its standard output as
// commands/<collector>.out and its standard error, when there is any, as
// commands/<collector>.err. A run that did not succeed is an error of the
// entry, not of the bundle.
func collectNamed(ctx context.Context, env *providers.Env, b *bundle, c Collector) error {
	e := Entry{Collector: c.Name, Source: "commands." + c.Command.Name}
	var section json.RawMessage
	ok := false
	if env.SectionDesired != nil {
		section, ok = env.SectionDesired(commands.ID)
	}
	if !ok {
		e.Error = fmt.Sprintf("command %q: no commands section is desired (define it in local policy)", c.Command.Name)
		return b.add(e, nil, 0)
	}
	def, err := commands.Definition(section, c.Command.Name)
	if err != nil {
		e.Error = err.Error()
		return b.add(e, nil, 0)
	}
	e.Source += ": " + strings.Join(def.Argv, " ")
	res := commands.Run(ctx, env, def, nil)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if res.State != commands.Succeeded {
		switch {
		case res.Error != "":
			e.Error = res.State + ": " + res.Error
		case res.ExitCode != nil:
			e.Error = fmt.Sprintf("%s: exit status %d", res.State, *res.ExitCode)
		case res.Signal != "":
			e.Error = res.State + ": " + res.Signal
		default:
			e.Error = res.State
		}
	}
	out := e
	out.Path = "commands/" + c.Name + ".out"
	if err := b.add(out, []byte(res.Stdout), res.StdoutBytes); err != nil {
		return err
	}
	if res.StderrBytes == 0 {
		return nil
	}
	errEntry := e
	errEntry.Path, errEntry.Error = "commands/"+c.Name+".err", ""
	return b.add(errEntry, []byte(res.Stderr), res.StderrBytes)
}

// journalArgs is the journalctl command line of a collector: the root's
// journal directory unless the root is the running system.
func journalArgs(env *providers.Env, j *Journal) ([]string, error) {
	args := []string{"journalctl", "--no-pager", "-q", "-o", "short-iso", "-n", fmt.Sprint(j.Lines)}
	if !env.IsHostRoot() {
		root, err := env.OpenRoot()
		if err != nil {
			return nil, err
		}
		defer root.Close()
		// No link on the way: journalctl gets a path, not a handle.
		d, err := root.Walk("var/log/journal", false, 0)
		if err != nil {
			return nil, fmt.Errorf("the root's journal: %w", err)
		}
		d.Close()
		args = append(args, "--directory="+env.HostPath("/var/log/journal"))
	}
	if j.Since != "" {
		args = append(args, "--since="+j.Since)
	}
	for _, u := range j.Units {
		args = append(args, "--unit="+u)
	}
	return args, nil
}

func collectJournal(ctx context.Context, env *providers.Env, b *bundle, c Collector) error {
	e := Entry{Collector: c.Name, Path: "journal/" + c.Name + ".log"}
	args, err := journalArgs(env, c.Journal)
	if err != nil {
		e.Path, e.Source, e.Error = "", "journalctl", err.Error()
		return b.add(e, nil, 0)
	}
	bin, err := exec.LookPath("journalctl")
	if err != nil {
		e.Path, e.Source, e.Error = "", "journalctl", "journalctl is not installed"
		return b.add(e, nil, 0)
	}
	e.Source = strings.Join(args, " ")
	out, err := runBounded(ctx, append([]string{bin}, args[1:]...), 2*time.Minute, int(min(b.left, 64<<20)))
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err != nil {
		e.Error = err.Error()
	}
	return b.add(e, out.buf.Bytes(), out.total)
}
