// Package providers defines the contract between the reconciler and the
// providers that observe and change one part of a device, and the registry
// that built-in and third-party providers join from their init functions.
//
// A provider owns exactly one section of the desired state (for example
// "files"), one JSON Schema (schemas/<id>.json) and nothing else. It is driven
// by the reconciler, which owns ordering, retries, backoff, timeouts and panic
// recovery: a provider never sleeps, loops, retries or starts goroutines that
// outlive a call.
package providers

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"
)

// Kind says how layers of desired state merge for a section.
type Kind int

const (
	// Object sections (hostname, timezone) merge field by field: a higher
	// layer's field replaces the same field of a lower layer.
	Object Kind = iota
	// Collection sections (files, sysctl) are maps of named items next to a
	// few reserved settings (see ReservedKeys). Layers merge item by item;
	// an item is replaced whole. Reserved settings merge field by field.
	Collection
)

// ReservedKeys are the keys of a Collection section that are settings of
// the section, not items. No item may use these names.
var ReservedKeys = map[string]bool{"__meta": true, "prune": true, "reportingMode": true}

// Info describes a provider to the registry and the reconciler.
type Info struct {
	// ID is the section id: a top-level key of the desired document.
	ID string
	// Kind says how layers of this section merge.
	Kind Kind
	// DependsOn lists section ids that must be Ready before this section
	// is reconciled (users before files, for example). A dependency
	// that nothing desires, or that no provider of the reconciler owns,
	// holds nobody back.
	DependsOn []string
	// ReadsDesired lists sections whose last good desired value this
	// provider reads through Env.SectionDesired (diagnostics runs the
	// commands section's named commands). Unlike DependsOn it orders
	// nothing and waits for nothing.
	ReadsDesired []string
	// ReadOnly providers only observe and report (deviceInfo); they have
	// no desired state, their Plan always returns no change, and they are
	// reconciled on every pass whether or not anything desires them,
	// after the sections that change the system in a one-time pass, and
	// again whenever another section has changed something.
	ReadOnly bool
	// Timeout bounds each call of this provider (Observe, Apply of one
	// change, a method); 0 means DefaultTimeout. A package install needs
	// more than a hostname.
	Timeout time.Duration
	// Methods are the provider's direct methods, invoked on the device as
	// "<ID>.<name>" (certificates.get, commands.run). Each declares the
	// JSON Schema of its payload; the runtime validates the payload before
	// Call and answers 400 with the JSON pointer when it does not match.
	Methods map[string]Method
	// CloudDeny are the default denials of the cloud scope for this
	// section (globs such as "/etc/ssh/**" for files, "kernel.modprobe"
	// for sysctl), used when the agent config names none for it. Only a
	// provider that implements CloudScoper uses them.
	CloudDeny []string
	// Schema is the JSON Schema (draft 2020-12) of the section when it is
	// not embedded as schemas/<ID>.json (a third-party or a test
	// provider). Every section has one of the two: the reconciler refuses
	// to start with a provider that has neither, so that no section goes
	// unvalidated.
	Schema json.RawMessage
	// RebootPolicy marks the provider that carries out reboots: its
	// section is reconciled even when nothing desires it (as an empty
	// section, so that a reboot.now and the latch are carried out and the
	// boot is reported), and again whenever another section latches
	// "reboot required" (Change.RebootRequired).
	RebootPolicy bool
	// New returns a provider. It must not have side effects.
	New func() Provider
}

// Check reports what is wrong with a registration that the registry can
// see by itself: an empty id, no New, a negative timeout, a method without
// a name, a Call or a Schema. (Whether the section has a schema at all is
// checked by the reconciler, which knows the embedded ones.)
func (info Info) Check() error {
	if info.ID == "" {
		return fmt.Errorf("providers: a provider with an empty id")
	}
	if info.New == nil {
		return fmt.Errorf("providers: provider %s has no New", info.ID)
	}
	if info.Timeout < 0 {
		return fmt.Errorf("providers: provider %s: negative timeout %v", info.ID, info.Timeout)
	}
	names := make([]string, 0, len(info.Methods))
	for name := range info.Methods {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		m := info.Methods[name]
		switch {
		case name == "" || strings.ContainsAny(name, "./ "):
			return fmt.Errorf("providers: provider %s: method name %q must be a plain word", info.ID, name)
		case m.Call == nil:
			return fmt.Errorf("providers: method %s.%s has no Call", info.ID, name)
		case len(strings.TrimSpace(string(m.Schema))) == 0:
			return fmt.Errorf("providers: method %s.%s has no payload Schema", info.ID, name)
		}
	}
	return nil
}

// DefaultTimeout bounds a provider call when Info.Timeout is 0.
const DefaultTimeout = 2 * time.Minute

