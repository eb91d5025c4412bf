package packages

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/twinlet/twinlet/internal/atomicfile"
	"github.com/twinlet/twinlet/providers"
)

var errNotExist = fs.ErrNotExist

// LockRetryAfter is how long a section whose dpkg lock someone else holds
// waits at least before it tries again.
const LockRetryAfter = 10 * time.Second

// tools runs dpkg, dpkg-query, apt-get and apt-cache on one root.
type tools struct {
	root     string // host path of the root
	host     bool   // the root is the running system
	stateDir string
}

func newTools(env *providers.Env) tools {
	root, _ := filepath.Abs(env.Root)
	return tools{root: root, host: env.IsHostRoot(), stateDir: env.StateDir}
}

func (t tools) hostPath(p string) string { return filepath.Join(t.root, filepath.FromSlash(p)) }

// chrootless reports whether maintainer scripts run outside a chroot: a
// root without a shell cannot run them inside.
func (t tools) chrootless() bool {
	for _, sh := range []string{"bin/sh", "usr/bin/sh"} {
		if _, err := os.Stat(t.hostPath(sh)); err == nil {
			return false
		}
	}
	return true
}

// dpkgArgs are the options that point dpkg at the root.
func (t tools) dpkgArgs() []string {
	if t.host {
		return nil
	}
	args := []string{"--root=" + t.root, "--log=" + t.hostPath("var/log/dpkg.log")}
	if os.Geteuid() != 0 {
		args = append(args, "--force-not-root")
	}
	if t.chrootless() {
		args = append(args, "--force-script-chrootless")
	}
	return args
}

// env is the environment of every tool: untranslated messages (they are
// parsed), no questions.
func (t tools) env(extra ...string) []string {
	env := []string{}
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "LANG", "LANGUAGE", "LC_ALL", "LC_MESSAGES", "APT_CONFIG", "DEBIAN_FRONTEND", "DPKG_ROOT", "DPKG_ADMINDIR":
			continue
		}
		env = append(env, kv)
	}
	env = append(env, "LC_ALL=C", "DEBIAN_FRONTEND=noninteractive", "APT_LISTCHANGES_FRONTEND=none")
	return append(env, extra...)
}

// aptConfig writes, for a root that is not the running system, an
// APT_CONFIG file that points every directory of apt at the root. It is
// read before anything else, so that not even the machine's apt.conf.d is
// consulted. The caller removes the file.
func (t tools) aptConfig() (string, error) {
	if t.host {
		return "", nil
	}
	if strings.ContainsAny(t.root, "\"\n\\;{}") {
		return "", fmt.Errorf("the root %q cannot be written into an apt configuration", t.root)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "Dir \"%s/\";\n", t.root)
	fmt.Fprintf(&b, "Dir::State::status \"%s\";\n", t.hostPath("var/lib/dpkg/status"))
	b.WriteString("Dir::Bin::dpkg \"/usr/bin/dpkg\";\n")
	b.WriteString("DPkg::Options {")
	for _, a := range t.dpkgArgs() {
		fmt.Fprintf(&b, " \"%s\";", a)
	}
	b.WriteString(" };\n")
	f, err := os.CreateTemp("", "twinlet-apt-*.conf")
	if err != nil {
		return "", err
	}
	if _, err := f.WriteString(b.String()); err != nil {
		f.Close()
		os.Remove(f.Name())
		return "", err
	}
	return f.Name(), f.Close()
}

// commonAptArgs are the options of every apt-get run by twinlet. Without
// a pty, dpkg stays in apt-get's process group, which a timeout stops.
var commonAptArgs = []string{"-q", "-y",
	"-o", "DPkg::Lock::Timeout=0", "-o", "Dpkg::Use-Pty=0",
	"-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold"}

// result of one run.
type result struct {
	stdout, stderr string
	status         []string // APT::Status-Fd lines
	err            error
}

