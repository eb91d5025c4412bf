package reconciler

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/twinlet/twinlet/providers"
	"github.com/twinlet/twinlet/schemas"
	"github.com/twinlet/twinlet/state"
)

// ReconcileSection runs one reconcile of one section, step by step (see
// pass). With dryRun it stops after plan and changes nothing, neither the
// system nor the state; a dry run of a section whose reconcile is under
// way does not wait for it (a package install may take half an hour) and
// says so instead. Reconciles of one section never overlap.
func (r *Reconciler) ReconcileSection(ctx context.Context, id string, dryRun bool) *SectionResult {
	c := r.ctrls[id]
	if r.opts.OnBusy != nil {
		defer r.opts.OnBusy()()
	}
	if dryRun {
		if !c.run.TryLock() {
			res := &SectionResult{ID: id}
			res.Status.State, res.Status.Reason = StateReconciling, ReasonInProgress
			res.Status.Message = "a reconcile of this section is under way; no plan until it ends"
			if prev := c.lastResult(); prev != nil {
				res.Status.DesiredVersion = prev.Status.DesiredVersion
				res.Status.Progress = prev.Status.Progress
			}
			return res
		}
	} else {
		c.run.Lock()
	}
	defer c.run.Unlock()
	c.mu.Lock()
	gen := c.changedGen
	c.mu.Unlock()
	start := time.Now()
	p := r.newPass(ctx, c, dryRun)
	p.run()
	if !dryRun {
		c.mu.Lock()
		c.doneGen = max(c.doneGen, gen)
		c.mu.Unlock()
	}
	if !dryRun && p.unsaved {
		r.unsaved.Store(true)
	}
	if !dryRun && r.opts.OnSection != nil && !p.res.Absent {
		r.opts.OnSection(p.res, time.Since(start))
	}
	return p.res
}

// pass is the state of one reconcile of one section. Its steps run in
// order, each a method that returns false when the reconcile ends there
// (having set the result):
//
//	gather   the inputs of every source; nothing desired: Absent
//	scope    the twin's contribution against the cloud scope
//	merge    the layers
//	validate schema, then the provider's Decode; else the last good
//	wait     the sections it depends on Ready for the same input
//	observe  Observe
//	plan     Plan, less the Once changes a crash interrupted
//	apply    Apply each change (write-ahead prune and in-flight records)
//	verify   Observe and Plan again: nothing may be left
//	record   the final state and reason
//
// A dry run stops after plan.
type pass struct {
	r         *Reconciler
	c         *controller
	ctx       context.Context
	dryRun    bool
	log       *slog.Logger
	res, prev *SectionResult
	restored  *Status // c.restored: the status an earlier run reported

	ins         []Input
	probs       []ErrorItem // invalid desired input
	forbidden   []ErrorItem // twin values outside the cloud scope
	merged      *Merged
	raw         []byte
	meta        sectionMeta
	env         *providers.Env
	managed     map[string]bool
	interrupted map[string]bool
	lastGood    json.RawMessage
	spec        providers.Spec
	invalidMsg  string
	observed    providers.Observed
	plan        []providers.Change
	skipped     []providers.Change // Once changes that a crash interrupted
	applied     int
	// unsaved: the state changed in memory (a first validation, the
	// managed keys after apply) in ways that need not be on disk before
	// the result is reported. The Publish that follows every reconcile
	// (Run, ReconcileAll) saves it after the report: a desired change's
	// report is not delayed by fsyncs that a crash would not miss (the
	// restart validates and observes again).
	unsaved bool
}

func (r *Reconciler) newPass(ctx context.Context, c *controller, dryRun bool) *pass {
	if !dryRun {
		r.savePolicyCache()
	}
	r.mu.Lock()
	r.seq++
	rid := r.seq
	r.mu.Unlock()
	return &pass{r: r, c: c, ctx: ctx, dryRun: dryRun, prev: c.lastResult(), restored: c.restored,
		log: r.log.With("section", c.id, "reconcile", rid), res: &SectionResult{ID: c.id}}
}

