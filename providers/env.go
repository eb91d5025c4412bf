package providers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/twinlet/twinlet/internal/atomicfile"
)

// DefaultAllowedRoots are the device paths the files provider may manage
// when the agent config names none.
var DefaultAllowedRoots = []string{"/etc", "/opt", "/srv", "/usr/local", "/var/lib"}

// Env is everything outside the process that a provider may touch. The
// reconciler gives each call a copy whose Managed field belongs to the
// section being reconciled.
type Env struct {
	// Root is the directory the provider acts on: "/" on a device, a
	// temporary directory in tests and sandboxes. Every path a provider
	// touches is inside it; use Resolve to turn a device path into a host
	// path.
	Root string
	// StateDir is the agent's state directory.
	StateDir string
	// AllowedRoots are the device paths (not host paths) under which the
	// files provider may create, change or delete anything.
	AllowedRoots []string
	// Runner runs commands without a shell.
	Runner Runner
	// Now returns the current time.
	Now func() time.Time
	// Logger is tagged with the section and the reconcile id.
	Logger *slog.Logger
	// Managed holds the keys (Change.Key) that twinlet created for this
	// section and has not deleted since. Read-only for providers.
	Managed map[string]bool
	// Interrupted holds the keys of Once changes of this section that were
	// in flight when the agent stopped (a crash, a kill -9). Read-only.
	Interrupted map[string]bool
	// OnProgress receives progress of a long Apply; nil when nobody
	// listens. Providers call Progress, never this.
	OnProgress func(step string, done, total int)
}

// Progress reports how far a long Apply has come ("install hello", 3 of
// 7). The runtime reports it as state Reconciling, reason InProgress, rate
// limited. Safe to call on an Env without a listener.
func (e *Env) Progress(step string, done, total int) {
	if e != nil && e.OnProgress != nil {
		e.OnProgress(step, done, total)
	}
}

// IsHostRoot reports whether the provider acts on the running system, so
// that runtime changes (sethostname, /proc/sys) are allowed.
func (e *Env) IsHostRoot() bool {
	return filepath.Clean(e.Root) == "/"
}

// ErrOutsideRoot is wrapped by errors from Resolve for paths that are not
// absolute, contain "..", or leave the root through a symbolic link.
var ErrOutsideRoot = errors.New("path leaves the root")

// Resolve maps an absolute device path to the host path under Root,
// following symbolic links as if Root were "/" (an absolute link target is
// taken relative to Root). It refuses relative paths, ".." components and
// links whose resolution would leave Root. The final component need not
// exist; if it is a symbolic link it is not followed, so that callers can
// see and replace it (use ResolveFollow to follow it).
func (e *Env) Resolve(p string) (string, error) {
	return e.resolve(p, false)
}

// ResolveFollow is Resolve that also follows a final symbolic link.
func (e *Env) ResolveFollow(p string) (string, error) {
	return e.resolve(p, true)
}

func (e *Env) resolve(p string, followLast bool) (string, error) {
	if !path.IsAbs(p) {
		return "", fmt.Errorf("%q: not an absolute path: %w", p, ErrOutsideRoot)
	}
	for _, c := range strings.Split(p, "/") {
		if c == ".." {
			return "", fmt.Errorf("%q: contains \"..\": %w", p, ErrOutsideRoot)
		}
	}
	root := filepath.Clean(e.Root)
	pending := splitPath(p)
	var done []string // resolved device path components
	hops := 0
	for len(pending) > 0 {
		c := pending[0]
		pending = pending[1:]
		if c == "." || c == "" {
			continue
		}
		if c == ".." { // only from link targets
			if len(done) == 0 {
				return "", fmt.Errorf("%q: a link climbs above the root: %w", p, ErrOutsideRoot)
			}
			done = done[:len(done)-1]
			continue
		}
		cand := filepath.Join(root, filepath.Join(append(done, c)...))
		last := len(pending) == 0
		fi, err := os.Lstat(cand)
		if err != nil || fi.Mode()&os.ModeSymlink == 0 || (last && !followLast) {
			done = append(done, c)
			continue
		}
		hops++
		if hops > 40 {
			return "", fmt.Errorf("%q: too many levels of symbolic links", p)
		}
		target, err := os.Readlink(cand)
		if err != nil {
			return "", fmt.Errorf("resolve %q: %w", p, err)
		}
		if path.IsAbs(target) {
			done = nil
		}
		pending = append(splitPath(target), pending...)
	}
	return filepath.Join(root, filepath.Join(done...)), nil
}

func splitPath(p string) []string {
	var out []string
	for _, c := range strings.Split(p, "/") {
		if c != "" {
			out = append(out, c)
		}
	}
	return out
}

// Allowed reports whether the device path p lies under one of AllowedRoots
// (DefaultAllowedRoots when none are set).
func (e *Env) Allowed(p string) bool {
	roots := e.AllowedRoots
	if roots == nil {
		roots = DefaultAllowedRoots
	}
	p = path.Clean(p)
	for _, r := range roots {
		r = path.Clean(r)
		if r == "/" || p == r || strings.HasPrefix(p, r+"/") {
			return true
		}
	}
	return false
}

// WriteFileAtomic replaces the host path with data and mode: a crash
// leaves the old or the new content, never a mix.
func (e *Env) WriteFileAtomic(hostPath string, data []byte, mode os.FileMode) error {
	return atomicfile.Write(hostPath, data, mode)
}

// Runner runs a program with arguments, never through a shell.
type Runner interface {
	// Run runs name with args and returns its standard output. A non-zero
	// exit is an error that includes the standard error.
	Run(ctx context.Context, name string, args ...string) ([]byte, error)
}

// ExecRunner runs commands with os/exec.
type ExecRunner struct{}

// Run implements Runner.
func (ExecRunner) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if len(msg) > 512 {
			msg = msg[:512] + "…"
		}
		return out, fmt.Errorf("run %s: %w: %s", name, err, msg)
	}
	return out, nil
}