// Method is one direct method of a provider.
type Method struct {
	// Description is one line for `twinlet providers list` and the console.
	Description string
	// Schema is the JSON Schema (draft 2020-12) of the payload. Required.
	Schema json.RawMessage
	// Call runs the method with a payload that passed Schema. It returns
	// the response body (marshalled to JSON). An *InvalidError answers
	// 400 with its pointers; a *MethodError answers its status; any other
	// error answers 500. Call may change the system (reboot.now,
	// commands.run): it runs under the provider's timeout and is
	// cancelled on shutdown.
	Call func(ctx context.Context, env *Env, payload json.RawMessage) (any, error)
}

// MethodError is a direct-method failure with an HTTP-like status (404 for
// an unknown thumbprint, 409 for a commandId already run).
type MethodError struct {
	Status  int
	Message string
}

func (e *MethodError) Error() string { return fmt.Sprintf("%d: %s", e.Status, e.Message) }

// ScopeRules is the agent config's cloud scope for one section: what the
// twin may set there. Local policy is never limited by it.
type ScopeRules struct {
	// Deny lists globs of what the twin may not touch (paths, keys, names,
	// units). When the config says nothing, Info.CloudDeny.
	Deny []string
	// Allow, when not empty, lists globs of the only things the twin may
	// touch.
	Allow []string
	// Privileged allows what the provider otherwise refuses from the twin
	// because it hands out root (uid 0 users, the sudo group, removing an
	// essential package).
	Privileged bool
}

// CloudScoper is an optional capability: a provider that can tell which
// parts of the twin's contribution to its section the cloud scope forbids.
// twin is the twin layer's section alone (schema-valid as part of the
// merged section; for a Collection, whole items). CloudScope is pure and
// returns the forbidden parts as located problems (pointers relative to
// the section, "/motd/path"); the reconciler fails the section with reason
// Forbidden and reports them in __errors.
type CloudScoper interface {
	CloudScope(rules ScopeRules, twin json.RawMessage) []FieldError
}

// Provider observes and converges one section.
//
// The reconciler calls, in order: Decode on the merged, schema-valid section;
// Observe; Plan; Apply for each change; and Observe again to verify.
// `twinlet plan` makes the same calls but never Apply.
type Provider interface {
	// Decode turns a merged section that passed its JSON Schema into the
	// provider's spec and checks what a schema cannot (an RFC 1123 name, a
	// zone that exists in the database, a path inside the allowed roots).
	// Invalid input must be reported as an *InvalidError: it is terminal,
	// and the last good desired section stays in force. Decode is pure.
	Decode(env *Env, raw json.RawMessage) (Spec, error)

	// Observe reads the current state of what spec names. It is read-only
	// and must not fail because something is missing: a missing file is an
	// observation, not an error. The observed value is reported to the twin
	// as the section's body, so it must marshal to JSON and must never
	// contain secrets (file contents are reported as hashes, for example).
	// An error from Observe is transient: the reconciler retries later.
	Observe(ctx context.Context, env *Env, spec Spec) (Observed, error)

	// Plan compares spec with observed and returns the changes that would
	// converge them, in the order they must be applied. Plan is pure (it
	// performs no I/O), deterministic, and returns an empty slice when
	// nothing is to be done. An *InvalidError from Plan is terminal; any
	// other error is a provider bug.
	Plan(spec Spec, observed Observed) ([]Change, error)

	// Apply makes one change. It must be idempotent: applying a change
	// that is already in effect succeeds and changes nothing, so a crash
	// at any moment followed by a fresh Observe/Plan/Apply converges.
	// Writes are atomic (see Dir.WriteFileAtomic). An *InvalidError is
	// terminal; any other error is transient and is retried with backoff.
	Apply(ctx context.Context, env *Env, c Change) error
}

// SummaryCounter is an optional capability: a provider that adds counters
// to the reported __summary (certificatesExpiring), so that an ADM metric
// query can count devices fleet-wide whatever the section's reporting
// mode. SummaryCounters is pure; it gets what Observe returned. Counter
// names are camelCase and must not be a field __summary already has
// (such a counter is dropped); the same name from two sections is summed.
type SummaryCounter interface {
	SummaryCounters(observed Observed) map[string]int
}

// PathWatcher is an optional capability: a provider whose state lives in
// files lists the host paths (files or directories) whose changes should
// trigger a reconcile, so that drift is healed without waiting for the
// resync timer. Watches only enqueue; they carry no logic.
type PathWatcher interface {
	WatchPaths(env *Env, spec Spec) []string
}

// Spec is a provider's decoded desired state. Only the provider that
// returned it looks inside.
type Spec any