func (p *pass) run() {
	for _, step := range []func() bool{p.gather, p.scope, p.merge, p.validate, p.wait, p.observeStep, p.planStep, p.apply, p.verify} {
		if !step() {
			return
		}
	}
	p.record()
}

// gather reads every source.
func (p *pass) gather() bool {
	p.ins, p.probs = p.r.inputs(p.c.id)
	p.res.inputHash = hashInputs(p.ins, p.probs)
	p.res.Status.DesiredVersion = p.r.TwinVersion()
	if len(p.ins) > 0 || len(p.probs) > 0 || p.c.info.ReadOnly || p.c.info.RebootPolicy {
		return true
	}
	p.res.Absent = true
	if !p.dryRun {
		// Nothing desires the section: forget its last good desired, so
		// that a later invalid value does not bring it back. What twinlet
		// created stays recorded, for a later prune.
		p.r.stMu.Lock()
		sec := p.r.st.Sections[p.c.id]
		forget := sec != nil && (sec.LastGood != nil || sec.Interrupted != nil)
		p.r.stMu.Unlock()
		if forget {
			if err := p.r.persist(func(st *state.State) {
				sec := st.Section(p.c.id)
				sec.LastGood, sec.Sources, sec.Interrupted = nil, nil, nil
			}); err != nil {
				p.log.Error("save state", "err", err)
			}
		}
		p.c.mu.Lock()
		p.c.valid = nil
		p.c.mu.Unlock()
		p.r.record(p.c, p.res, p.prev)
	}
	return false
}

// scope checks the twin layer's section alone against the cloud scope:
// a section the twin may not set loses its twin input; a forbidden item
// or field of it is dropped, so that the allowed ones still converge.
// Local policy is never limited.
func (p *pass) scope() bool {
	id := p.c.id
	for i := 0; i < len(p.ins); i++ {
		in := &p.ins[i]
		if in.Layer != LayerTwin {
			continue
		}
		if p.r.cloud != nil && !p.r.cloud[id] {
			p.forbidden = append(p.forbidden, ErrorItem{Pointer: "", At: in.at(""),
				Message: "the twin may not set section " + id + " (cloud scope: not in cloud.sections)"})
			p.ins = append(p.ins[:i], p.ins[i+1:]...)
			i--
			continue
		}
		cs, ok := p.c.p.(providers.CloudScoper)
		if !ok {
			continue
		}
		rules, ok := p.r.opts.CloudRules[id]
		if !ok {
			rules = providers.ScopeRules{Deny: p.c.info.CloudDeny}
		}
		var fes []providers.FieldError
		err := p.c.guard(p.ctx, "cloud scope", func(context.Context) error {
			fes = cs.CloudScope(rules, in.Value)
			return nil
		})
		if err != nil {
			p.forbidden = append(p.forbidden, ErrorItem{At: in.at(""), Message: err.Error()})
			fes = []providers.FieldError{{Pointer: ""}}
		}
		if len(fes) == 0 {
			continue
		}
		drop := map[string]bool{}
		all := false
		for _, fe := range fes {
			if fe.Message != "" {
				p.forbidden = append(p.forbidden, ErrorItem{Pointer: fe.Pointer, Message: fe.Message, At: in.at(fe.Pointer)})
			}
			key, ok := topKey(fe.Pointer)
			if !ok {
				all = true
			}
			drop[key] = true
		}
		var obj map[string]json.RawMessage
		if all || json.Unmarshal(in.Value, &obj) != nil {
			p.ins = append(p.ins[:i], p.ins[i+1:]...)
			i--
			continue
		}
		for k := range drop {
			delete(obj, k)
		}
		if len(obj) == 0 {
			// Every key the twin gave was forbidden: it desires nothing
			// (an object section left as {} would read as Invalid).
			p.ins = append(p.ins[:i], p.ins[i+1:]...)
			i--
			continue
		}
		in.Value, _ = json.Marshal(obj)
	}
	if len(p.forbidden) > 0 && len(p.ins) == 0 {
		// Nothing else desires the section: it is not validated as an
		// empty one (that would read as Invalid), it is refused.
		return p.finish(StateFailed, ReasonForbidden, fmt.Sprintf("%d twin value(s) outside the cloud scope; nothing else desires the section, nothing applied", len(p.forbidden)), false)
	}
	return true
}

