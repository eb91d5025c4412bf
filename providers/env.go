package providers

import (
	"context"
	"encoding/json"
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
	// temporary directory in tests and sandboxes. Every file a provider
	// touches is inside it and is reached through OpenRoot, never through
	// a path string.
	Root string
	// RootFS, when set, is the open handle of Root that its owner (the
	// agent) holds for its lifetime and closes; OpenRoot then duplicates
	// it. When nil, OpenRoot opens Root.
	RootFS *os.Root
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
	// Desired is, for a direct method only, the section's last good
	// desired value (merged, schema-valid, without the reconciler's
	// reserved keys __meta and reportingMode), so that a method can act on
	// what policy defines (commands.run runs a command by its name); nil
	// when nothing desires the section. Reconciles leave it nil: they get
	// the decoded Spec.
	Desired []byte
	// DependencyObserved returns the last verified observation of another
	// section, whole (whatever its reporting mode) and as JSON, and
	// whether there is one. Only the sections of the provider's DependsOn
	// are visible; one that is not desired, not reconciled yet since the
	// agent started, or not Ready has none. Nil when the runtime offers
	// none (a test Env). services reads the files items it restarts on.
	DependencyObserved func(section string) (json.RawMessage, bool)
	// SectionDesired returns the last good desired value of another
	// section (merged, schema-valid, the cloud scope applied, without the
	// reserved keys __meta and reportingMode) and whether there is one.
	// Only the sections of the provider's Info.ReadsDesired are visible.
	// One that nothing desires, or that never passed validation, has
	// none; one whose latest input is invalid keeps its last good value.
	// Nil when the runtime offers none (a test Env).
	SectionDesired func(section string) (json.RawMessage, bool)
	// Uploader uploads files to the cloud's blob storage (IoT Hub file
	// upload); nil when the agent is not connected. See FileUploader.
	Uploader FileUploader
	// OnProgress receives progress of a long Apply; nil when nobody
	// listens. Providers call Progress, never this.
	OnProgress func(step string, done, total int)
	// RebootRequired returns, sorted, the sections whose applied changes
	// asked for a reboot that has not happened yet (the runtime's latch,
	// cleared first when the boot id changed since it was set); nil when
	// none is needed or no runtime is attached. Providers call
	// RebootRequiredBy, never this.
	RebootRequired func() []string
	// RequeueAfter asks the runtime to reconcile this section again after
	// d (a reboot window that opens later): a provider never sleeps. Nil
	// when no runtime is attached; providers call Requeue.
	RequeueAfter func(d time.Duration)
	// CloudAllowed reports whether the agent config lets the twin set this
	// section at all, and CloudRules are the section's cloud scope (the
	// config's, else Info.CloudDeny): a direct method, which comes from the
	// cloud, obeys the same scope as the twin.
	CloudAllowed bool
	CloudRules   ScopeRules
}

// RebootRequiredBy returns the sections that latched "reboot required";
// nil without a runtime.
func (e *Env) RebootRequiredBy() []string {
	if e == nil || e.RebootRequired == nil {
		return nil
	}
	return e.RebootRequired()
}

// Requeue asks for another reconcile of the section after d (at once for
// d <= 0); a no-op without a runtime.
func (e *Env) Requeue(d time.Duration) {
	if e != nil && e.RequeueAfter != nil {
		e.RequeueAfter(d)
	}
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

// HostPath maps a device path to the host path under Root lexically,
// without looking at the file system. It is for fsnotify watches and
// messages only: never open, create or change a file through it (use
// OpenRoot, whose Dir cannot be led outside the root).
func (e *Env) HostPath(p string) string {
	return filepath.Join(e.Root, filepath.FromSlash(path.Clean("/"+p)))
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
//
// Deprecated: a host path is resolved again by every system call, so a
// link swapped into it can lead outside the root. Providers use OpenRoot
// and Dir.WriteFileAtomic; this stays for test providers that write under
// a temporary root.
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
