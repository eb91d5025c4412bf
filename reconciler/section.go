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

// ReconcileSection runs the steps of one reconcile of one section: merge
// layers → validate → decode → observe → plan → apply each change →
// observe again to verify → record status. With dryRun it stops after
// plan and changes nothing, neither the system nor the state.
func (r *Reconciler) ReconcileSection(ctx context.Context, id string, dryRun bool) *SectionResult {
	start := time.Now()
	res := r.reconcileSection(ctx, id, dryRun)
	if !dryRun && r.opts.OnSection != nil && !res.Absent {
		r.opts.OnSection(res, time.Since(start))
	}
	return res
}

func (r *Reconciler) reconcileSection(ctx context.Context, id string, dryRun bool) *SectionResult {
	e := r.provs[id]
	r.mu.Lock()
	r.seq++
	rid := r.seq
	ins, probs := r.inputsLocked(id)
	twinVersion := r.twinVersion
	prev := r.results[id]
	r.mu.Unlock()

	log := r.log.With("section", id, "reconcile", rid)
	res := &SectionResult{ID: id}
	res.Status.DesiredVersion = twinVersion

	if len(ins) == 0 && len(probs) == 0 && !e.info.ReadOnly {
		res.Absent = true
		if !dryRun {
			r.record(res, prev)
		}
		return res
	}

	merged, raw, err := r.merge(id, ins, probs)
	if err != nil {
		probs = append(probs, ErrorItem{Message: err.Error()})
		merged = &Merged{Value: map[string]json.RawMessage{}, Origin: map[string]*Input{}}
		raw = merged.JSON()
	}
	var meta sectionMeta
	if m, ok := merged.Value["__meta"]; ok {
		_ = json.Unmarshal(m, &meta.Meta)
	}
	if m, ok := merged.Value["reportingMode"]; ok {
		_ = json.Unmarshal(m, &meta.ReportingMode)
	}
	res.Status.DeploymentID = meta.Meta.DeploymentID
	res.Status.InterfaceVersion = meta.Meta.InterfaceVersion
	res.Status.Source = sourceKind(merged)
	for _, c := range merged.Conflicts {
		res.Status.Conflicts = append(res.Status.Conflicts, c.String())
	}

	// Validate: schema, then the provider's own checks. A section that
	// validated before with the very same content is not validated again:
	// validation is a function of the content, and the no-op resync of a
	// large collection must stay close to the cost of observing it.
	r.mu.Lock()
	sec := r.st.Section(id)
	managed := sec.ManagedSet()
	cached := r.valid[id]
	r.mu.Unlock()
	env := r.env(id, managed, log)
	var spec providers.Spec
	if len(probs) == 0 && cached != nil && bytes.Equal(cached.raw, raw) {
		spec = cached.spec
	} else {
		if len(probs) == 0 && schemas.Has(id) {
			sp, err := schemas.Validate(id, raw)
			if err != nil {
				probs = append(probs, ErrorItem{Message: err.Error()})
			}
			for _, p := range sp {
				at, _ := merged.Locate(p.Pointer)
				probs = append(probs, ErrorItem{Pointer: p.Pointer, Message: p.Message, At: at})
			}
		}
		if len(probs) == 0 {
			err := r.guard(ctx, "decode", func(context.Context) error {
				var err error
				spec, err = e.p.Decode(env, stripReserved(merged.Value))
				return err
			})
			var inv *providers.InvalidError
			switch {
			case errors.As(err, &inv):
				for _, fe := range inv.Errors {
					at, _ := merged.Locate(fe.Pointer)
					probs = append(probs, ErrorItem{Pointer: fe.Pointer, Message: fe.Message, At: at})
				}
			case err != nil:
				return r.finish(res, prev, dryRun, StateFailed, ReasonProviderBug, err.Error(), true)
			}
		}
		r.mu.Lock()
		if len(probs) == 0 {
			r.valid[id] = &validEntry{raw: raw, spec: spec}
		} else {
			delete(r.valid, id)
		}
		r.mu.Unlock()
	}
	if len(probs) > 0 {
		res.Errors = probs
		// The last good desired stays in force.
		spec = nil
		if sec.LastGood != nil {
			var lg map[string]json.RawMessage
			if json.Unmarshal(sec.LastGood, &lg) == nil {
				_ = r.guard(ctx, "decode", func(context.Context) error {
					var err error
					spec, err = e.p.Decode(env, stripReserved(lg))
					return err
				})
			}
		}
	} else if !dryRun {
		r.mu.Lock()
		sec.LastGood = raw
		sec.Sources = merged.Sources()
		r.mu.Unlock()
	}
	invalidMsg := ""
	if len(probs) > 0 {
		invalidMsg = fmt.Sprintf("%d invalid value(s); ", len(probs))
		if spec != nil {
			invalidMsg += "the last good desired stays in force"
		} else {
			invalidMsg += "nothing applied"
		}
		if spec == nil {
			return r.finish(res, prev, dryRun, StateFailed, ReasonInvalid, invalidMsg, false)
		}
	}

	// Dependencies must be Ready first.
	if !dryRun {
		if dep := r.unreadyDependency(e.info); dep != "" {
			return r.finish(res, prev, dryRun, StateWaiting, ReasonDependencyNotReady, "waiting for "+dep, false)
		}
	}

	var observed providers.Observed
	if err := r.guard(ctx, "observe", func(ctx context.Context) error {
		var err error
		observed, err = e.p.Observe(ctx, env, spec)
		return err
	}); err != nil {
		return r.finish(res, prev, dryRun, StateFailed, reasonFor(err, ReasonObserveFailed), err.Error(), true)
	}
	var plan []providers.Change
	if err := r.guard(ctx, "plan", func(context.Context) error {
		var err error
		plan, err = e.p.Plan(spec, observed)
		return err
	}); err != nil {
		var inv *providers.InvalidError
		if errors.As(err, &inv) {
			for _, fe := range inv.Errors {
				at, _ := merged.Locate(fe.Pointer)
				res.Errors = append(res.Errors, ErrorItem{Pointer: fe.Pointer, Message: fe.Message, At: at})
			}
			return r.finish(res, prev, dryRun, StateFailed, ReasonInvalid, err.Error(), false)
		}
		return r.finish(res, prev, dryRun, StateFailed, ReasonProviderBug, "plan: "+err.Error(), true)
	}
	res.Plan = plan
	if e.info.ReadOnly {
		res.Plan = nil
	}
	if dryRun {
		res.Observed = r.observedJSON(e, meta.ReportingMode, itemCount(merged.Value), observed, plan)
		if len(res.Plan) > 0 {
			return r.finish(res, prev, dryRun, StateReconciling, ReasonPending, fmt.Sprintf("%d change(s) pending", len(res.Plan)), false)
		}
		if invalidMsg != "" {
			return r.finish(res, prev, dryRun, StateFailed, ReasonInvalid, invalidMsg, false)
		}
		return r.finish(res, prev, dryRun, StateReady, ReasonUnchanged, "", false)
	}

	// Write ahead: what we are about to create is recorded as ours
	// before it exists, so a crash never leaves an unrecorded creation.
	wrote := false
	for _, c := range res.Plan {
		if c.Action == providers.Create && c.Key != "" && !managed[c.Key] {
			managed[c.Key] = true
			wrote = true
		}
	}
	if wrote {
		r.setManaged(sec, managed)
		if err := r.saveState(); err != nil {
			return r.finish(res, prev, dryRun, StateFailed, ReasonApplyFailed, err.Error(), true)
		}
	}
	applied := 0
	var applyErr error
	for _, c := range res.Plan {
		c := c
		err := r.guard(ctx, "apply", func(ctx context.Context) error { return e.p.Apply(ctx, env, c) })
		if err != nil {
			applyErr = fmt.Errorf("apply %s/%s: %w", id, c.Item, err)
			break
		}
		applied++
		log.Info("applied", "change", c.String())
		if c.RebootRequired {
			res.RebootRequired = true
		}
		if c.Action == providers.Delete && c.Key != "" {
			delete(managed, c.Key)
		}
	}
	r.setManaged(sec, managed)
	res.Status.Changes = applied
	if err := r.saveState(); err != nil && applyErr == nil {
		applyErr = err
	}
	if applyErr != nil {
		var inv *providers.InvalidError
		if errors.As(applyErr, &inv) {
			return r.finish(res, prev, dryRun, StateFailed, ReasonInvalid, applyErr.Error(), false)
		}
		r.reobserve(ctx, e, env, spec, res, meta.ReportingMode, itemCount(merged.Value))
		return r.finish(res, prev, dryRun, StateFailed, reasonFor(applyErr, ReasonApplyFailed), applyErr.Error(), true)
	}

	// Verify: observe again; a provider whose plan is not empty now
	// broke its contract or something fights it.
	var after []providers.Change
	if len(res.Plan) > 0 {
		if err := r.guard(ctx, "observe", func(ctx context.Context) error {
			var err error
			observed, err = e.p.Observe(ctx, env, spec)
			return err
		}); err != nil {
			return r.finish(res, prev, dryRun, StateFailed, reasonFor(err, ReasonObserveFailed), err.Error(), true)
		}
		_ = r.guard(ctx, "plan", func(context.Context) error {
			var err error
			after, err = e.p.Plan(spec, observed)
			return err
		})
	}
	res.Observed = r.observedJSON(e, meta.ReportingMode, itemCount(merged.Value), observed, res.Plan)
	if len(after) > 0 && !e.info.ReadOnly {
		return r.finish(res, prev, dryRun, StateFailed, ReasonNotConverged,
			fmt.Sprintf("%d change(s) still pending after apply, first: %s", len(after), after[0]), true)
	}
	if invalidMsg != "" {
		return r.finish(res, prev, dryRun, StateFailed, ReasonInvalid, invalidMsg, false)
	}
	reason, msg := ReasonUnchanged, ""
	if applied > 0 {
		reason, msg = ReasonApplied, fmt.Sprintf("%d change(s) applied", applied)
	}
	if len(merged.Conflicts) > 0 {
		reason = ReasonConflict
		msg = strings.TrimPrefix(msg+"; ", "; ") + fmt.Sprintf("%d desired value(s) overridden: %s", len(merged.Conflicts), merged.Conflicts[0])
	}
	return r.finish(res, prev, dryRun, StateReady, reason, msg, false)
}