// topKey returns the first token of a JSON pointer, unescaped; false for
// the whole document.
func topKey(ptr string) (string, bool) {
	if ptr == "" {
		return "", false
	}
	key := strings.TrimPrefix(ptr, "/")
	if i := strings.IndexByte(key, '/'); i >= 0 {
		key = key[:i]
	}
	return strings.NewReplacer("~1", "/", "~0", "~").Replace(key), true
}

// merge merges the layers and reads the reconciler's own keys.
func (p *pass) merge() bool {
	merged, raw, err := p.r.merge(p.c, p.ins, p.probs)
	if err != nil {
		p.probs = append(p.probs, ErrorItem{Message: err.Error()})
		merged = &Merged{Value: map[string]json.RawMessage{}, Origin: map[string]*Input{}}
		raw = merged.JSON()
	}
	p.merged, p.raw = merged, raw
	if m, ok := merged.Value["__meta"]; ok {
		_ = json.Unmarshal(m, &p.meta.Meta)
	}
	if m, ok := merged.Value["reportingMode"]; ok {
		_ = json.Unmarshal(m, &p.meta.ReportingMode)
	}
	st := &p.res.Status
	st.DeploymentID = p.meta.Meta.DeploymentID
	st.InterfaceVersion = p.meta.Meta.InterfaceVersion
	st.Source = sourceKind(merged)
	for _, c := range merged.Conflicts {
		st.Conflicts = append(st.Conflicts, c.String())
	}
	return true
}

// validate runs the schema, then the provider's Decode. A section that
// validated before with the very same content is not validated again:
// validation is a function of the content, and the no-op resync of a large
// collection must stay close to the cost of observing it. Invalid input
// leaves the last good desired in force.
// validatedDigest identifies a merged section under a schema: a section
// whose digest is the one recorded in state passed this very schema
// before and is not validated again (validation is deterministic; Decode
// still runs, since its checks depend on the agent's configuration).
func validatedDigest(schemaDigest string, raw []byte) string {
	if schemaDigest == "" {
		return ""
	}
	return schemas.Digest(append([]byte(schemaDigest+"\n"), raw...))
}

