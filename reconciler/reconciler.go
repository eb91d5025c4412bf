// Package reconciler is twinlet's control loop. Desired state comes from an
// ordered list of sources (local enforce policy, the twin, local default
// policy, then Options.Sources); sources only enqueue section keys. Each
// section has its own controller (its result, backoff and caches; no lock
// spans two sections), and Run reconciles sections side by side on a
// bounded pool of workers, one section on one worker at a time. A section
// whose dependencies are not Ready for the same desired input is Waiting
// and is enqueued again by their next Ready result.
//
// One reconcile of a section is a list of named steps (see pass): gather
// the sources → cloud scope (the twin's part alone) → merge → validate
// (schema, then the provider) → Observe → Plan → Apply each change →
// Observe and Plan again to verify → record. Every provider call runs under
// the provider's timeout (Info.Timeout) with panic recovery. Long applies
// report progress, rate limited; changes that must run once are recorded in
// state/ while they run, so that a crash never runs them twice; a reboot
// asked for by a change is latched in state/ until the boot id changes.
package reconciler

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twinlet/twinlet/internal/atomicfile"
	"github.com/twinlet/twinlet/internal/policy"
	"github.com/twinlet/twinlet/providers"
	"github.com/twinlet/twinlet/schemas"
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
	// Sources are further desired-state sources, after the built-in ones
	// (local enforce policy, the twin, local default policy); each input
	// names its layer. Nil means the built-in ones alone.
	Sources []Source
	// AllowedRoots bound the files provider (device paths).
	AllowedRoots []string
	// CloudSections lists the sections the twin may set; nil means every section.
	CloudSections []string
	// CloudRules are the cloud scope per section; a section absent here uses its Info.CloudDeny.
	CloudRules map[string]providers.ScopeRules
	// Runner runs commands; nil means providers.ExecRunner.
	Runner providers.Runner
	// Uploader is handed to providers as Env.Uploader (file upload through
	// the cloud connection); nil when there is none.
	Uploader providers.FileUploader
	// Logger; nil discards.
	Logger *slog.Logger
	// Now; nil means time.Now.
	Now func() time.Time
	// CallTimeout, when set, bounds every provider call instead of each
	// provider's Info.Timeout (tests).
	CallTimeout time.Duration
	// Workers is the number of sections reconciled side by side by Run
	// and ReconcileAll;
	// 0 means 4.
	Workers int
	// ProgressInterval is the least time between two progress reports of
	// one section (providers.Env.Progress); 0 means 5 seconds. The final
	// state of a reconcile always goes out at once.
	ProgressInterval time.Duration
	// BootID returns the id of the running boot; the reboot-required
	// latch clears when it changes. Nil reads
	// <Root>/proc/sys/kernel/random/boot_id: the kernel's on a device; in
	// a sandbox root the file is usually absent (id ""), so a sandbox
	// "reboots" when a test writes it.
	BootID func() string
	// Providers to run; nil means every registered provider.
	Providers []providers.Info
	// OnReport, when set, receives every new reported document (outside
	// dry runs), for example to patch the twin. It must not block.
	OnReport func(doc []byte)
	// OnBusy, when set, is called as work starts, a section's reconcile
	// (dry runs too) or a provider method, and the function it returns as
	// that work ends. Neither may block.
	OnBusy func() (done func())
	// OnSection, when set, receives every section result (outside dry
	// runs) and how long the reconcile took, for metrics.
	OnSection func(res *SectionResult, took time.Duration)
}

// controller is one section's reconciler: its provider and everything the
// reconciler remembers about the section between reconciles. Sections
// share no lock but the short ones over the sources and the state file.
type controller struct {
	id      string
	info    providers.Info
	p       providers.Provider
	timeout time.Duration
	schema  *schemas.Schema // nil when the schema is embedded in schemas/
	// schemaDigest identifies the text of the section's schema
	// (schemas.Digest), for state.Section.Validated.
	schemaDigest string
	methods      map[string]*schemas.Schema
	// run is held for a whole reconcile, dry or not, so that a provider
	// never sees two calls for one section at once.
	run sync.Mutex

	mu       sync.Mutex // guards what follows
	result   *SectionResult
	failures int
	seenHash string // inputs last seen by changedSections
	// changedGen counts the input changes changedSections saw; doneGen
	// is the count the last finished reconcile (not a dry run) started
	// with. While doneGen < changedGen the section's result is older than
	// its input, and the summary is not Ready.
	changedGen, doneGen uint64
	valid               *validEntry
	merged              *mergeEntry
	lastProgress        time.Time
	// restored is the section's status in the last reported document of
	// an earlier run, until this run records a result: a state that has
	// not changed keeps its lastTransitionTime across restarts (so that a
	// no-op `apply --once` changes nothing on disk).
	restored *Status
}

