package extprov

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/twinlet/twinlet/providers"
	"github.com/twinlet/twinlet/providers/plugin"
	"github.com/twinlet/twinlet/schemas"
)

// Options configure Load.
type Options struct {
	// Dirs are the manifest directories, read in order; nil means
	// DefaultDirs.
	Dirs []string
	// Builtin reports whether a built-in provider owns a section id; such
	// a manifest is refused.
	Builtin func(id string) bool
	// Logger; nil discards. Each provider's stderr is logged through it.
	Logger *slog.Logger
	// AgentVersion is sent on initialize.
	AgentVersion string
	// RestartBackoff is the first delay before a failed process is
	// relaunched (doubling up to MaxRestartBackoff, with jitter);
	// defaults 1s and 5m.
	RestartBackoff, MaxRestartBackoff time.Duration
	// StartTimeout bounds starting a provider and asking what it is at
	// Load; 0 means 30s.
	StartTimeout time.Duration
	// Now; nil means time.Now.
	Now func() time.Time
	// Trace, when set, receives every protocol line: out is true for what
	// the agent sent. It must not block. For debugging and for the test
	// that checks real traffic against docs/protocol.
	Trace func(out bool, line []byte)
}

func (o *Options) now() time.Time {
	if o.Now != nil {
		return o.Now()
	}
	return time.Now()
}

// Host owns the external providers that Load accepted and their processes.
type Host struct {
	opts     *Options
	entries  []*entry
	problems []Problem
}

type entry struct {
	m    *Manifest
	c    *client
	desc plugin.Description
	info providers.Info
}

// Load reads the manifests of opts.Dirs, refuses those that fail (with a
// located Problem each) and asks every remaining provider what it is. It
// never fails as a whole: the providers it accepted are in Infos.
func Load(ctx context.Context, opts Options) *Host {
	dirs := opts.Dirs
	if dirs == nil {
		dirs = DefaultDirs
	}
	files, probs := manifestFiles(dirs)
	h := LoadFiles(ctx, files, opts)
	h.problems = append(probs, h.problems...)
	return h
}

// LoadFiles is Load for a list of manifest files.
func LoadFiles(ctx context.Context, files []string, opts Options) *Host {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Builtin == nil {
		opts.Builtin = func(string) bool { return false }
	}
	if opts.RestartBackoff <= 0 {
		opts.RestartBackoff = time.Second
	}
	if opts.MaxRestartBackoff < opts.RestartBackoff {
		opts.MaxRestartBackoff = max(5*time.Minute, opts.RestartBackoff)
	}
	if opts.StartTimeout <= 0 {
		opts.StartTimeout = 30 * time.Second
	}
	h := &Host{opts: &opts}
	owner := map[string]string{} // section → manifest file
	var accepted []*Manifest
	for _, file := range files {
		m, probs := ParseManifest(file)
		if len(probs) > 0 {
			h.problems = append(h.problems, probs...)
			continue
		}
		refuse := func(format string, args ...any) {
			h.problems = append(h.problems, Problem{Pos: m.at("/section"), Section: m.Section, Message: fmt.Sprintf(format, args...)})
		}
		if opts.Builtin(m.Section) {
			refuse("section %q belongs to a built-in provider; an external provider cannot take it over", m.Section)
			continue
		}
		if prev, dup := owner[m.Section]; dup {
			refuse("section %q is already provided by %s", m.Section, prev)
			continue
		}
		owner[m.Section] = file
		accepted = append(accepted, m)
	}
	// The programs start side by side: one slow to describe itself does
	// not hold up the others.
	entries := make([]*entry, len(accepted))
	errs := make([]error, len(accepted))
	var wg sync.WaitGroup
	for i, m := range accepted {
		wg.Add(1)
		go func() {
			defer wg.Done()
			entries[i], errs[i] = h.describe(ctx, m)
		}()
	}
	wg.Wait()
	for i, m := range accepted {
		if errs[i] != nil {
			h.problems = append(h.problems, Problem{Pos: m.at("/executable"), Section: m.Section, Message: errs[i].Error()})
			continue
		}
		h.entries = append(h.entries, entries[i])
	}
	h.checkDependencies()
	return h
}

