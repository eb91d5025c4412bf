package commands

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/twinlet/twinlet/providers"
)

// The states of a run, as reported per commandId.
const (
	Pending     = "Pending"     // accepted by commands.run, not started yet
	Running     = "Running"     // started, not ended
	Succeeded   = "Succeeded"   // exited 0
	Failed      = "Failed"      // exited non-zero, killed by a signal, or could not start
	TimedOut    = "TimedOut"    // ran past its timeout; its process group was killed
	Canceled    = "Canceled"    // the agent stopped it (shutdown); its process group was killed
	Interrupted = "Interrupted" // the agent died while it ran; never run again
)

// Defaults and bounds of a definition.
const (
	DefaultTimeout   = 10 * time.Minute
	MaxTimeout       = 6 * time.Hour
	DefaultMaxOutput = 4096
	MaxMaxOutput     = 1 << 20
	// DefaultPath is the PATH a command gets, and searches a bare program
	// name in, when its definition sets none (Debian's root PATH).
	DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	// minSecret is the shortest environment value redacted from output:
	// shorter values ("1", "C") are not secrets and would blank the tails.
	minSecret = 4
	// Redacted replaces an environment value in the tails.
	Redacted = "[REDACTED]"
)

// Def is one named command as local policy defines it.
type Def struct {
	// Name is the command's name, by which the twin and commands.run ask
	// for it.
	Name string
	// Argv is the program and its arguments. The program is an absolute
	// path, or a bare name searched in the directories of PATH (the
	// definition's, else DefaultPath). Nothing goes through a shell.
	Argv []string
	// User runs the command (looked up in <root>/etc/passwd, with its
	// groups from <root>/etc/group); "" is the agent's own user (root on a
	// device), whose credentials are kept as they are.
	User string
	// WorkingDir is a device path inside the root; "" is the user's home
	// directory, or / when it has none.
	WorkingDir string
	// Timeout ends the run (its whole process group is killed) as
	// TimedOut; 0 is DefaultTimeout.
	Timeout time.Duration
	// Env is added to the command's environment. Its values (of at least
	// 4 bytes) are secrets: they are replaced by [REDACTED] in the tails.
	Env map[string]string
	// MaxOutput bounds the tail kept of stdout and of stderr, in bytes;
	// 0 is DefaultMaxOutput.
	MaxOutput int
	// Chroot runs the command chrooted into the root when the root is not
	// "/" (the root must hold the program and its libraries). Without it a
	// command of a sandbox root runs the host's program, in the working
	// directory inside the root, with TWINLET_ROOT set to the root.
	Chroot bool
}

// Result is the bounded outcome of a run.
type Result struct {
	// State is Succeeded, Failed, TimedOut or Canceled (Run never returns
	// the others).
	State string `json:"state"`
	// ExitCode is the exit status; nil when the process did not exit by
	// itself (a signal, a timeout) or never started.
	ExitCode *int `json:"exitCode,omitempty"`
	// Signal names the signal that ended the process, if one did.
	Signal string `json:"signal,omitempty"`
	// Stdout and Stderr are the last MaxOutput bytes of each stream, with
	// the environment's values redacted.
	Stdout string `json:"stdout"`
	Stderr string `json:"stderr"`
	// StdoutBytes and StderrBytes count everything the streams carried,
	// so that a reader sees how much the tails dropped.
	StdoutBytes int64 `json:"stdoutBytes"`
	StderrBytes int64 `json:"stderrBytes"`
	// StartTime is when the process started (or failed to).
	StartTime time.Time `json:"startTime"`
	// Duration is how long it ran.
	Duration time.Duration `json:"-"`
	// Error says why the run failed without an exit code (no such user,
	// no such program, a timeout), secret-free.
	Error string `json:"error,omitempty"`
	// PID is the process id (and process group id) of the run.
	PID int `json:"-"`
}