func (c *controller) lastResult() *SectionResult {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.result
}

// Reconciler reconciles the sections of one device.
type Reconciler struct {
	opts  Options
	log   *slog.Logger
	ctrls map[string]*controller
	order []string // dependency order
	// rehashes counts periodic re-reads of the policy directory,
	// resyncs the resync timer's firings, timerWakes every firing of
	// the loop's timers (tests).
	rehashes, resyncs, timerWakes atomic.Int64
	// unsaved: a reconcile changed the state in memory in ways that need
	// not be on disk before its result is reported (see pass.unsaved);
	// the next Publish saves it.
	unsaved atomic.Bool
	rank    map[string]int
	deps    map[string][]string // section → the sections that depend on it
	sources []Source
	store   *state.Store
	cloud   map[string]bool // nil: the twin may set every section
	life    context.Context // ends with Close: method calls stop
	stop    context.CancelFunc

	mu          sync.Mutex // the sources
	pol         *policy.Set
	twin        map[string]json.RawMessage
	twinVersion int64
	twinErr     string
	seq         int
	q           *queue

	stMu    sync.Mutex // the persisted state
	st      *state.State
	saveSeq uint64 // snapshots taken (under stMu)
	// polCache is the parse cache of the policy files, kept in
	// <state-dir>/policy-cache.json; polCacheDirty says it changed since
	// it was last written.
	polCacheMu    sync.Mutex
	polCache      policy.Cache
	polCacheDirty bool

	writeMu sync.Mutex // state writes, in snapshot order
	written uint64     // the last snapshot written

	pubMu      sync.Mutex // one Publish at a time
	repMu      sync.Mutex // what follows
	reported   []byte
	lastChange string

	watchMu sync.Mutex
	watched map[string]bool // "<section>\x00<dir>" watched by Run
}

// New builds a Reconciler: it checks every registration (a section or a
// direct method without a schema, a schema that does not compile or a
// cycle is an error), orders the providers by their dependencies (a
// dependency on a section that no provider owns is ignored: nothing can
// desire it) and loads the state (a corrupt state is logged and replaced
// by a fresh one). Once changes still recorded as in flight were cut off
// by a crash: they become interrupted and are never applied again.
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
	if opts.Workers <= 0 {
		opts.Workers = 4
	}
	if opts.ProgressInterval <= 0 {
		opts.ProgressInterval = 5 * time.Second
	}
	if opts.BootID == nil {
		root := opts.Root
		opts.BootID = func() string { return readBootID(root) }
	}
	if opts.Providers == nil {
		opts.Providers = providers.All()
	}
	r := &Reconciler{
		opts: opts, log: opts.Logger, ctrls: map[string]*controller{},
		store: &state.Store{Dir: opts.StateDir}, rank: map[string]int{}, deps: map[string][]string{},
	}
	r.life, r.stop = context.WithCancel(context.Background())
	for _, info := range opts.Providers {
		c, err := newController(info, opts.CallTimeout)
		if err != nil {
			return nil, err
		}
		if _, dup := r.ctrls[info.ID]; dup {
			return nil, fmt.Errorf("reconciler: provider %s given twice", info.ID)
		}
		// Not reconciled since the start: the summary is not Ready
		// before every section has been (a section nothing desires
		// reports nothing, so a missing result says nothing).
		c.changedGen = 1
		r.ctrls[info.ID] = c
	}
	order, err := topoOrder(opts.Providers)
	if err != nil {
		return nil, err
	}
	r.order = order
	for i, id := range order {
		r.rank[id] = i
		for _, d := range r.ctrls[id].info.DependsOn {
			if r.ctrls[d] == nil {
				continue
			}
			r.deps[d] = append(r.deps[d], id)
		}
	}
	if opts.CloudSections != nil {
		r.cloud = map[string]bool{}
		for _, id := range opts.CloudSections {
			r.cloud[id] = true
		}
	}
	r.sources = append([]Source{policySource{r, policy.Enforce}, twinSource{r}, policySource{r, policy.Default}}, opts.Sources...)
	st, err := r.store.Load()
	if err != nil {
		r.log.Warn("state", "err", err)
	}
	r.st = st
	if st.Interrupt() {
		for id, sec := range st.Sections {
			if len(sec.Interrupted) > 0 {
				r.log.Warn("changes were in flight when the agent stopped; they are not run again", "section", id, "keys", strings.Join(sec.Interrupted, ","))
			}
		}
		if err := r.store.Save(st); err != nil {
			return nil, fmt.Errorf("reconciler: record interrupted changes: %w", err)
		}
	}
	r.checkBoot()
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
	r.restoreStatuses(st.Reported)
	if opts.TwinDesiredFile == "" && st.TwinDesired != nil {
		r.twin, r.twinVersion = st.TwinDesired, st.TwinVersion
	}
	if err := r.loadSources(); err != nil {
		return nil, err
	}
	return r, nil
}