// run runs a tool without a shell. stdin may be nil. When progress is set,
// apt's status lines (APT::Status-Fd=3) are passed to it as they come.
func (t tools) run(ctx context.Context, name string, args []string, stdin []byte, progress func(line string)) result {
	cmd := exec.CommandContext(ctx, name, args...)
	var extra []string
	if strings.HasPrefix(name, "apt") {
		conf, err := t.aptConfig()
		if err != nil {
			return result{err: err}
		}
		if conf != "" {
			defer os.Remove(conf)
			extra = append(extra, "APT_CONFIG="+conf)
		}
	}
	cmd.Env = t.env(extra...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	// The tool runs in a process group of its own, so that a timeout or a
	// shutdown stops dpkg and the maintainer scripts too, not just apt-get
	// (which would leave them holding the lock).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) }
	cmd.WaitDelay = 5 * time.Second
	var res result
	var r *os.File
	var done chan struct{}
	if progress != nil {
		var w *os.File
		var err error
		if r, w, err = os.Pipe(); err != nil {
			return result{err: err}
		}
		cmd.ExtraFiles = []*os.File{w}
		if err := cmd.Start(); err != nil {
			r.Close()
			w.Close()
			return result{err: fmt.Errorf("run %s: %w", name, err)}
		}
		w.Close()
		done = make(chan struct{})
		go func() {
			defer close(done)
			sc := bufio.NewScanner(r)
			for sc.Scan() {
				line := sc.Text()
				res.status = append(res.status, line)
				progress(line)
			}
		}()
		res.err = cmd.Wait()
		// A maintainer script's daemon may keep the pipe open: give the
		// reader a moment to drain it, then stop it.
		select {
		case <-done:
		case <-time.After(2 * time.Second):
		}
		r.Close()
		<-done
	} else {
		res.err = cmd.Run()
	}
	if ctx.Err() != nil && cmd.Process != nil {
		stopGroup(cmd.Process.Pid)
	}
	res.stdout, res.stderr = stdout.String(), stderr.String()
	if res.err != nil {
		if ctx.Err() != nil {
			res.err = fmt.Errorf("%s: %w", name, ctx.Err())
		} else {
			res.err = fmt.Errorf("%s: %w", name, res.err)
		}
	}
	return res
}

// stopGroup makes sure that a cancelled tool's process group (dpkg, a
// maintainer script) is gone before the call returns, so that the next
// call does not find dpkg's lock held by the remains of this one: it has
// had SIGTERM (cmd.Cancel); after a grace period it gets SIGKILL.
func stopGroup(pgid int) {
	gone := func(d time.Duration) bool {
		for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
			if err := syscall.Kill(-pgid, 0); errors.Is(err, syscall.ESRCH) {
				return true
			}
		}
		return false
	}
	if !gone(5 * time.Second) {
		syscall.Kill(-pgid, syscall.SIGKILL)
		gone(2 * time.Second)
	}
}

// lockHeld recognises apt's and dpkg's "someone else holds the lock".
func lockHeld(out string) (string, bool) {
	for _, line := range strings.Split(out, "\n") {
		l := strings.TrimSpace(line)
		if strings.Contains(l, "Could not get lock") || strings.Contains(l, "lock was locked by another process") ||
			strings.Contains(l, "database is locked by another process") || strings.Contains(l, "Unable to acquire the dpkg frontend lock") {
			return strings.TrimPrefix(strings.TrimPrefix(l, "E: "), "dpkg: error: "), true
		}
	}
	return "", false
}