func (p *pass) validate() bool {
	id, c := p.c.id, p.c
	p.r.stMu.Lock()
	sec := p.r.st.Section(id)
	p.managed = sec.ManagedSet()
	p.interrupted = map[string]bool{}
	for _, k := range sec.Interrupted {
		p.interrupted[k] = true
	}
	p.lastGood = sec.LastGood
	validated := sec.Validated
	p.r.stMu.Unlock()
	p.env = p.r.env(id, p.managed, p.interrupted, p.log)
	c.mu.Lock()
	cached := c.valid
	c.mu.Unlock()
	if len(p.probs) == 0 && cached != nil && bytes.Equal(cached.raw, p.raw) {
		p.spec = cached.spec
	} else {
		digest := validatedDigest(c.schemaDigest, p.raw)
		if len(p.probs) == 0 && (digest == "" || validated != digest) {
			var sp []schemas.Problem
			var err error
			if c.schema != nil {
				sp, err = c.schema.Validate(p.raw)
			} else {
				sp, err = schemas.Validate(id, p.raw)
			}
			if err != nil {
				p.probs = append(p.probs, ErrorItem{Message: err.Error()})
			}
			for _, pr := range sp {
				at, _ := p.merged.Locate(pr.Pointer)
				p.probs = append(p.probs, ErrorItem{Pointer: pr.Pointer, Message: pr.Message, At: at})
			}
		}
		if len(p.probs) == 0 {
			spec, err := p.decode(stripReserved(p.merged.Value))
			var inv *providers.InvalidError
			switch {
			case errors.As(err, &inv):
				p.addInvalid(inv)
			case err != nil:
				return p.finish(StateFailed, reasonFor(err, ReasonProviderBug), err.Error(), true)
			}
			p.spec = spec
		}
		c.mu.Lock()
		if len(p.probs) == 0 {
			c.valid = &validEntry{raw: p.raw, spec: p.spec}
		} else {
			c.valid = nil
		}
		c.mu.Unlock()
	}
	if len(p.probs) == 0 {
		if !p.dryRun {
			p.r.stMu.Lock()
			digest := validatedDigest(c.schemaDigest, p.raw)
			fresh := sec.Validated != digest
			sec.LastGood = p.raw
			sec.Validated = digest
			sec.Sources = p.merged.Sources()
			p.r.stMu.Unlock()
			// A section validated for the first time is recorded even when
			// there is nothing to apply, so that the next run need not
			// validate it again; after its report (see pass.unsaved), not
			// here: a write before apply would delay every first change
			// by its fsyncs, and a crash only means validating again.
			if fresh {
				p.unsaved = true
			}
		}
		return true
	}
	p.res.Errors = append(p.res.Errors, p.probs...)
	p.spec = nil
	if p.lastGood != nil {
		var lg map[string]json.RawMessage
		if json.Unmarshal(p.lastGood, &lg) == nil {
			if spec, err := p.decode(stripReserved(lg)); err == nil {
				p.spec = spec
			}
		}
	}
	p.invalidMsg = fmt.Sprintf("%d invalid value(s); ", len(p.probs))
	if p.spec == nil {
		p.invalidMsg += "nothing applied"
		return p.finish(StateFailed, ReasonInvalid, p.invalidMsg, false)
	}
	p.invalidMsg += "the last good desired stays in force"
	return true
}

func (p *pass) decode(raw json.RawMessage) (providers.Spec, error) {
	var spec providers.Spec
	err := p.c.guard(p.ctx, "decode", func(context.Context) error {
		var err error
		spec, err = p.c.p.Decode(p.env, raw)
		return err
	})
	return spec, err
}

func (p *pass) addInvalid(inv *providers.InvalidError) {
	for _, fe := range inv.Errors {
		at, _ := p.merged.Locate(fe.Pointer)
		p.probs = append(p.probs, ErrorItem{Pointer: fe.Pointer, Message: fe.Message, At: at})
	}
}

// wait holds the section until its dependencies are Ready for the same
// desired input; their next Ready result enqueues it again (see Run).
func (p *pass) wait() bool {
	if p.dryRun {
		return true
	}
	if dep := p.r.unreadyDependency(p.c.info); dep != "" {
		return p.finish(StateWaiting, ReasonDependencyNotReady, "waiting for "+dep, false)
	}
	return true
}

func (p *pass) observe() error {
	return p.c.guard(p.ctx, "observe", func(ctx context.Context) error {
		var err error
		p.observed, err = p.c.p.Observe(ctx, p.env, p.spec)
		return err
	})
}

func (p *pass) observeStep() bool {
	if err := p.observe(); err != nil {
		return p.finish(StateFailed, reasonFor(err, ReasonObserveFailed), err.Error(), true)
	}
	return true
}

func (p *pass) planOnce() ([]providers.Change, error) {
	var plan []providers.Change
	err := p.c.guard(p.ctx, "plan", func(context.Context) error {
		var err error
		plan, err = p.c.p.Plan(p.spec, p.observed)
		return err
	})
	return plan, err
}

