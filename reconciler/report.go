package reconciler

import (
	"bytes"
	"context"
	"encoding/json"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/twinlet/twinlet/internal/version"
	"github.com/twinlet/twinlet/state"
)

// Report is the outcome of one full pass.
type Report struct {
	// Sections in dependency order.
	Sections []*SectionResult
	Summary  Summary
	// Document is the reported document (DESIGN.md shape).
	Document json.RawMessage
	// PolicyProblems are problems of whole policy files.
	PolicyProblems []string
}

// AllReady reports whether every section is Ready and no policy file
// has a problem.
func (rep *Report) AllReady() bool {
	return rep.Summary.State == StateReady
}

// Pending counts the changes of a dry run.
func (rep *Report) Pending() int {
	n := 0
	for _, s := range rep.Sections {
		n += len(s.Plan)
	}
	return n
}

// ReconcileAll reconciles every section once, each after the sections it
// depends on and up to Options.Workers at a time, and returns the report
// (sections in dependency order). With dryRun nothing is changed (`twinlet plan`,
// getPlan), not even what the loop remembers of the inputs it saw.
func (r *Reconciler) ReconcileAll(ctx context.Context, dryRun bool) *Report {
	if !dryRun {
		r.changedSections() // remember the inputs this pass uses
	}
	// Side by side on the worker pool, as Run does: a section starts once
	// the sections it depends on have ended (passDeps), so a slow or hung
	// one holds back only its dependents.
	done := make(map[string]chan struct{}, len(r.order))
	for _, id := range r.order {
		done[id] = make(chan struct{})
	}
	all := make([]*SectionResult, len(r.order))
	slots := make(chan struct{}, r.opts.Workers)
	var wg sync.WaitGroup
	for i, id := range r.order {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer close(done[id])
			for _, d := range r.passDeps(id) {
				if ch := done[d]; ch != nil {
					<-ch
				}
			}
			slots <- struct{}{}
			defer func() { <-slots }()
			all[i] = r.ReconcileSection(ctx, id, dryRun)
		}()
	}
	wg.Wait()
	var results []*SectionResult
	for _, res := range all {
		if !res.Absent {
			results = append(results, res)
		}
	}
	if dryRun {
		return r.buildReport(results, true, false)
	}
	return r.Publish()
}

// passDeps are the sections that one pass over every section (ReconcileAll)
// runs before id: those it depends on and those it reads
// (Info.ReadsDesired); for a read-only section every section that
// changes the system, so that it inventories what the pass left (the new
// hostname, not the old); and for a reboot policy every other section, so
// that it sees every reboot the pass latches.
func (r *Reconciler) passDeps(id string) []string {
	info := r.ctrls[id].info
	if !info.RebootPolicy && !info.ReadOnly {
		return before(info)
	}
	ds := before(info)
	for _, other := range r.order {
		oi := r.ctrls[other].info
		if other == id || oi.RebootPolicy || (info.ReadOnly && oi.ReadOnly) || slices.Contains(ds, other) {
			continue
		}
		if !r.reaches(other, id, map[string]bool{}) {
			ds = append(ds, other)
		}
	}
	return ds
}

// reaches tells whether section from depends on (or reads) to, directly
// or through others: such a section cannot also be waited for by to.
func (r *Reconciler) reaches(from, to string, seen map[string]bool) bool {
	if seen[from] {
		return false
	}
	seen[from] = true
	c := r.ctrls[from]
	if c == nil {
		return false
	}
	for _, d := range before(c.info) {
		if d == to || r.reaches(d, to, seen) {
			return true
		}
	}
	return false
}

// Publish builds the reported document from the latest result of every
// section and, when it changed, hands it to OnReport, then writes it to
// <state-dir>/reported.json; then it saves the state when a reconcile
// left changes unsaved. Publishes are serialized.
func (r *Reconciler) Publish() *Report {
	r.pubMu.Lock()
	defer r.pubMu.Unlock()
	var results []*SectionResult
	stale := false
	for _, id := range r.order {
		c := r.ctrls[id]
		if res := c.lastResult(); res != nil {
			results = append(results, res)
		}
		c.mu.Lock()
		stale = stale || c.doneGen < c.changedGen
		c.mu.Unlock()
	}
	rep := r.buildReport(results, false, stale)
	r.repMu.Lock()
	changed := !bytes.Equal(rep.Document, r.reported)
	if changed {
		r.reported = rep.Document
	}
	r.repMu.Unlock()
	if changed {
		// The report goes out first: the local copies (reported.json for
		// `twinlet status`, the state's last report) are derived from it,
		// and a crash before they are written only means the same report
		// is made again after the restart. Writing them first put four
		// fsyncs between a desired change and its report.
		if r.opts.OnReport != nil {
			r.opts.OnReport(rep.Document)
		}
		if err := r.store.WriteReported(indent(rep.Document)); err != nil {
			r.log.Error("write reported", "err", err)
		}
		r.unsaved.Store(false) // the state written next holds it
		if err := r.persist(func(st *state.State) { st.Reported = rep.Document }); err != nil {
			r.log.Error("save state", "err", err)
		}
	} else if r.unsaved.Swap(false) {
		if err := r.saveState(); err != nil {
			r.log.Error("save state", "err", err)
		}
	}
	return rep
}