// failure turns a failed run into the error the reconciler reports: a
// BusyError for a lock held by someone else, otherwise the tool's own
// messages (dpkg's per-package errors first).
func failure(what string, res result) error {
	if msg, ok := lockHeld(res.stderr + "\n" + res.stdout); ok {
		return &providers.BusyError{Reason: "LockHeld", RetryAfter: LockRetryAfter, Err: fmt.Errorf("%s: %s", what, msg)}
	}
	var msgs []string
	for _, l := range res.status {
		// pmerror:<package>:<percent>:<message>
		if rest, ok := strings.CutPrefix(l, "pmerror:"); ok {
			parts := strings.SplitN(rest, ":", 3)
			if len(parts) == 3 {
				msgs = append(msgs, parts[0]+": "+strings.TrimSpace(parts[2]))
			}
		}
	}
	// With dpkg's own per-package errors, apt's E: lines; without, every
	// line of the tool's standard error but warnings (dpkg says what is
	// wrong over several lines: "dependency problems prevent removal of
	// libgreet:", " hello depends on libgreet (>= 1.0).").
	// apt's "GPG error" warning is the reason of the error that follows
	// it ("… is not signed": signed, but not by the source's key).
	perPackage := len(msgs) > 0
	for _, l := range strings.Split(res.stderr, "\n") {
		l = strings.TrimSpace(l)
		switch {
		case strings.HasPrefix(l, "W: GPG error: "):
			msgs = append(msgs, strings.TrimPrefix(l, "W: "))
		case l == "" || strings.HasPrefix(l, "W: ") || strings.HasPrefix(l, "dpkg: warning: "):
		case perPackage && !strings.HasPrefix(l, "E: "):
		default:
			msgs = append(msgs, strings.TrimPrefix(l, "E: "))
		}
	}
	if len(msgs) == 0 {
		msgs = append(msgs, lastLines(res.stdout, 3)...)
	}
	msg := strings.Join(msgs, "; ")
	if len(msg) > 1024 {
		msg = msg[:1024] + "…"
	}
	return fmt.Errorf("%s: %w: %s", what, res.err, msg)
}

func lastLines(s string, n int) []string {
	var out []string
	for _, l := range strings.Split(strings.TrimSpace(s), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	if len(out) > n {
		out = out[len(out)-n:]
	}
	return out
}

// entry is one package of dpkg's database.
type entry struct {
	name, arch, version string
	want, status        string // selection (install, hold, deinstall, purge) and state
	essential           bool
}

// present reports whether any of the package is on the system (it needs
// removing, or configuring, or is installed).
func (e *entry) present() bool { return e.status != "not-installed" && e.status != "config-files" }

type database struct {
	byName map[string]*entry // "name" and "name:arch"
	all    []*entry
}

func (db *database) find(name string) *entry { return db.byName[name] }

func (db *database) summary() Installed {
	var lines []string
	for _, e := range db.all {
		if e.present() {
			lines = append(lines, e.name+":"+e.arch+" "+e.version+" "+e.status)
		}
	}
	sort.Strings(lines)
	h := sha256.New()
	for _, l := range lines {
		io.WriteString(h, l+"\n")
	}
	return Installed{Packages: len(lines), Fingerprint: "sha256:" + hex.EncodeToString(h.Sum(nil))}
}

const queryFormat = "${Package}\t${Architecture}\t${Version}\t${Status}\t${Essential}\t${Priority}\n"

func (t tools) queryArgs() []string {
	if t.host {
		return nil
	}
	return []string{"--admindir=" + t.hostPath("var/lib/dpkg")}
}

// query reads the whole dpkg database with one dpkg-query.
func (t tools) query(ctx context.Context) (*database, error) {
	if !t.host {
		if _, err := os.Stat(t.hostPath("var/lib/dpkg/status")); err != nil {
			return nil, fmt.Errorf("the root %s has no dpkg database (var/lib/dpkg/status): not a Debian system: %w", t.root, err)
		}
	}
	args := append(t.queryArgs(), "-W", "-f", queryFormat)
	res := t.run(ctx, "dpkg-query", args, nil, nil)
	if res.err != nil {
		return nil, failure("dpkg-query", res)
	}
	return parseQuery(res.stdout), nil
}

func parseQuery(out string) *database {
	db := &database{byName: map[string]*entry{}}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Split(line, "\t")
		if len(f) != 6 {
			continue
		}
		st := strings.Fields(f[3]) // want flag status
		if len(st) != 3 {
			continue
		}
		e := &entry{name: f[0], arch: f[1], version: f[2], want: st[0], status: st[2],
			essential: f[4] == "yes" || f[5] == "required"}
		db.all = append(db.all, e)
		// A bare name finds the present one of several architectures.
		if old := db.byName[e.name]; old == nil || !old.present() && e.present() {
			db.byName[e.name] = e
		}
		db.byName[e.name+":"+e.arch] = e
	}
	return db
}