// planStep plans, and takes out the Once changes that were in flight when
// the agent stopped: they are never applied again.
func (p *pass) planStep() bool {
	plan, err := p.planOnce()
	if err != nil {
		var inv *providers.InvalidError
		if errors.As(err, &inv) {
			for _, fe := range inv.Errors {
				at, _ := p.merged.Locate(fe.Pointer)
				p.res.Errors = append(p.res.Errors, ErrorItem{Pointer: fe.Pointer, Message: fe.Message, At: at})
			}
			return p.finish(StateFailed, ReasonInvalid, err.Error(), false)
		}
		return p.finish(StateFailed, reasonFor(err, ReasonProviderBug), "plan: "+err.Error(), true)
	}
	if p.c.info.ReadOnly {
		plan = nil
	}
	for _, c := range plan {
		if c.Once && p.interrupted[onceKey(c)] {
			p.skipped = append(p.skipped, c)
			continue
		}
		p.plan = append(p.plan, c)
	}
	p.res.Plan = p.plan
	if !p.dryRun {
		return true
	}
	p.report()
	if len(p.plan) > 0 {
		return p.finish(StateReconciling, ReasonPending, fmt.Sprintf("%d change(s) pending", len(p.plan)), false)
	}
	p.record()
	return false
}

// onceKey is what the in-flight record of a Once change names.
func onceKey(c providers.Change) string {
	if c.Key != "" {
		return c.Key
	}
	return c.Item
}

// apply applies the plan. What it is about to create is recorded as
// twinlet's before it exists, so a crash never leaves an unrecorded
// creation; a Once change is recorded as in flight before Apply and
// forgotten after it returns, so a crash in between is never followed by
// a second run.
func (p *pass) apply() bool {
	id := p.c.id
	wrote := false
	for _, c := range p.plan {
		if c.Action == providers.Create && c.Key != "" && !p.managed[c.Key] {
			p.managed[c.Key] = true
			wrote = true
		}
	}
	if wrote {
		if err := p.r.saveSection(id, func(sec *state.Section) { sec.SetManaged(p.managed) }); err != nil {
			return p.finish(StateFailed, ReasonApplyFailed, err.Error(), true)
		}
	}
	p.env.OnProgress = p.progress
	var applyErr error
	for _, c := range p.plan {
		c := c
		if c.Once {
			if err := p.r.saveSection(id, func(sec *state.Section) { state.AddKey(&sec.InFlight, onceKey(c)) }); err != nil {
				applyErr = fmt.Errorf("apply %s/%s: not started: %w", id, c.Item, err)
				break
			}
		}
		err := p.c.guard(p.ctx, "apply", func(ctx context.Context) error { return p.c.p.Apply(ctx, p.env, c) })
		if c.Once {
			if serr := p.r.saveSection(id, func(sec *state.Section) { state.RemoveKey(&sec.InFlight, onceKey(c)) }); serr != nil && err == nil {
				err = serr
			}
		}
		if err != nil {
			applyErr = fmt.Errorf("apply %s/%s: %w", id, c.Item, err)
			break
		}
		p.applied++
		p.log.Info("applied", "change", c.String())
		if c.RebootRequired {
			p.res.RebootRequired = true
			p.r.latchReboot(id)
		}
		if c.Action == providers.Delete && c.Key != "" {
			delete(p.managed, c.Key)
		}
	}
	p.env.OnProgress = nil
	p.res.Status.Changes = p.applied
	// Deletes forget their keys; an empty plan changed nothing to save.
	// Saved once the section's result is reported (see pass.unsaved):
	// keys of new items were saved before they were created, and what is
	// left (the keys of deleted items, the last good desired) only has
	// to reach the disk eventually.
	if len(p.plan) > 0 {
		p.r.stMu.Lock()
		p.r.st.Section(id).SetManaged(p.managed)
		p.r.stMu.Unlock()
		p.unsaved = true
	}
	if applyErr == nil {
		return true
	}
	var inv *providers.InvalidError
	if errors.As(applyErr, &inv) {
		return p.finish(StateFailed, ReasonInvalid, applyErr.Error(), false)
	}
	if p.observe() == nil {
		p.report()
	}
	var busy *providers.BusyError
	if errors.As(applyErr, &busy) {
		// Someone else holds what the provider needs: wait, retry later.
		reason := busy.Reason
		if reason == "" {
			reason = ReasonBusy
		}
		p.res.retryAfter = busy.RetryAfter
		return p.finish(StateWaiting, reason, applyErr.Error(), true)
	}
	return p.finish(StateFailed, reasonFor(applyErr, ReasonApplyFailed), applyErr.Error(), true)
}