func indent(b []byte) []byte {
	var out bytes.Buffer
	if json.Indent(&out, b, "", "  ") != nil {
		return b
	}
	out.WriteByte('\n')
	return out.Bytes()
}

// buildReport aggregates section results into the reported document. The
// summary's lastReconcile moves only when something else in the document
// changed, so that an idle agent writes nothing. stale says that a
// section's input changed since its last reconcile (a twin patch not
// taken up yet): the summary is then Reconciling, not Ready, though it
// names the new desiredVersion.
func (r *Reconciler) buildReport(results []*SectionResult, dryRun, stale bool) *Report {
	by := r.RebootRequiredBy()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.repMu.Lock()
	defer r.repMu.Unlock()
	rep := &Report{Sections: results}
	sum := Summary{State: StateReady, DesiredVersion: r.twinVersion, AgentVersion: version.Version}
	if r.pol != nil {
		sum.PolicyHash = r.pol.Hash
		for _, p := range r.pol.Problems {
			rep.PolicyProblems = append(rep.PolicyProblems, p.String())
		}
	}
	if r.twinErr != "" {
		rep.PolicyProblems = append(rep.PolicyProblems, "twin desired: "+r.twinErr)
	}
	sum.PolicyErrors = truncList(rep.PolicyProblems, 10)
	var failed []string
	doc := map[string]any{}
	for _, res := range results {
		switch res.Status.State {
		case StateReady:
			sum.Ready++
		case StateFailed:
			sum.Failed++
			failed = append(failed, res.ID)
		}
		for k, v := range res.Counters {
			if sum.Counters == nil {
				sum.Counters = map[string]int{}
			}
			sum.Counters[k] += v
		}
		sec := map[string]json.RawMessage{}
		var obj map[string]json.RawMessage
		if len(res.Observed) > 0 && json.Unmarshal(res.Observed, &obj) == nil {
			for k, v := range obj {
				sec[k] = v
			}
		}
		sec["__status"], _ = json.Marshal(res.Status)
		if len(res.Errors) > 0 {
			sec["__errors"], _ = json.Marshal(res.Errors)
		} else {
			sec["__errors"] = json.RawMessage("null")
		}
		doc[res.ID] = sec
	}
	sum.RebootRequired = len(by) > 0
	sum.RebootRequiredBy = strings.Join(by, ",")
	sort.Strings(failed)
	sum.FailedSections = strings.Join(failed, ",")
	switch {
	case sum.Failed > 0 || len(rep.PolicyProblems) > 0:
		sum.State = StateFailed
	case sum.Ready < len(results) || stale:
		sum.State = StateReconciling
	}
	// lastReconcile: keep the previous value unless the document changed.
	sum.LastReconcile = r.lastChange
	doc["__summary"] = sum
	b, _ := json.Marshal(doc)
	if !dryRun && !bytes.Equal(stripSummaryTime(b), stripSummaryTime(r.reported)) {
		r.lastChange = r.opts.Now().UTC().Format("2006-01-02T15:04:05Z07:00")
		sum.LastReconcile = r.lastChange
		doc["__summary"] = sum
		b, _ = json.Marshal(doc)
	}
	rep.Summary = sum
	rep.Document = b
	return rep
}

// stripSummaryTime removes __summary.lastReconcile for comparisons.
func stripSummaryTime(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	var doc map[string]json.RawMessage
	if json.Unmarshal(b, &doc) != nil {
		return b
	}
	var s map[string]json.RawMessage
	if json.Unmarshal(doc["__summary"], &s) == nil {
		delete(s, "lastReconcile")
		doc["__summary"], _ = json.Marshal(s)
	}
	out, _ := json.Marshal(doc)
	return out
}

func truncList(in []string, n int) []string {
	if len(in) <= n {
		return in
	}
	out := append([]string(nil), in[:n]...)
	return append(out, "…")
}

// Document returns the last published reported document.
func (r *Reconciler) Document() []byte {
	r.repMu.Lock()
	defer r.repMu.Unlock()
	return r.reported
}