// candidate is what apt-cache policy says of one package.
type candidate struct {
	candidate string
	versions  []string
}

// policy asks apt which versions of the named packages it can install.
// Packages apt does not know are missing from the result.
func (t tools) policy(ctx context.Context, names []string) (map[string]candidate, error) {
	res := t.run(ctx, "apt-cache", append([]string{"policy", "--"}, names...), nil, nil)
	if res.err != nil {
		return nil, failure("apt-cache policy", res)
	}
	return parsePolicy(res.stdout), nil
}

func parsePolicy(out string) map[string]candidate {
	m := map[string]candidate{}
	var cur string
	var c candidate
	inTable := false
	flush := func() {
		if cur != "" {
			m[cur] = c
			if i := strings.IndexByte(cur, ':'); i > 0 {
				if _, ok := m[cur[:i]]; !ok {
					m[cur[:i]] = c
				}
			}
		}
	}
	for _, line := range strings.Split(out, "\n") {
		if line == "" {
			continue
		}
		indent := len(line) - len(strings.TrimLeft(line, " "))
		l := strings.TrimSpace(line)
		switch {
		case indent == 0 && strings.HasSuffix(l, ":"):
			flush()
			cur, c, inTable = strings.TrimSuffix(l, ":"), candidate{}, false
		case indent == 2 && strings.HasPrefix(l, "Candidate:"):
			c.candidate = strings.TrimSpace(strings.TrimPrefix(l, "Candidate:"))
			if c.candidate == "(none)" {
				c.candidate = ""
			}
		case indent == 2 && strings.HasPrefix(l, "Version table:"):
			inTable = true
		case inTable && indent < 8:
			f := strings.Fields(strings.TrimPrefix(l, "*** "))
			if len(f) == 2 {
				c.versions = append(c.versions, f[0])
			}
		}
	}
	flush()
	return m
}

// stampPath is where twinlet records, after an apt-get update, the hash
// of the apt sources it updated from.
func (t tools) stampPath() string {
	if t.stateDir == "" {
		return ""
	}
	return filepath.Join(t.stateDir, "packages-lists.sha256")
}