// progress reports a long Apply's progress as Reconciling/InProgress, at
// most once per ProgressInterval per section.
func (p *pass) progress(step string, done, total int) {
	now := p.r.opts.Now()
	c := p.c
	c.mu.Lock()
	if !c.lastProgress.IsZero() && now.Sub(c.lastProgress) < p.r.opts.ProgressInterval {
		c.mu.Unlock()
		return
	}
	c.lastProgress = now
	res := &SectionResult{ID: c.id, Status: p.res.Status, inputHash: p.res.inputHash}
	res.Status.State, res.Status.Reason = StateReconciling, ReasonInProgress
	res.Status.Message = fmt.Sprintf("%s (%d of %d)", step, done, total)
	res.Status.Progress = &Progress{Step: step, Done: done, Total: total}
	res.Status.LastTransitionTime = now.UTC().Format(time.RFC3339)
	if p.prev != nil {
		res.Observed, res.Counters = p.prev.Observed, p.prev.Counters
		if p.prev.Status.State == StateReconciling {
			res.Status.LastTransitionTime = p.prev.Status.LastTransitionTime
		}
	}
	c.result = res
	c.mu.Unlock()
	p.r.Publish()
}

// verify observes again: a provider whose plan is not empty now broke
// its contract or something fights it.
func (p *pass) verify() bool {
	var after []providers.Change
	if len(p.plan) > 0 {
		if err := p.observe(); err != nil {
			return p.finish(StateFailed, reasonFor(err, ReasonObserveFailed), err.Error(), true)
		}
		var err error
		if after, err = p.planOnce(); err != nil {
			return p.finish(StateFailed, reasonFor(err, ReasonProviderBug), "verify: plan: "+err.Error(), true)
		}
	}
	p.report()
	if p.c.info.ReadOnly {
		return true
	}
	var left []providers.Change
	for _, c := range after {
		if !(c.Once && p.interrupted[onceKey(c)]) {
			left = append(left, c)
		}
	}
	if len(left) > 0 {
		return p.finish(StateFailed, ReasonNotConverged,
			fmt.Sprintf("%d change(s) still pending after apply, first: %s", len(left), left[0]), true)
	}
	return true
}

// record sets the final state of a reconcile that ran to its end.
func (p *pass) record() {
	if len(p.skipped) > 0 {
		keys := make([]string, len(p.skipped))
		for i, c := range p.skipped {
			keys[i] = onceKey(c)
		}
		p.finish(StateFailed, ReasonInterrupted, fmt.Sprintf("%d change(s) were in flight when the agent stopped and are not run again: %s",
			len(keys), strings.Join(keys, ", ")), false)
		return
	}
	if p.invalidMsg != "" {
		p.finish(StateFailed, ReasonInvalid, p.invalidMsg, false)
		return
	}
	if len(p.forbidden) > 0 {
		p.finish(StateFailed, ReasonForbidden, fmt.Sprintf("%d twin value(s) outside the cloud scope are not applied; the rest is", len(p.forbidden)), false)
		return
	}
	reason, msg := ReasonUnchanged, ""
	if p.applied > 0 {
		reason, msg = ReasonApplied, fmt.Sprintf("%d change(s) applied", p.applied)
	}
	if len(p.merged.Conflicts) > 0 {
		reason = ReasonConflict
		msg = strings.TrimPrefix(msg+"; ", "; ") + fmt.Sprintf("%d desired value(s) overridden: %s", len(p.merged.Conflicts), p.merged.Conflicts[0])
	}
	p.finish(StateReady, reason, msg, false)
}