// Run runs def on env's root, without a shell, and returns its bounded
// result: the process runs in its own process group as def.User, in
// def.WorkingDir, with a clean environment (PATH, HOME, USER, LOGNAME,
// TWINLET_ROOT, then def.Env); stdin is /dev/null. A timeout or the end
// of ctx kills the whole process group (TimedOut, Canceled); so does the
// death of the agent (the process gets SIGKILL when its parent dies).
// started, when not nil, is called with the process id once the process
// runs (to record it) and must not block. Progress is reported through
// env.Progress every few seconds while the command runs.
//
// Run is for reuse by other providers (diagnostics collects the output of
// named commands): it keeps no record; the commands provider records each
// run in the state directory before it starts so that no run ever happens
// twice.
func Run(ctx context.Context, env *providers.Env, def Def, started func(pid int)) Result {
	now := time.Now
	if env.Now != nil {
		now = env.Now
	}
	res := Result{StartTime: now().UTC()}
	maxOut := def.MaxOutput
	if maxOut <= 0 {
		maxOut = DefaultMaxOutput
	}
	timeout := def.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	secrets := secretValues(def.Env)
	extra := 0
	for _, s := range secrets {
		extra = max(extra, len(s))
	}
	stdout, stderr := &tail{max: maxOut + extra}, &tail{max: maxOut + extra}
	fail := func(format string, args ...any) Result {
		res.State = Failed
		res.Error = redact(fmt.Sprintf(format, args...), secrets)
		return res
	}
	cmd, err := prepare(env, def)
	if err != nil {
		return fail("%v", err)
	}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.WaitDelay = 2 * time.Second
	t0 := time.Now()
	// Pdeathsig fires when the thread that forked the process exits: the
	// goroutine keeps that thread until the process ended, so that only
	// the agent's death sends it.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := cmd.Start(); err != nil {
		if u := errors.Unwrap(err); u != nil {
			err = u
		}
		return fail("start %s: %v", def.Argv[0], err)
	}
	res.PID = cmd.Process.Pid
	if started != nil {
		started(res.PID)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	runCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(progressEvery)
	defer tick.Stop()
	step := fmt.Sprintf("run %s (pid %d)", def.Name, res.PID)
	env.Progress(step, 0, int(timeout/time.Second))
	var waitErr error
	ended := ""
loop:
	for {
		select {
		case waitErr = <-done:
			break loop
		case <-tick.C:
			env.Progress(step, int(time.Since(t0)/time.Second), int(timeout/time.Second))
		case <-runCtx.Done():
			ended = Canceled
			if ctx.Err() == nil {
				ended = TimedOut
			}
			_ = syscall.Kill(-res.PID, syscall.SIGKILL)
			waitErr = <-done
			break loop
		}
	}
	// What the leader left behind in its group goes with it. The group id
	// cannot be reused while any member lives, so this kills nobody else.
	_ = syscall.Kill(-res.PID, syscall.SIGKILL)
	res.Duration = time.Since(t0)
	res.Stdout, res.StdoutBytes = stdout.result(maxOut, secrets)
	res.Stderr, res.StderrBytes = stderr.result(maxOut, secrets)
	ps := cmd.ProcessState
	if ps != nil {
		if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			res.Signal = signalName(ws.Signal())
		} else if ps.Exited() {
			code := ps.ExitCode()
			res.ExitCode = &code
		}
	}
	switch {
	case ended == TimedOut:
		res.State, res.Error = TimedOut, fmt.Sprintf("timed out after %v; process group killed", timeout)
	case ended == Canceled:
		res.State, res.Error = Canceled, "canceled (the agent is stopping); process group killed"
	case res.ExitCode != nil && *res.ExitCode == 0:
		res.State = Succeeded
	case res.ExitCode != nil:
		res.State = Failed
	case res.Signal != "":
		res.State, res.Error = Failed, "killed by "+res.Signal
	default:
		res.State, res.Error = Failed, redact(fmt.Sprint(waitErr), secrets)
	}
	return res
}

// progressEvery is how often a running command reports progress (the
// runtime rate-limits what it publishes).
var progressEvery = 5 * time.Second

func signalName(s syscall.Signal) string {
	names := map[syscall.Signal]string{syscall.SIGKILL: "SIGKILL", syscall.SIGTERM: "SIGTERM", syscall.SIGINT: "SIGINT",
		syscall.SIGSEGV: "SIGSEGV", syscall.SIGABRT: "SIGABRT", syscall.SIGHUP: "SIGHUP", syscall.SIGPIPE: "SIGPIPE"}
	if n, ok := names[s]; ok {
		return n
	}
	return "signal " + strconv.Itoa(int(s))
}

// account is a user of the root's /etc/passwd.
type account struct {
	name     string
	uid, gid uint32
	home     string
	groups   []uint32
	self     bool // the agent's own user: no change of credentials
}

