package reconciler

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"

	"github.com/twinlet/twinlet/internal/testutil"
	"github.com/twinlet/twinlet/providers"
)

// peeker is a note provider that depends on notes and on a section no
// provider owns, and records what Env.DependencyObserved shows it.
type peeker struct {
	note
	mu   *sync.Mutex
	seen map[string]string
}

// WatchPaths watches nothing: only the reconciler's re-enqueue can bring
// peek back after notes changed.
func (peeker) WatchPaths(*providers.Env, providers.Spec) []string { return nil }

func (p peeker) Observe(ctx context.Context, env *providers.Env, spec providers.Spec) (providers.Observed, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, id := range []string{"notes", "unowned", "other"} {
		if env.DependencyObserved == nil {
			p.seen[id] = "<no hook>"
			continue
		}
		b, ok := env.DependencyObserved(id)
		if !ok {
			b = []byte("<none>")
		}
		p.seen[id] = string(b)
	}
	return p.note.Observe(ctx, env, spec)
}

func TestDependencyOnUnownedSectionAndDependencyObserved(t *testing.T) {
	f := newFixture(t)
	f.policy(t, "p.yaml", `apiVersion: twinlet.dev/v1
kind: DevicePolicy
metadata: { name: p }
spec:
  notes: { reportingMode: none, a: one }
  peek: { b: two }
  other: { c: three }
`)
	pk := peeker{mu: &sync.Mutex{}, seen: map[string]string{}}
	r := f.new(t, func(o *Options) {
		o.Providers = []providers.Info{
			{ID: "notes", Kind: providers.Collection, Schema: json.RawMessage(`{"type":"object"}`), New: func() providers.Provider { return note{} }},
			{ID: "other", Kind: providers.Collection, Schema: noteSchema, New: func() providers.Provider { return note{} }},
			// "unowned" stands for a provider left out of this binary
			// (packages, before it is merged): it must not block.
			{ID: "peek", Kind: providers.Collection, Schema: noteSchema, DependsOn: []string{"notes", "unowned"}, New: func() providers.Provider { return pk }},
		}
	})
	if got := strings.Join(r.Sections(), ","); got != "notes,other,peek" {
		t.Fatalf("order %s", got)
	}
	rep := r.ReconcileAll(context.Background(), false)
	if s := section(rep, "peek"); s.Status.State != StateReady {
		t.Fatalf("peek: %+v", s.Status)
	}
	pk.mu.Lock()
	defer pk.mu.Unlock()
	// The whole observation, though notes reports nothing (mode none).
	if pk.seen["notes"] != `{"a":"one"}` {
		t.Errorf("notes as seen by peek: %s", pk.seen["notes"])
	}
	if pk.seen["unowned"] != "<none>" || pk.seen["other"] != "<none>" {
		t.Errorf("sections peek does not depend on are visible: %v", pk.seen)
	}
}

// When a dependency changes something, the sections that depend on it
// are reconciled again at once, though their own input did not change:
// services restarts a unit whose files item was rewritten.
func TestDependencyChangeReenqueuesDependents(t *testing.T) {
	f := newFixture(t)
	doc := "apiVersion: twinlet.dev/v1\nkind: DevicePolicy\nmetadata: { name: p }\nspec:\n  notes: { a: %s }\n"
	f.policy(t, "p.yaml", strings.Replace(doc, "%s", "one", 1))
	f.policy(t, "q.yaml", "apiVersion: twinlet.dev/v1\nkind: DevicePolicy\nmetadata: { name: q }\nspec:\n  peek: { b: two }\n")
	pk := peeker{mu: &sync.Mutex{}, seen: map[string]string{}}
	r := f.new(t, func(o *Options) {
		o.Providers = []providers.Info{
			{ID: "notes", Kind: providers.Collection, Schema: noteSchema, New: func() providers.Provider { return note{} }},
			{ID: "peek", Kind: providers.Collection, Schema: noteSchema, DependsOn: []string{"notes"}, New: func() providers.Provider { return pk }},
		}
	})
	seen := func() string { pk.mu.Lock(); defer pk.mu.Unlock(); return pk.seen["notes"] }
	// The sources as seen, so that the change below changes notes only.
	if _, err := r.Reload(); err != nil {
		t.Fatal(err)
	}
	stop := runLoop(t, r)
	defer stop()
	testutil.Eventually(t, "peek sees notes", func() bool { return seen() == `{"a":"one"}` && resultOf(r, "peek").State == StateReady })
	f.policy(t, "p.yaml", strings.Replace(doc, "%s", "uno", 1))
	testutil.Eventually(t, "peek reconciled again after notes changed", func() bool { return seen() == `{"a":"uno"}` })
}