func (t tools) listsStamp() string {
	p := t.stampPath()
	if p == "" {
		return ""
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// sourcesHash hashes what apt reads its sources from: sources.list,
// sources.list.d and the keyrings twinlet writes.
func sourcesHash(root *providers.Dir) (string, error) {
	h := sha256.New()
	add := func(name string) error {
		b, err := root.ReadFileIfExists(name)
		if err != nil {
			return err
		}
		fmt.Fprintf(h, "%s %d\n", name, len(b))
		h.Write(b)
		return nil
	}
	if err := add("etc/apt/sources.list"); err != nil {
		return "", err
	}
	for _, dir := range []string{"etc/apt/sources.list.d", "etc/apt/keyrings"} {
		f, err := root.Root.Open(dir)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return "", err
		}
		names, err := f.Readdirnames(-1)
		f.Close()
		if err != nil {
			return "", err
		}
		sort.Strings(names)
		for _, n := range names {
			if dir == "etc/apt/keyrings" && !strings.HasPrefix(n, "twinlet-") {
				continue
			}
			if err := add(dir + "/" + n); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return "", err
			}
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// update runs apt-get update and records the sources it updated from.
func (t tools) update(ctx context.Context, env *providers.Env) error {
	root, err := env.OpenRoot()
	if err != nil {
		return err
	}
	defer root.Close()
	hash, err := sourcesHash(root)
	if err != nil {
		return err
	}
	args := append(append([]string{}, commonAptArgs...), "update", "--error-on=any")
	if res := t.run(ctx, "apt-get", args, nil, nil); res.err != nil {
		return failure("apt-get update", res)
	}
	if p := t.stampPath(); p != "" {
		return atomicfile.Write(p, []byte(hash+"\n"), 0o644)
	}
	return nil
}

// progressFunc turns apt's status lines into env.Progress calls:
// "pmstatus:hello:44.4444:Installing hello (amd64)" is 44 of 100.
func progressFunc(env *providers.Env, item string) func(string) {
	return func(line string) {
		kind, rest, ok := strings.Cut(line, ":")
		if !ok || kind != "pmstatus" && kind != "dlstatus" {
			return
		}
		parts := strings.SplitN(rest, ":", 3)
		if len(parts) != 3 {
			return
		}
		pct, err := strconv.ParseFloat(parts[1], 64)
		if err != nil {
			return
		}
		step := item + ": " + strings.TrimSpace(parts[2])
		if kind == "dlstatus" {
			step = item + ": download: " + strings.TrimSpace(parts[2])
		}
		env.Progress(step, int(pct), 100)
	}
}

// install installs (or upgrades, downgrades, repairs) one package.
func (t tools) install(ctx context.Context, env *providers.Env, d pkgOp, held bool, state string) error {
	if d.broken && state != "half-installed" {
		// unpacked, half-configured, triggers-*: configure it again.
		args := append(t.dpkgArgs(), "--configure", d.name)
		if res := t.run(ctx, "dpkg", args, nil, nil); res.err != nil {
			return failure("configure "+d.name, res)
		}
		return nil
	}
	target := d.name
	if d.version != "" {
		target += "=" + d.version
	}
	args := append([]string{}, commonAptArgs...)
	args = append(args, "-o", "APT::Status-Fd=3", "--no-remove", "--allow-downgrades")
	if held {
		args = append(args, "--allow-change-held-packages")
	}
	if d.broken {
		args = append(args, "--reinstall")
	}
	args = append(args, "install", "--", target)
	env.Progress(d.item+": install "+target, 0, 100)
	res := t.run(ctx, "apt-get", args, nil, progressFunc(env, d.item))
	if res.err != nil && strings.Contains(res.stderr, "dpkg --configure -a") {
		// An earlier run (ours, killed, or someone's) was interrupted:
		// finish it as dpkg asks, then try again.
		if fix := t.run(ctx, "dpkg", append(t.dpkgArgs(), "--configure", "-a"), nil, nil); fix.err != nil {
			return failure("dpkg --configure -a (an earlier run was interrupted)", fix)
		}
		res = t.run(ctx, "apt-get", args, nil, progressFunc(env, d.item))
	}
	if res.err != nil {
		return failure("install "+target, res)
	}
	env.Progress(d.item+": installed "+target, 100, 100)
	return nil
}

// remove removes one package with dpkg, which refuses when other
// installed packages depend on it (apt would remove those too).
func (t tools) remove(ctx context.Context, env *providers.Env, d pkgOp) error {
	args := t.dpkgArgs()
	if d.force {
		args = append(args, "--force-remove-essential")
	}
	args = append(args, "--remove", "--", d.name)
	env.Progress(d.item+": remove "+d.name, 0, 1)
	if res := t.run(ctx, "dpkg", args, nil, nil); res.err != nil {
		return failure("remove "+d.name, res)
	}
	env.Progress(d.item+": removed "+d.name, 1, 1)
	return nil
}

// setHold sets dpkg's selection of a package to hold or install.
func (t tools) setHold(ctx context.Context, name string, hold bool) error {
	sel := "install"
	if hold {
		sel = "hold"
	}
	args := append(t.dpkgArgs(), "--set-selections")
	if res := t.run(ctx, "dpkg", args, []byte(name+" "+sel+"\n"), nil); res.err != nil {
		return failure("set "+name+" to "+sel, res)
	}
	return nil
}