func (r *Reconciler) reobserve(ctx context.Context, e *entry, env *providers.Env, spec providers.Spec, res *SectionResult, mode string, items int) {
	var observed providers.Observed
	if r.guard(ctx, "observe", func(ctx context.Context) error {
		var err error
		observed, err = e.p.Observe(ctx, env, spec)
		return err
	}) == nil {
		res.Observed = r.observedJSON(e, mode, items, observed, res.Plan)
	}
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
func (r *Reconciler) merge(id string, ins []Input, probs []ErrorItem) (*Merged, []byte, error) {
	r.mu.Lock()
	key := r.pol.Hash + "\x00" + hashInputs(ins, probs)
	c := r.merges[id]
	r.mu.Unlock()
	if c != nil && c.key == key {
		return c.merged, c.raw, nil
	}
	m, err := Merge(ins)
	if err != nil {
		return nil, nil, err
	}
	raw := m.JSON()
	r.mu.Lock()
	r.merges[id] = &mergeEntry{key: key, merged: m, raw: raw}
	r.mu.Unlock()
	return m, raw, nil
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
// Ready.
func (r *Reconciler) unreadyDependency(info providers.Info) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, d := range info.DependsOn {
		if dr := r.results[d]; dr != nil && !dr.Absent && dr.Status.State != StateReady {
			return d
		}
	}
	return ""
}

// autoMinimalItems is the number of items above which a collection that
// names no reportingMode reports minimally.
const autoMinimalItems = 50

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
func (r *Reconciler) observedJSON(e *entry, mode string, items int, observed providers.Observed, changed []providers.Change) json.RawMessage {
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

// finish sets the status, keeps lastTransitionTime unless the state
// changed, and records the result (outside dry runs).
func (r *Reconciler) finish(res *SectionResult, prev *SectionResult, dryRun bool, st, reason, msg string, retry bool) *SectionResult {
	res.Status.State, res.Status.Reason, res.Status.Message = st, reason, msg
	res.Retry = retry
	res.Status.LastTransitionTime = r.opts.Now().UTC().Format(time.RFC3339)
	if prev != nil && prev.Status.State == st {
		res.Status.LastTransitionTime = prev.Status.LastTransitionTime
	}
	sort.SliceStable(res.Errors, func(i, j int) bool { return res.Errors[i].Pointer < res.Errors[j].Pointer })
	if !dryRun {
		r.record(res, prev)
	}
	return res
}

func (r *Reconciler) record(res *SectionResult, prev *SectionResult) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if res.Absent {
		delete(r.results, res.ID)
		delete(r.failures, res.ID)
		return
	}
	r.results[res.ID] = res
	if res.Retry {
		r.failures[res.ID]++
	} else {
		delete(r.failures, res.ID)
	}
	lvl := slog.LevelDebug
	if prev == nil || prev.Status.State != res.Status.State || prev.Status.Reason != res.Status.Reason {
		lvl = slog.LevelInfo
	}
	r.log.Log(context.Background(), lvl, "section", "section", res.ID, "state", res.Status.State,
		"reason", res.Status.Reason, "message", res.Status.Message, "changes", res.Status.Changes)
}

func (r *Reconciler) setManaged(sec *state.Section, m map[string]bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	sec.SetManaged(m)
}

func (r *Reconciler) saveState() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.store.Save(r.st)
}