// lookupUser reads name from <root>/etc/passwd and its supplementary
// groups from <root>/etc/group, confined to the root. The name "" is the
// agent's own user (its uid, looked up for HOME).
func lookupUser(d *providers.Dir, name string) (*account, error) {
	passwd, err := d.ReadFileIfExists("etc/passwd")
	if err != nil {
		return nil, fmt.Errorf("read /etc/passwd: %w", err)
	}
	self := strconv.Itoa(os.Geteuid())
	var a *account
	for _, line := range strings.Split(string(passwd), "\n") {
		f := strings.Split(line, ":")
		if len(f) < 7 || name != "" && f[0] != name || name == "" && f[2] != self {
			continue
		}
		uid, err1 := strconv.ParseUint(f[2], 10, 32)
		gid, err2 := strconv.ParseUint(f[3], 10, 32)
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("/etc/passwd: user %s has a bad uid or gid", f[0])
		}
		a = &account{name: f[0], uid: uint32(uid), gid: uint32(gid), home: f[5]}
		break
	}
	switch {
	case a == nil && name == "":
		return &account{name: self, uid: uint32(os.Geteuid()), gid: uint32(os.Getegid()), home: "/", self: true}, nil
	case a == nil:
		return nil, fmt.Errorf("no user %q in the root's /etc/passwd", name)
	case name == "":
		a.self = true
		return a, nil
	}
	group, err := d.ReadFileIfExists("etc/group")
	if err != nil {
		return nil, fmt.Errorf("read /etc/group: %w", err)
	}
	seen := map[uint32]bool{a.gid: true}
	a.groups = []uint32{a.gid}
	for _, line := range strings.Split(string(group), "\n") {
		f := strings.Split(line, ":")
		if len(f) < 4 {
			continue
		}
		gid, err := strconv.ParseUint(f[2], 10, 32)
		if err != nil || seen[uint32(gid)] {
			continue
		}
		for _, m := range strings.Split(f[3], ",") {
			if m == name {
				seen[uint32(gid)] = true
				a.groups = append(a.groups, uint32(gid))
			}
		}
	}
	sort.Slice(a.groups, func(i, j int) bool { return a.groups[i] < a.groups[j] })
	return a, nil
}

// prepare builds the exec.Cmd of def on env's root.
func prepare(env *providers.Env, def Def) (*exec.Cmd, error) {
	if len(def.Argv) == 0 || def.Argv[0] == "" {
		return nil, errors.New("empty argv")
	}
	d, err := env.OpenRoot()
	if err != nil {
		return nil, err
	}
	defer d.Close()
	acct, err := lookupUser(d, def.User)
	if err != nil {
		return nil, err
	}
	chroot := def.Chroot && !env.IsHostRoot()
	inRoot := env.IsHostRoot() || chroot // programs and directories are the root's

	pathVar := DefaultPath
	if v, ok := def.Env["PATH"]; ok {
		pathVar = v
	}
	prog, err := resolve(d, def.Argv[0], pathVar, inRoot)
	if err != nil {
		return nil, err
	}
	wd := def.WorkingDir
	if wd == "" {
		wd = acct.home
		if wd == "" || !isDir(d, wd) {
			wd = "/"
		}
	}
	if !isDir(d, wd) {
		return nil, fmt.Errorf("working directory %s is not a directory inside the root (links are not followed)", wd)
	}
	cmd := &exec.Cmd{Path: prog, Args: append([]string(nil), def.Argv...)}
	if inRoot {
		cmd.Dir = wd
	} else {
		cmd.Dir = env.HostPath(wd)
	}
	if cmd.Path != def.Argv[0] && !strings.Contains(def.Argv[0], "/") {
		cmd.Args[0] = def.Argv[0]
	}
	base := map[string]string{"PATH": pathVar, "HOME": acct.home, "USER": acct.name, "LOGNAME": acct.name, "TWINLET_ROOT": env.Root}
	if chroot {
		base["TWINLET_ROOT"] = "/"
	}
	for k, v := range def.Env {
		base[k] = v
	}
	keys := make([]string, 0, len(base))
	for k := range base {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		cmd.Env = append(cmd.Env, k+"="+base[k])
	}
	attr := &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if chroot {
		attr.Chroot = env.Root
	}
	euid, egid := uint32(os.Geteuid()), uint32(os.Getegid())
	if !acct.self && (acct.uid != euid || acct.gid != egid || euid == 0) {
		if euid != 0 {
			return nil, fmt.Errorf("cannot run as %s (uid %d): the agent runs as uid %d without CAP_SETUID/CAP_SETGID", acct.name, acct.uid, euid)
		}
		attr.Credential = &syscall.Credential{Uid: acct.uid, Gid: acct.gid, Groups: acct.groups}
	}
	cmd.SysProcAttr = attr
	return cmd, nil
}