// restoreStatuses hands each controller its section's __status from the
// last reported document.
func (r *Reconciler) restoreStatuses(reported json.RawMessage) {
	var doc map[string]struct {
		Status *Status `json:"__status"`
	}
	if len(reported) == 0 || json.Unmarshal(reported, &doc) != nil {
		return
	}
	for id, c := range r.ctrls {
		if sec, ok := doc[id]; ok && sec.Status != nil {
			c.restored = sec.Status
		}
	}
}

// newController checks one registration and compiles its schemas.
func newController(info providers.Info, override time.Duration) (*controller, error) {
	if err := info.Check(); err != nil {
		return nil, fmt.Errorf("reconciler: %w", err)
	}
	c := &controller{id: info.ID, info: info, p: info.New(), timeout: info.Timeout, methods: map[string]*schemas.Schema{}}
	if c.timeout == 0 {
		c.timeout = providers.DefaultTimeout
	}
	if override > 0 {
		c.timeout = override
	}
	switch {
	case len(info.Schema) > 0:
		s, err := schemas.Compile(info.ID, info.Schema)
		if err != nil {
			return nil, fmt.Errorf("reconciler: provider %s: %w", info.ID, err)
		}
		c.schema = s
		c.schemaDigest = schemas.Digest(info.Schema)
	case !schemas.Has(info.ID):
		return nil, fmt.Errorf("reconciler: provider %s has no schema (neither schemas/%s.json nor Info.Schema): no section may go unvalidated", info.ID, info.ID)
	default:
		raw, _ := schemas.Raw(info.ID)
		c.schemaDigest = schemas.Digest(raw)
	}
	// Payload schemas are compiled when a method is first called (a test
	// compiles every built-in one): most runs call none.
	for name, m := range info.Methods {
		if !json.Valid(m.Schema) {
			return nil, fmt.Errorf("reconciler: method %s.%s: payload schema is not JSON", info.ID, name)
		}
		c.methods[name] = schemas.Deferred(info.ID+"."+name+" payload", m.Schema)
	}
	return c, nil
}

// Close ends what outlives a call: direct methods still running are
// cancelled. Run calls it when it returns.
func (r *Reconciler) Close() { r.stop() }

// before lists the sections that go before a provider's: those it depends
// on, and those it reads through Env.SectionDesired, so that a pass has
// validated them before their reader runs.
func before(in providers.Info) []string {
	return append(append([]string(nil), in.DependsOn...), in.ReadsDesired...)
}

