package reconciler

import (
	"context"
	"encoding/json"
	"testing"
)

// A twin patch not taken up yet leaves the summary Reconciling: a publish
// between SetTwinDesired and the reconcile of the sections it changed (a
// section ending, progress of another) must not read Ready for the new
// desiredVersion, which is what an operator waits for.
func TestSummaryNotReadyBeforeTheSectionsTookUpThePatch(t *testing.T) {
	f := newFixture(t)
	r := f.new(t)
	ctx := context.Background()
	twin := func(v string, ver int64) {
		t.Helper()
		if _, err := r.SetTwinDesired(map[string]json.RawMessage{"notes": json.RawMessage(`{"a": "` + v + `"}`)}, ver); err != nil {
			t.Fatal(err)
		}
	}
	twin("one", 1)
	if rep := r.ReconcileAll(ctx, false); rep.Summary.State != StateReady || rep.Summary.DesiredVersion != 1 {
		t.Fatalf("after the first pass: %+v", rep.Summary)
	}
	twin("two", 2)
	if sum := r.Publish().Summary; sum.State != StateReconciling || sum.DesiredVersion != 2 {
		t.Fatalf("published before notes took up version 2: %+v", sum)
	}
	// Another section finishing does not make it Ready either.
	r.ReconcileSection(ctx, "later", false)
	if sum := r.Publish().Summary; sum.State != StateReconciling {
		t.Fatalf("after another section: %+v", sum)
	}
	r.ReconcileSection(ctx, "notes", false)
	if sum := r.Publish().Summary; sum.State != StateReady || sum.DesiredVersion != 2 || f.read(t, "a") != "two" {
		t.Fatalf("after notes took up version 2: %+v, a=%q", sum, f.read(t, "a"))
	}
	// A patch that changes no section's input changes nothing.
	twin("two", 3)
	if sum := r.Publish().Summary; sum.State != StateReady || sum.DesiredVersion != 3 {
		t.Fatalf("a patch that changes no input: %+v", sum)
	}
}

// Before every section has been reconciled once since the start, the
// summary is Reconciling: a section nothing has reported yet is not Ready.
func TestSummaryNotReadyBeforeEverySectionRan(t *testing.T) {
	f := newFixture(t)
	r := f.new(t)
	ctx := context.Background()
	if sum := r.Publish().Summary; sum.State != StateReconciling {
		t.Fatalf("before any reconcile: %+v", sum)
	}
	r.ReconcileSection(ctx, "notes", false)
	if sum := r.Publish().Summary; sum.State != StateReconciling {
		t.Fatalf("with later not reconciled yet: %+v", sum)
	}
	r.ReconcileSection(ctx, "later", false)
	if sum := r.Publish().Summary; sum.State != StateReady {
		t.Fatalf("after both: %+v", sum)
	}
}