// resolve finds the program: an absolute path, or a bare name searched in
// pathVar's directories. inRoot says whether to look in the root (the
// device's "/", or a chroot) or on the host (a sandbox root).
func resolve(d *providers.Dir, name, pathVar string, inRoot bool) (string, error) {
	if strings.Contains(name, "/") && !path.IsAbs(name) {
		return "", fmt.Errorf("program %q: give an absolute path or a bare name", name)
	}
	candidates := []string{name}
	if !path.IsAbs(name) {
		candidates = nil
		for _, dir := range filepath.SplitList(pathVar) {
			if path.IsAbs(dir) {
				candidates = append(candidates, path.Join(dir, name))
			}
		}
	}
	for _, c := range candidates {
		var fi fs.FileInfo
		var err error
		if inRoot {
			fi, err = d.Stat(strings.TrimPrefix(path.Clean(c), "/"))
		} else {
			fi, err = os.Stat(c)
		}
		if err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return c, nil
		}
	}
	where := "the root"
	if !inRoot {
		where = "the host (a sandbox root without chroot)"
	}
	if path.IsAbs(name) {
		return "", fmt.Errorf("program %s: no executable file there in %s", name, where)
	}
	return "", fmt.Errorf("program %s: not found in PATH %s in %s", name, pathVar, where)
}

// isDir reports whether the device path p is a directory inside the root,
// reached without following links.
func isDir(d *providers.Dir, p string) bool {
	sub, err := d.Walk(strings.TrimPrefix(path.Clean("/"+p), "/"), false, 0)
	if err != nil {
		return false
	}
	sub.Close()
	return true
}

// secretValues are the environment values redacted from output, longest
// first so that a secret containing another is replaced whole.
func secretValues(env map[string]string) []string {
	var out []string
	for _, v := range env {
		if len(v) >= minSecret {
			out = append(out, v)
		}
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) || len(out[i]) == len(out[j]) && out[i] < out[j] })
	return out
}

func redact(s string, secrets []string) string {
	for _, v := range secrets {
		s = strings.ReplaceAll(s, v, Redacted)
	}
	return s
}

// tail keeps the last max bytes written to it and counts them all.
type tail struct {
	buf   []byte
	max   int
	total int64
}

func (t *tail) Write(p []byte) (int, error) {
	t.total += int64(len(p))
	if len(p) >= t.max {
		t.buf = append(t.buf[:0], p[len(p)-t.max:]...)
		return len(p), nil
	}
	if over := len(t.buf) + len(p) - t.max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	t.buf = append(t.buf, p...)
	return len(p), nil
}

// result redacts the kept bytes and returns the last n bytes of that as
// valid UTF-8. The tail keeps n plus the longest secret's length, so that
// when its start was dropped, the bytes that may be the end of a cut
// secret (up to the longest secret's length less one) are dropped here
// instead of shown in part.
func (t *tail) result(n int, secrets []string) (string, int64) {
	b := t.buf
	skip := 0
	if t.total > int64(len(b)) {
		for _, v := range secrets {
			skip = max(skip, len(v)-1)
		}
	}
	out := make([]byte, 0, len(b))
	for i := 0; i < len(b); {
		m := ""
		for _, v := range secrets {
			if bytes.HasPrefix(b[i:], []byte(v)) {
				m = v
				break
			}
		}
		if m != "" {
			out = append(out, Redacted...)
			i += len(m)
			continue
		}
		if i >= skip {
			out = append(out, b[i])
		}
		i++
	}
	if len(out) > n {
		out = out[len(out)-n:]
	}
	for len(out) > 0 && !utf8.RuneStart(out[0]) {
		out = out[1:]
	}
	return string(bytes.ToValidUTF8(out, []byte("\uFFFD"))), t.total
}