// finish sets the status, keeps lastTransitionTime unless the state
// changed, and records the result (outside dry runs). It returns false,
// so that a step can end the reconcile with `return p.finish(…)`.
func (p *pass) finish(st, reason, msg string, retry bool) bool {
	res := p.res
	res.Errors = append(res.Errors, p.forbidden...)
	p.forbidden = nil
	res.Status.State, res.Status.Reason, res.Status.Message = st, reason, msg
	res.Retry = retry
	res.Status.LastTransitionTime = p.r.opts.Now().UTC().Format(time.RFC3339)
	if p.prev != nil && p.prev.Status.State == st {
		res.Status.LastTransitionTime = p.prev.Status.LastTransitionTime
	} else if p.prev == nil && p.restored != nil && p.restored.State == st && p.restored.LastTransitionTime != "" {
		res.Status.LastTransitionTime = p.restored.LastTransitionTime
	}
	sort.SliceStable(res.Errors, func(i, j int) bool { return res.Errors[i].Pointer < res.Errors[j].Pointer })
	if !p.dryRun {
		p.r.record(p.c, res, p.prev)
	}
	return false
}

// mergeEntry remembers the merge of the very same inputs.
type mergeEntry struct {
	key    string
	merged *Merged
	raw    []byte
}

// merge merges a section's inputs, reusing the last merge when neither
// the inputs nor any policy file changed (positions for errors come from
// the files, so the whole policy hash is part of the key).
func (r *Reconciler) merge(c *controller, ins []Input, probs []ErrorItem) (*Merged, []byte, error) {
	r.mu.Lock()
	key := ""
	if r.pol != nil {
		key = r.pol.Hash
	}
	r.mu.Unlock()
	key += "\x00" + hashInputs(ins, probs)
	c.mu.Lock()
	m := c.merged
	c.mu.Unlock()
	if m != nil && m.key == key {
		return m.merged, m.raw, nil
	}
	merged, err := Merge(ins)
	if err != nil {
		return nil, nil, err
	}
	raw := merged.JSON()
	c.mu.Lock()
	c.merged = &mergeEntry{key: key, merged: merged, raw: raw}
	c.mu.Unlock()
	return merged, raw, nil
}

// validEntry remembers a section content that passed validation.
type validEntry struct {
	raw  []byte
	spec providers.Spec
}

func reasonFor(err error, def string) string {
	var bug *bugError
	if errors.As(err, &bug) {
		return ReasonProviderBug
	}
	// An error that names its own reason (an external provider's process
	// that crashed, hung or broke the protocol) reports it.
	var rs interface{ StatusReason() string }
	if errors.As(err, &rs) && rs.StatusReason() != "" {
		return rs.StatusReason()
	}
	return def
}

func sourceKind(m *Merged) string {
	local, twin := false, false
	for _, in := range m.Origin {
		if in.Layer == LayerTwin {
			twin = true
		} else {
			local = true
		}
	}
	switch {
	case local && twin:
		return "twin+local"
	case twin:
		return "twin"
	case local:
		return "local"
	}
	return ""
}

// unreadyDependency returns the first dependency that is desired but not
// Ready for its current desired input.
func (r *Reconciler) unreadyDependency(info providers.Info) string {
	for _, d := range info.DependsOn {
		dc := r.ctrls[d]
		if dc == nil {
			continue // no provider owns it here: never desired
		}
		ins, probs := r.inputs(d)
		if len(ins) == 0 && len(probs) == 0 && !dc.info.ReadOnly {
			continue // nothing desires it
		}
		res := dc.lastResult()
		if res == nil || res.Status.State != StateReady || res.inputHash != hashInputs(ins, probs) {
			return d
		}
	}
	return ""
}

// autoMinimalItems is the number of items above which a collection that
// names no reportingMode reports minimally.
const autoMinimalItems = 50

// report renders the observed state for the twin (observedJSON) and
// takes the provider's __summary counters from it (SummaryCounter).
func (p *pass) report() {
	p.res.Observed = p.r.observedJSON(p.c, p.meta.ReportingMode, itemCount(p.merged.Value), p.observed, p.plan)
	p.res.observedValue = p.observed
	p.res.Counters = nil
	if sc, ok := p.c.p.(providers.SummaryCounter); ok && p.observed != nil {
		err := p.c.guard(p.ctx, "summary counters", func(context.Context) error {
			p.res.Counters = sc.SummaryCounters(p.observed)
			return nil
		})
		if err != nil {
			p.log.Warn("summary counters", "err", err)
		}
	}
}

