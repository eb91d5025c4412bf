// Package reconciler is twinlet's control loop: it merges the layers of
// desired state (local enforce policy, twin desired, local default policy),
// validates each section against its schema and its provider, observes,
// plans, applies, verifies, and aggregates the results into the reported
// document. Sources only enqueue section keys; one worker reconciles them,
// in dependency order, with per-section backoff for transient failures.
package reconciler

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/twinlet/twinlet/internal/policy"
	"github.com/twinlet/twinlet/providers"
	"github.com/twinlet/twinlet/state"
)

// Options configure a Reconciler.
type Options struct {
	// Root is the directory providers act on ("/" on a device).
	Root string
	// StateDir holds state.json and reported.json.
	StateDir string
	// PolicyDir holds local policy files; "" for none.
	PolicyDir string
	// TwinDesiredFile, when set, is read as the twin's desired properties
	// (offline preview, tests).
	TwinDesiredFile string
	// AllowedRoots bound the files provider (device paths).
	AllowedRoots []string
	// Runner runs commands; nil means providers.ExecRunner.
	Runner providers.Runner
	// Logger; nil discards.
	Logger *slog.Logger
	// Now; nil means time.Now.
	Now func() time.Time
	// CallTimeout bounds each provider call; 0 means 2 minutes.
	CallTimeout time.Duration
	// Providers to run; nil means every registered provider.
	Providers []providers.Info
	// OnReport, when set, receives every new reported document (outside
	// dry runs), for example to patch the twin.
	OnReport func(doc []byte)
	// OnSection, when set, receives every section result (outside dry
	// runs) and how long the reconcile took, for metrics.
	OnSection func(res *SectionResult, took time.Duration)
	// CloudSections lists the sections the twin may set; nil means every section.
	CloudSections []string
	// CloudRules are the cloud scope per section; a section absent here uses its Info.CloudDeny.
	CloudRules map[string]providers.ScopeRules
}

type entry struct {
	info providers.Info
	p    providers.Provider
}

// Reconciler reconciles the sections of one device.
type Reconciler struct {
	opts  Options
	log   *slog.Logger
	provs map[string]*entry
	order []string // dependency order
	store *state.Store

	mu          sync.Mutex
	st          *state.State
	pol         *policy.Set
	twin        map[string]json.RawMessage
	twinVersion int64
	twinErr     string
	results     map[string]*SectionResult
	failures    map[string]int
	inputsHash  map[string]string
	reported    []byte
	lastChange  string
	seq         int
	q           *queue
	valid       map[string]*validEntry
	merges      map[string]*mergeEntry
	watchMu     sync.Mutex
}