// topoOrder orders providers so that dependencies (and the sections a
// provider reads, Info.ReadsDesired) come first; ties are broken by id so
// the order is stable.
func topoOrder(infos []providers.Info) ([]string, error) {
	deps := map[string][]string{}
	for _, in := range infos {
		deps[in.ID] = before(in)
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
				// No provider owns d in this set (a binary or test
				// without it): nothing can desire d, so there is
				// nothing to wait for (see unreadyDependency).
				continue
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

// policyCacheFile is the parse cache of the policy files in the state
// directory.
const policyCacheFile = "policy-cache.json"

// loadPolicyCache reads the policy parse cache; anything unreadable is an
// empty cache (it is only a cache).
func loadPolicyCache(stateDir string) policy.Cache {
	c := policy.Cache{}
	if stateDir == "" {
		return c
	}
	if b, err := os.ReadFile(filepath.Join(stateDir, policyCacheFile)); err == nil {
		if json.Unmarshal(b, &c) != nil {
			c = policy.Cache{}
		}
	}
	return c
}

// savePolicyCache writes the policy parse cache when it changed.
func (r *Reconciler) savePolicyCache() {
	r.polCacheMu.Lock()
	defer r.polCacheMu.Unlock()
	if !r.polCacheDirty || r.opts.StateDir == "" {
		return
	}
	b, err := json.Marshal(r.polCache)
	if err == nil {
		if err = os.MkdirAll(r.opts.StateDir, 0o700); err == nil {
			err = atomicfile.Write(filepath.Join(r.opts.StateDir, policyCacheFile), b, 0o600)
		}
	}
	if err != nil {
		r.log.Warn("policy cache not saved", "err", err)
		return
	}
	r.polCacheDirty = false
}

// Sections returns the section ids in dependency order.
func (r *Reconciler) Sections() []string { return append([]string(nil), r.order...) }

// Known reports whether a provider owns the section id.
func (r *Reconciler) Known(id string) bool { _, ok := r.ctrls[id]; return ok }

// loadSources re-reads the policy directory and the twin desired file.
func (r *Reconciler) loadSources() error {
	var pol *policy.Set
	if r.opts.PolicyDir != "" {
		var err error
		r.polCacheMu.Lock()
		if r.polCache == nil {
			r.polCache = loadPolicyCache(r.opts.StateDir)
		}
		pol, err = policy.LoadDirCached(r.opts.PolicyDir, r.Known, r.polCache)
		if err == nil && pol.CacheChanged {
			// Saved by the next reconcile that is not a dry run
			// (`twinlet plan` writes nothing).
			r.polCacheDirty = true
		}
		r.polCacheMu.Unlock()
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
// $version; keys starting with "$" are metadata. A $version that is not an
// integer is an error, but the sections are returned all the same: a
// caller must not lose the twin layer over it.
func SplitDesired(doc map[string]json.RawMessage) (map[string]json.RawMessage, int64, error) {
	var ver int64
	var verr error
	out := map[string]json.RawMessage{}
	for k, v := range doc {
		if k == "$version" {
			if err := json.Unmarshal(v, &ver); err != nil {
				verr = fmt.Errorf("$version %s: %w", v, err)
				ver = 0
			}
			continue
		}
		if strings.HasPrefix(k, "$") {
			continue
		}
		out[k] = v
	}
	return out, ver, verr
}

// SetTwinDesired replaces the twin layer with a full desired document
// (sections only; see SplitDesired), persists it so that a restart while
// offline keeps enforcing it, and returns the sections whose inputs
// changed. Callers enqueue those (Enqueue) when the loop runs.
func (r *Reconciler) SetTwinDesired(doc map[string]json.RawMessage, version int64) ([]string, error) {
	r.mu.Lock()
	r.twin, r.twinVersion, r.twinErr = doc, version, ""
	r.mu.Unlock()
	err := r.persist(func(st *state.State) { st.TwinDesired, st.TwinVersion = doc, version })
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
// Only sources call it: a dry run must not spend the signal.
func (r *Reconciler) changedSections() []string {
	var out []string
	for _, id := range r.order {
		ins, probs := r.inputs(id)
		h := hashInputs(ins, probs)
		c := r.ctrls[id]
		c.mu.Lock()
		if c.seenHash != h {
			c.seenHash = h
			c.changedGen++
			out = append(out, id)
		}
		c.mu.Unlock()
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

// Source is one source of desired state. Inputs returns its contributions
// to a section, in their order within the source, each naming its layer
// and where it came from. It must be safe for concurrent use and fast: it
// is called at every reconcile of the section.
type Source interface {
	Inputs(section string) []Input
}

// policySource is the local policy files of one mode.
type policySource struct {
	r    *Reconciler
	mode policy.Mode
}

func (s policySource) Inputs(id string) []Input {
	s.r.mu.Lock()
	defer s.r.mu.Unlock()
	var ins []Input
	if s.r.pol == nil {
		return nil
	}
	for _, d := range s.r.pol.Docs {
		raw, ok := d.Sections[id]
		if !ok || (d.Mode == policy.Enforce) != (s.mode == policy.Enforce) {
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
	return ins
}

// twinSource is the twin's desired properties.
type twinSource struct{ r *Reconciler }

func (s twinSource) Inputs(id string) []Input {
	s.r.mu.Lock()
	defer s.r.mu.Unlock()
	raw, ok := s.r.twin[id]
	if !ok {
		return nil
	}
	return []Input{{Layer: LayerTwin, Source: "twin", Value: raw,
		Locate: func(ptr string) string { return "twin:/" + id + ptr }}}
}

// inputs gathers one section's inputs from every source, in source order,
// and the problems of policy files that could not be read but once
// contributed to it.
func (r *Reconciler) inputs(id string) ([]Input, []ErrorItem) {
	var ins []Input
	for _, s := range r.sources {
		ins = append(ins, s.Inputs(id)...)
	}
	r.stMu.Lock()
	var srcs []string
	if sec := r.st.Sections[id]; sec != nil {
		srcs = append(srcs, sec.Sources...)
	}
	r.stMu.Unlock()
	r.mu.Lock()
	defer r.mu.Unlock()
	var probs []ErrorItem
	if r.pol == nil {
		return ins, nil
	}
	// A policy file that failed to load keeps its sections' last good
	// desired in force: report the failure on each section it fed.
	for _, p := range r.pol.Problems {
		if !r.pol.Failed[p.File] {
			continue
		}
		for _, src := range srcs {
			if src == filepath.Base(p.File) || strings.HasPrefix(src, filepath.Base(p.File)+"#") {
				probs = append(probs, ErrorItem{Message: p.Message, At: p.Pos})
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

// guard runs f under the section's timeout and turns a panic into an error.
func (c *controller) guard(ctx context.Context, what string, f func(ctx context.Context) error) (err error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
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

func (r *Reconciler) env(id string, managed, interrupted map[string]bool, log *slog.Logger) *providers.Env {
	rules, ok := r.opts.CloudRules[id]
	if !ok {
		rules = providers.ScopeRules{Deny: r.ctrls[id].info.CloudDeny}
	}
	return &providers.Env{
		Root: r.opts.Root, StateDir: r.opts.StateDir, AllowedRoots: r.opts.AllowedRoots,
		Runner: r.opts.Runner, Now: r.opts.Now, Logger: log, Managed: managed, Interrupted: interrupted,
		RebootRequired:     func() []string { r.recheckBoot(); return r.RebootRequiredBy() },
		RequeueAfter:       func(d time.Duration) { r.requeueAfter(id, d) },
		CloudAllowed:       r.cloud == nil || r.cloud[id],
		CloudRules:         rules,
		DependencyObserved: r.dependencyObserved(id),
		SectionDesired:     r.sectionDesired(id),
		Uploader:           r.opts.Uploader,
	}
}

// dependencyObserved is Env.DependencyObserved for section id: the last
// complete observation of a Ready section that id depends on, as its
// provider returned it (not cut down by its reporting mode; providers
// never change an Observed after returning it). It reads the other
// section's last result under that controller's own lock only, and never
// blocks on a reconcile.
func (r *Reconciler) dependencyObserved(id string) func(string) (json.RawMessage, bool) {
	c := r.ctrls[id]
	if c == nil {
		return nil
	}
	return func(dep string) (json.RawMessage, bool) {
		if !slices.Contains(c.info.DependsOn, dep) || r.ctrls[dep] == nil {
			return nil, false
		}
		res := r.ctrls[dep].lastResult()
		if res == nil || res.observedValue == nil || res.Status.State != StateReady {
			return nil, false
		}
		b, err := json.Marshal(res.observedValue)
		if err != nil {
			return nil, false
		}
		return b, true
	}
}

// sectionDesired is Env.SectionDesired for section id: the last good
// desired value of a section that id reads (Info.ReadsDesired), as a
// direct method of that section sees it in Env.Desired.
func (r *Reconciler) sectionDesired(id string) func(string) (json.RawMessage, bool) {
	c := r.ctrls[id]
	if c == nil || len(c.info.ReadsDesired) == 0 {
		return nil
	}
	return func(other string) (json.RawMessage, bool) {
		if !slices.Contains(c.info.ReadsDesired, other) || r.ctrls[other] == nil {
			return nil, false
		}
		r.stMu.Lock()
		var lastGood json.RawMessage
		if sec := r.st.Sections[other]; sec != nil {
			lastGood = sec.LastGood
		}
		r.stMu.Unlock()
		var v map[string]json.RawMessage
		if lastGood == nil || json.Unmarshal(lastGood, &v) != nil {
			return nil, false
		}
		return stripReserved(v), true
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