// Observed is a provider's view of the system. It is reported as the
// section's body in the twin's reported properties.
type Observed any

// Action is what a change does to an item.
type Action string

// The actions a Change can carry.
const (
	Create Action = "Create"
	Update Action = "Update"
	Delete Action = "Delete"
)

// Change is one step of a plan. It prints as a line of a diff.
type Change struct {
	// Action is Create, Update or Delete.
	Action Action
	// Item names what changes: an item name of a collection ("motd") or a
	// field of an object section ("name").
	Item string
	// Key identifies what the change creates or deletes on the system for
	// prune bookkeeping (a file's path, a sysctl key). When Action is
	// Create and Key is set, the reconciler records Key as created by
	// twinlet before it calls Apply; when Action is Delete, it forgets Key
	// after Apply succeeds.
	Key string
	// Before and After are short, printable, secret-free descriptions of
	// the old and the new value ("mode 0600", "sha256:ab12… 120 B").
	Before, After string
	// RebootRequired asks the reboot policy for a reboot once applied. The
	// runtime latches it in state/ until the boot id changes or the reboot
	// provider clears it, and reports it in __summary.rebootRequired with
	// the sections that asked.
	RebootRequired bool
	// Once marks a change that must never run twice (a command). The
	// runtime records it in state/ as in flight before Apply and clears the
	// record after Apply returns; a change still recorded after a crash is
	// not applied again: the runtime hands its Key to the provider through
	// Env.Interrupted, and the provider's next Observe reports it as
	// Interrupted (and its Plan does not plan it again).
	Once bool
	// Data carries what Apply needs. It is private to the provider.
	Data any
}

// String renders the change as one line of a plan.
func (c Change) String() string {
	sign := map[Action]string{Create: "+", Update: "~", Delete: "-"}[c.Action]
	switch {
	case c.Before != "" && c.After != "":
		return fmt.Sprintf("%s %s: %s -> %s", sign, c.Item, c.Before, c.After)
	case c.After != "":
		return fmt.Sprintf("%s %s: %s", sign, c.Item, c.After)
	case c.Before != "":
		return fmt.Sprintf("%s %s: %s", sign, c.Item, c.Before)
	}
	return fmt.Sprintf("%s %s", sign, c.Item)
}

// FieldError is one problem with desired input, located by a JSON pointer
// relative to the section ("/motd/path").
type FieldError struct {
	Pointer string `json:"pointer"`
	Message string `json:"message"`
}

func (e FieldError) Error() string {
	if e.Pointer == "" {
		return e.Message
	}
	return e.Pointer + ": " + e.Message
}

// InvalidError reports desired input that can never succeed as written. It
// is terminal: the reconciler does not retry until the desired state
// changes.
type InvalidError struct {
	Errors []FieldError
}

// Invalid returns an *InvalidError with one located problem.
func Invalid(pointer, format string, args ...any) *InvalidError {
	return &InvalidError{Errors: []FieldError{{Pointer: pointer, Message: fmt.Sprintf(format, args...)}}}
}

func (e *InvalidError) Error() string {
	if len(e.Errors) == 1 {
		return "invalid: " + e.Errors[0].Error()
	}
	s := fmt.Sprintf("invalid (%d problems)", len(e.Errors))
	for _, fe := range e.Errors {
		s += "; " + fe.Error()
	}
	return s
}

// Add appends a problem to e.
func (e *InvalidError) Add(pointer, format string, args ...any) {
	e.Errors = append(e.Errors, FieldError{Pointer: pointer, Message: fmt.Sprintf(format, args...)})
}

// OrNil returns e when it holds problems and nil otherwise, so that a
// Decode can collect problems and `return spec, errs.OrNil()`.
func (e *InvalidError) OrNil() error {
	if e == nil || len(e.Errors) == 0 {
		return nil
	}
	return e
}

var (
	mu       sync.RWMutex
	registry = map[string]Info{}
)

// Register adds a provider to the registry. Call it from an init function.
// It panics on a registration that fails Check, or an id registered twice.
func Register(info Info) {
	if err := info.Check(); err != nil {
		panic(err.Error())
	}
	mu.Lock()
	defer mu.Unlock()
	if _, dup := registry[info.ID]; dup {
		panic("providers: provider " + info.ID + " registered twice")
	}
	registry[info.ID] = info
}

// Lookup returns the registered provider with the id.
func Lookup(id string) (Info, bool) {
	mu.RLock()
	defer mu.RUnlock()
	info, ok := registry[id]
	return info, ok
}

// All returns every registered provider, sorted by id.
func All() []Info {
	mu.RLock()
	defer mu.RUnlock()
	out := make([]Info, 0, len(registry))
	for _, info := range registry {
		out = append(out, info)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}