// New builds a Reconciler: it orders the providers by their dependencies
// (a cycle or a missing dependency is an error) and loads the state (a
// corrupt state is logged and replaced by a fresh one).
func New(opts Options) (*Reconciler, error) {
	if opts.Root == "" {
		return nil, errors.New("reconciler: no root")
	}
	if opts.StateDir == "" {
		return nil, errors.New("reconciler: no state dir")
	}
	if opts.Runner == nil {
		opts.Runner = providers.ExecRunner{}
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.CallTimeout == 0 {
		opts.CallTimeout = 2 * time.Minute
	}
	if opts.Providers == nil {
		opts.Providers = providers.All()
	}
	r := &Reconciler{
		opts: opts, log: opts.Logger, provs: map[string]*entry{},
		store:   &state.Store{Dir: opts.StateDir},
		results: map[string]*SectionResult{}, failures: map[string]int{}, inputsHash: map[string]string{},
		valid: map[string]*validEntry{}, merges: map[string]*mergeEntry{},
	}
	for _, info := range opts.Providers {
		r.provs[info.ID] = &entry{info: info, p: info.New()}
	}
	order, err := topoOrder(opts.Providers)
	if err != nil {
		return nil, err
	}
	r.order = order
	st, err := r.store.Load()
	if err != nil {
		r.log.Warn("state", "err", err)
	}
	r.st = st
	// The last reported document is the outbox: a restart knows what it
	// reported last even before it has reconciled anything.
	if len(st.Reported) > 0 {
		var b bytes.Buffer
		if json.Compact(&b, st.Reported) == nil {
			r.reported = b.Bytes()
		}
	}
	var prev struct {
		Summary Summary `json:"__summary"`
	}
	if json.Unmarshal(st.Reported, &prev) == nil {
		r.lastChange = prev.Summary.LastReconcile
	}
	if opts.TwinDesiredFile == "" && st.TwinDesired != nil {
		r.twin, r.twinVersion = st.TwinDesired, st.TwinVersion
	}
	if err := r.loadSources(); err != nil {
		return nil, err
	}
	return r, nil
}

// topoOrder orders providers so that dependencies come first; ties are
// broken by id so the order is stable.
func topoOrder(infos []providers.Info) ([]string, error) {
	deps := map[string][]string{}
	for _, in := range infos {
		deps[in.ID] = in.DependsOn
	}
	ids := make([]string, 0, len(deps))
	for id := range deps {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var order []string
	mark := map[string]int{} // 1 visiting, 2 done
	var visit func(id string, path []string) error
	visit = func(id string, path []string) error {
		switch mark[id] {
		case 1:
			return fmt.Errorf("reconciler: dependency cycle: %s", strings.Join(append(path, id), " -> "))
		case 2:
			return nil
		}
		mark[id] = 1
		ds := append([]string(nil), deps[id]...)
		sort.Strings(ds)
		for _, d := range ds {
			if _, ok := deps[d]; !ok {
				return fmt.Errorf("reconciler: provider %s depends on unknown section %s", id, d)
			}
			if err := visit(d, append(path, id)); err != nil {
				return err
			}
		}
		mark[id] = 2
		order = append(order, id)
		return nil
	}
	for _, id := range ids {
		if err := visit(id, nil); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// Sections returns the section ids in dependency order.
func (r *Reconciler) Sections() []string { return append([]string(nil), r.order...) }

// Known reports whether a provider owns the section id.
func (r *Reconciler) Known(id string) bool { _, ok := r.provs[id]; return ok }

// loadSources re-reads the policy directory and the twin desired file.
func (r *Reconciler) loadSources() error {
	var pol *policy.Set
	if r.opts.PolicyDir != "" {
		var err error
		pol, err = policy.LoadDir(r.opts.PolicyDir, r.Known)
		if err != nil {
			return err
		}
	} else {
		pol = &policy.Set{Failed: map[string]bool{}}
	}
	for _, p := range pol.Problems {
		r.log.Warn("policy", "problem", p.String())
	}
	r.mu.Lock()
	r.pol = pol
	r.mu.Unlock()
	if r.opts.TwinDesiredFile != "" {
		doc, ver, err := readTwinFile(r.opts.TwinDesiredFile)
		r.mu.Lock()
		if err != nil {
			r.twinErr = err.Error()
			r.log.Warn("twin desired file", "err", err)
		} else {
			r.twinErr = ""
			r.twin, r.twinVersion = doc, ver
		}
		r.mu.Unlock()
	}
	return nil
}

// readTwinFile reads desired properties from a JSON file: either the
// desired object itself or a whole twin ({"properties":{"desired":…}}).
func readTwinFile(path string) (map[string]json.RawMessage, int64, error) {
	data, err := policy.ReadSecure(path)
	if err != nil {
		return nil, 0, err
	}
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, 0, fmt.Errorf("%s: %w", path, err)
	}
	if props, ok := doc["properties"]; ok {
		var p struct{ Desired map[string]json.RawMessage }
		if err := json.Unmarshal(props, &p); err == nil && p.Desired != nil {
			doc = p.Desired
		}
	}
	return SplitDesired(doc)
}

// SplitDesired separates a twin's desired document into sections and its
// $version; keys starting with "$" are metadata.
func SplitDesired(doc map[string]json.RawMessage) (map[string]json.RawMessage, int64, error) {
	var ver int64
	out := map[string]json.RawMessage{}
	for k, v := range doc {
		if k == "$version" {
			if err := json.Unmarshal(v, &ver); err != nil {
				return nil, 0, fmt.Errorf("$version: %w", err)
			}
			continue
		}
		if strings.HasPrefix(k, "$") {
			continue
		}
		out[k] = v
	}
	return out, ver, nil
}

// SetTwinDesired replaces the twin layer with a full desired document
// (sections only; see SplitDesired), persists it so that a restart while
// offline keeps enforcing it, and returns the sections whose inputs
// changed. Callers enqueue those (Enqueue) when the loop runs.
func (r *Reconciler) SetTwinDesired(doc map[string]json.RawMessage, version int64) ([]string, error) {
	r.mu.Lock()
	r.twin, r.twinVersion, r.twinErr = doc, version, ""
	r.st.TwinDesired, r.st.TwinVersion = doc, version
	err := r.store.Save(r.st)
	r.mu.Unlock()
	return r.changedSections(), err
}

// TwinVersion returns the $version of the twin layer in force.
func (r *Reconciler) TwinVersion() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.twinVersion
}

// Reload re-reads the local sources and returns the sections whose inputs
// changed.
func (r *Reconciler) Reload() ([]string, error) {
	if err := r.loadSources(); err != nil {
		return nil, err
	}
	return r.changedSections(), nil
}

// changedSections compares each section's inputs with those last seen.
func (r *Reconciler) changedSections() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, id := range r.order {
		ins, probs := r.inputsLocked(id)
		h := hashInputs(ins, probs)
		if r.inputsHash[id] != h {
			r.inputsHash[id] = h
			out = append(out, id)
		}
	}
	return out
}

func hashInputs(ins []Input, probs []ErrorItem) string {
	var b bytes.Buffer
	for _, in := range ins {
		fmt.Fprintf(&b, "%d\x00%s\x00%s\x00", in.Layer, in.Source, in.Value)
	}
	for _, p := range probs {
		fmt.Fprintf(&b, "%s\x00%s\x00", p.At, p.Message)
	}
	return b.String()
}

// inputsLocked gathers one section's layer inputs and the problems of
// policy files that could not be read but once contributed to it.
func (r *Reconciler) inputsLocked(id string) ([]Input, []ErrorItem) {
	var ins []Input
	var probs []ErrorItem
	for _, d := range r.pol.Docs {
		raw, ok := d.Sections[id]
		if !ok {
			continue
		}
		layer := LayerDefault
		if d.Mode == policy.Enforce {
			layer = LayerEnforce
		}
		d := d
		ins = append(ins, Input{Layer: layer, Source: d.Source(), Value: raw,
			Locate: func(ptr string) string { return d.Locate(id, ptr) }})
	}
	if raw, ok := r.twin[id]; ok {
		ins = append(ins, Input{Layer: LayerTwin, Source: "twin", Value: raw,
			Locate: func(ptr string) string { return "twin:/" + id + ptr }})
	}
	// A policy file that failed to load keeps its sections' last good
	// desired in force: report the failure on each section it fed.
	if sec := r.st.Sections[id]; sec != nil {
		for _, p := range r.pol.Problems {
			if !r.pol.Failed[p.File] {
				continue
			}
			for _, src := range sec.Sources {
				if src == filepath.Base(p.File) || strings.HasPrefix(src, filepath.Base(p.File)+"#") {
					probs = append(probs, ErrorItem{Message: p.Message, At: p.Pos})
				}
			}
		}
	}
	for _, p := range r.pol.Problems {
		if p.Pointer == "/spec/"+id || strings.HasPrefix(p.Pointer, "/spec/"+id+"/") {
			probs = append(probs, ErrorItem{Pointer: strings.TrimPrefix(p.Pointer, "/spec/"+id), Message: p.Message, At: p.Pos})
		}
	}
	return ins, probs
}

// callTimeout runs f with a timeout and turns a panic into an error.
func (r *Reconciler) guard(ctx context.Context, what string, f func(ctx context.Context) error) (err error) {
	ctx, cancel := context.WithTimeout(ctx, r.opts.CallTimeout)
	defer cancel()
	defer func() {
		if v := recover(); v != nil {
			err = &bugError{fmt.Sprintf("%s panicked: %v", what, v), string(debug.Stack())}
		}
	}()
	err = f(ctx)
	if err == nil && ctx.Err() != nil {
		err = fmt.Errorf("%s: %w", what, ctx.Err())
	}
	return err
}

// bugError marks a provider that broke its contract.
type bugError struct{ msg, stack string }

func (e *bugError) Error() string { return "provider bug: " + e.msg }

func (r *Reconciler) env(id string, managed map[string]bool, log *slog.Logger) *providers.Env {
	return &providers.Env{
		Root: r.opts.Root, StateDir: r.opts.StateDir, AllowedRoots: r.opts.AllowedRoots,
		Runner: r.opts.Runner, Now: r.opts.Now, Logger: log, Managed: managed,
	}
}

// sectionMeta is what the reconciler itself reads from a section.
type sectionMeta struct {
	Meta struct {
		DeploymentID     string `json:"deploymentId"`
		InterfaceVersion string `json:"interfaceVersion"`
	} `json:"__meta"`
	ReportingMode string `json:"reportingMode"`
}

// stripReserved removes the keys the reconciler handles (__meta and
// reportingMode) before the provider sees the section.
func stripReserved(v map[string]json.RawMessage) json.RawMessage {
	c := make(map[string]json.RawMessage, len(v))
	for k, x := range v {
		if k == "__meta" || k == "reportingMode" {
			continue
		}
		c[k] = x
	}
	b, _ := json.Marshal(c)
	return b
}