// itemCount counts the items of a collection section.
func itemCount(v map[string]json.RawMessage) int {
	n := 0
	for k := range v {
		if !providers.ReservedKeys[k] && !strings.HasPrefix(k, "__") {
			n++
		}
	}
	return n
}

// detailedLimit is the size of observed state above which a section that
// names no reportingMode reports minimally, to stay in the twin's budget.
const detailedLimit = 8 << 10

// observedJSON renders the observed state by the section's reporting mode:
// detailed (everything), minimal (for collections: the item count and the
// items this reconcile changed), none (nothing).
func (r *Reconciler) observedJSON(e *controller, mode string, items int, observed providers.Observed, changed []providers.Change) json.RawMessage {
	if mode == "none" {
		return nil
	}
	// A large collection with nothing changed reports its count alone;
	// observed keys are the desired item names, so no marshaling is needed.
	if e.info.Kind == providers.Collection && len(changed) == 0 &&
		(mode == "minimal" || mode == "" && items > autoMinimalItems) {
		return json.RawMessage(`{"__count":` + strconv.Itoa(items) + `}`)
	}
	b, err := json.Marshal(observed)
	if err != nil {
		return nil
	}
	if len(b) == 0 || b[0] != '{' {
		b, _ = json.Marshal(map[string]json.RawMessage{"observed": b})
	}
	if mode == "" && len(b) <= detailedLimit && items <= autoMinimalItems || mode == "detailed" || e.info.Kind != providers.Collection {
		return b
	}
	var obj map[string]json.RawMessage
	if json.Unmarshal(b, &obj) != nil {
		return b
	}
	touched := map[string]bool{}
	for _, c := range changed {
		touched[c.Item] = true
	}
	min := map[string]json.RawMessage{}
	n := 0
	for k, v := range obj {
		if providers.ReservedKeys[k] || strings.HasPrefix(k, "__") {
			continue
		}
		n++
		if touched[k] {
			min[k] = v
		}
	}
	min["__count"] = json.RawMessage(strconv.Itoa(n))
	b, _ = json.Marshal(min)
	return b
}

// record keeps a section's latest result.
func (r *Reconciler) record(c *controller, res *SectionResult, prev *SectionResult) {
	c.mu.Lock()
	if res.Absent {
		c.result, c.failures = nil, 0
		c.mu.Unlock()
		return
	}
	c.result = res
	if res.Retry {
		c.failures++
	} else {
		c.failures = 0
	}
	c.mu.Unlock()
	lvl := slog.LevelDebug
	if prev == nil || prev.Status.State != res.Status.State || prev.Status.Reason != res.Status.Reason {
		lvl = slog.LevelInfo
	}
	r.log.Log(context.Background(), lvl, "section", "section", res.ID, "state", res.Status.State,
		"reason", res.Status.Reason, "message", res.Status.Message, "changes", res.Status.Changes)
}

// saveSection changes a section's state and saves the state atomically.
func (r *Reconciler) saveSection(id string, f func(sec *state.Section)) error {
	return r.persist(func(st *state.State) { f(st.Section(id)) })
}

func (r *Reconciler) saveState() error { return r.persist(nil) }

// persist applies f to the state and writes it atomically. The snapshot
// is taken under stMu, the write (and its fsyncs) happens outside it, in
// snapshot order: a snapshot older than one already written is not
// written, since the newer one holds its changes. When persist returns
// nil, the change is on disk.
func (r *Reconciler) persist(f func(st *state.State)) error {
	r.stMu.Lock()
	if f != nil {
		f(r.st)
	}
	data, err := state.Encode(r.st)
	r.saveSeq++
	seq := r.saveSeq
	r.stMu.Unlock()
	if err != nil {
		return err
	}
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	if seq <= r.written {
		return nil
	}
	if err := r.store.Write(data); err != nil {
		return err
	}
	r.written = seq
	return nil
}