// describe starts the provider, opens its session and builds its Info.
func (h *Host) describe(ctx context.Context, m *Manifest) (*entry, error) {
	c := &client{m: m, log: h.opts.Logger.With("provider", m.Section), opts: h.opts}
	ctx, cancel := context.WithTimeout(ctx, h.opts.StartTimeout)
	defer cancel()
	var d plugin.Description
	if err := c.call(ctx, plugin.MethodDescribe, struct{}{}, &d, nil); err != nil {
		c.close()
		var ve *versionError
		if errors.As(err, &ve) {
			return nil, ve
		}
		return nil, err
	}
	info, err := buildInfo(m, c, d)
	if err != nil {
		c.close()
		return nil, fmt.Errorf("describe: %w", err)
	}
	return &entry{m: m, c: c, desc: d, info: info}, nil
}

// buildInfo checks a description and turns it into the registration the
// reconciler takes, with the schema compiled here so that a bad one
// refuses this provider only.
func buildInfo(m *Manifest, c *client, d plugin.Description) (providers.Info, error) {
	if d.ID != m.Section {
		return providers.Info{}, fmt.Errorf("the provider describes section %q, the manifest says %q", d.ID, m.Section)
	}
	info := providers.Info{ID: m.Section, DependsOn: d.DependsOn, ReadOnly: d.ReadOnly, CloudDeny: d.CloudDeny}
	switch d.Kind {
	case "object":
		info.Kind = providers.Object
	case "collection":
		info.Kind = providers.Collection
	default:
		return info, fmt.Errorf("kind %q is not object or collection", d.Kind)
	}
	if m.DependsOn != nil {
		info.DependsOn = m.DependsOn
	}
	switch {
	case m.timeout > 0:
		info.Timeout = m.timeout
	case d.TimeoutSeconds > 0:
		info.Timeout = time.Duration(d.TimeoutSeconds * float64(time.Second))
	}
	schema, err := sectionSchema(d.Schema)
	if err != nil {
		return info, err
	}
	if _, err := schemas.Compile(m.Section, schema); err != nil {
		return info, err
	}
	info.Schema = schema
	timeout := info.Timeout
	if timeout == 0 {
		timeout = providers.DefaultTimeout
	}
	x := &proxy{c: c, timeout: timeout}
	p := newProxy(x, d)
	info.New = func() providers.Provider { return p }
	for name, md := range d.Methods {
		if info.Methods == nil {
			info.Methods = map[string]providers.Method{}
		}
		if _, err := schemas.Compile(m.Section+"."+name+" payload", md.Schema); err != nil {
			return info, fmt.Errorf("method %s: %w", name, err)
		}
		info.Methods[name] = providers.Method{Description: md.Description, Schema: md.Schema, Call: x.method(name)}
	}
	if err := info.Check(); err != nil {
		return info, err
	}
	return info, nil
}

// sectionSchema adds the settings the agent itself handles (__meta,
// reportingMode) to the properties of an object schema that does not
// name them, so that a provider's schema need not know them (and a
// collection's additionalProperties, its items, do not apply to them).
func sectionSchema(raw json.RawMessage) (json.RawMessage, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, errors.New("no schema: every section is validated before it reaches its provider")
	}
	var s map[string]any
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, fmt.Errorf("schema: %v", err)
	}
	props, ok := s["properties"].(map[string]any)
	if !ok {
		if s["type"] != "object" {
			return raw, nil
		}
		props = map[string]any{}
		s["properties"] = props
	}
	if _, ok := props["__meta"]; !ok {
		props["__meta"] = map[string]any{"type": "object", "additionalProperties": false, "properties": map[string]any{
			"deploymentId": map[string]any{"type": "string", "maxLength": 256}, "interfaceVersion": map[string]any{"type": "string", "maxLength": 64}}}
	}
	if _, ok := props["reportingMode"]; !ok {
		props["reportingMode"] = map[string]any{"enum": []string{"detailed", "minimal", "none"}}
	}
	return json.Marshal(s)
}

// checkDependencies refuses providers that depend on a section nobody
// provides, until none is left.
func (h *Host) checkDependencies() {
	for {
		have := map[string]bool{}
		for _, e := range h.entries {
			have[e.m.Section] = true
		}
		kept := h.entries[:0:0]
		dropped := false
		for _, e := range h.entries {
			var missing []string
			for _, d := range e.info.DependsOn {
				if !have[d] && !h.opts.Builtin(d) {
					missing = append(missing, d)
				}
			}
			if len(missing) > 0 {
				h.problems = append(h.problems, Problem{Pos: e.m.at("/dependsOn"), Section: e.m.Section,
					Message: fmt.Sprintf("depends on %s, which no provider owns", strings.Join(missing, ", "))})
				e.c.close()
				dropped = true
				continue
			}
			kept = append(kept, e)
		}
		h.entries = kept
		if !dropped {
			return
		}
	}
}

// Infos are the registrations of the accepted providers, sorted by id.
//
// A section whose manifest was refused (and that neither a built-in nor
// another external provider owns) is among them too, as a placeholder
// that fails every reconcile with reason ProviderRefused and the
// refusal's location and message: the section reports what is wrong
// instead of going silently unmanaged.
func (h *Host) Infos() []providers.Info {
	out := make([]providers.Info, 0, len(h.entries))
	owned := map[string]bool{}
	for _, e := range h.entries {
		out = append(out, e.info)
		owned[e.m.Section] = true
	}
	for _, p := range h.problems {
		if p.Section == "" || owned[p.Section] || h.opts.Builtin(p.Section) {
			continue
		}
		owned[p.Section] = true
		out = append(out, refusedInfo(p))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// ReasonRefused: the section's external provider was refused at start.
const ReasonRefused = "ProviderRefused"

// refusedInfo is the placeholder of a refused provider's section.
func refusedInfo(p Problem) providers.Info {
	f := &Failure{Reason: ReasonRefused, Message: "the external provider of this section was refused at start: " + p.String()}
	return providers.Info{ID: p.Section, Schema: json.RawMessage(`{"type":"object"}`),
		New: func() providers.Provider { return refused{f} }}
}

type refused struct{ f *Failure }

func (r refused) Decode(*providers.Env, json.RawMessage) (providers.Spec, error) { return nil, r.f }
func (r refused) Observe(context.Context, *providers.Env, providers.Spec) (providers.Observed, error) {
	return nil, r.f
}
func (r refused) Plan(providers.Spec, providers.Observed) ([]providers.Change, error) {
	return nil, r.f
}
func (r refused) Apply(context.Context, *providers.Env, providers.Change) error { return r.f }

// Problems are the refused manifests and providers, located.
func (h *Host) Problems() []Problem { return h.problems }

// Close stops every provider process and waits for them.
func (h *Host) Close() {
	for _, e := range h.entries {
		e.c.close()
	}
}

// Status is one external provider as `twinlet providers list` shows it.
type Status struct {
	Section  string `json:"section"`
	Version  string `json:"version,omitempty"`
	Manifest string `json:"manifest"`
	// State is "running", "stopped", "failed" or "refused".
	State   string `json:"state"`
	PID     int    `json:"pid,omitempty"`
	Starts  int    `json:"starts"`
	Message string `json:"message,omitempty"`
}

// List reports the accepted providers' processes and the refused
// manifests, sorted by section then file.
func (h *Host) List() []Status {
	var out []Status
	for _, e := range h.entries {
		c := e.c
		c.mu.Lock()
		s := Status{Section: e.m.Section, Version: e.desc.Version, Manifest: e.m.File, State: "stopped", Starts: c.starts}
		switch {
		case c.p != nil && c.p.alive():
			s.State, s.PID = "running", c.p.cmd.Process.Pid
		case c.last != nil && c.failures > 0:
			s.State, s.Message = "failed", c.last.Reason+": "+c.last.Message
		}
		c.mu.Unlock()
		out = append(out, s)
	}
	for _, p := range h.problems {
		file, _, _ := strings.Cut(p.Pos, ":")
		out = append(out, Status{Section: p.Section, Manifest: file, State: "refused", Message: p.String()})
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Section != out[j].Section {
			return out[i].Section < out[j].Section
		}
		return out[i].Manifest < out[j].Manifest
	})
	return out
}

// CloudScope lets the agent config keep cloud rules for a refused
// provider's section: it fails anyway, and the rules stay checked for when
// the provider is fixed.
func (r refused) CloudScope(providers.ScopeRules, json.RawMessage) []providers.FieldError { return nil }
