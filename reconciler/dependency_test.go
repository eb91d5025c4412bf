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

// reader is a note provider that records what Env.SectionDesired shows
// it of "zconf" (which it reads), "other" (which it does not) and
// "nothing" (which it reads but nothing desires).
type reader struct {
	note
	mu   *sync.Mutex
	seen map[string]string
}

func (p reader) Observe(ctx context.Context, env *providers.Env, spec providers.Spec) (providers.Observed, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, id := range []string{"zconf", "other", "nothing"} {
		if env.SectionDesired == nil {
			p.seen[id] = "<no hook>"
			continue
		}
		b, ok := env.SectionDesired(id)
		if !ok {
			b = []byte("<none>")
		}
		p.seen[id] = string(b)
	}
	return p.note.Observe(ctx, env, spec)
}

var zconfSchema = json.RawMessage(`{"type":"object","properties":{"__meta":{"type":"object"},"reportingMode":{"type":"string"}},
  "additionalProperties":{"type":"string"}}`)

// Env.SectionDesired: a provider sees the last good desired value of the
// sections it reads (reserved keys stripped), and only those; a section
// it reads is ordered before it but holds nothing back when it is
// invalid.
func TestSectionDesired(t *testing.T) {
	f := newFixture(t)
	doc := "apiVersion: twinlet.dev/v1\nkind: DevicePolicy\nmetadata: { name: p }\nspec:\n" +
		"  zconf: { reportingMode: none, __meta: { deploymentId: d1 }, a: %s }\n  other: { c: three }\n  areader: { b: two }\n"
	f.policy(t, "p.yaml", strings.Replace(doc, "%s", "one", 1))
	rd := reader{mu: &sync.Mutex{}, seen: map[string]string{}}
	r := f.new(t, func(o *Options) {
		o.Providers = []providers.Info{
			{ID: "zconf", Kind: providers.Collection, Schema: zconfSchema, New: func() providers.Provider { return note{} }},
			{ID: "other", Kind: providers.Collection, Schema: noteSchema, New: func() providers.Provider { return note{} }},
			{ID: "nothing", Kind: providers.Collection, Schema: noteSchema, New: func() providers.Provider { return note{} }},
			{ID: "areader", Kind: providers.Collection, Schema: noteSchema, ReadsDesired: []string{"zconf", "nothing"}, New: func() providers.Provider { return rd }},
		}
	})
	if got := strings.Join(r.Sections(), ","); got != "nothing,zconf,areader,other" {
		t.Fatalf("order %s: the sections areader reads do not come first", got)
	}
	seen := func() map[string]string {
		rd.mu.Lock()
		defer rd.mu.Unlock()
		return map[string]string{"zconf": rd.seen["zconf"], "other": rd.seen["other"], "nothing": rd.seen["nothing"]}
	}
	r.ReconcileAll(context.Background(), false)
	if s := seen(); s["zconf"] != `{"a":"one"}` || s["other"] != "<none>" || s["nothing"] != "<none>" {
		t.Fatalf("seen on the first pass: %v", s)
	}
	// zconf turns invalid (the note schema wants strings): areader still
	// runs, and sees zconf's last good value.
	f.policy(t, "p.yaml", strings.Replace(doc, "%s", "[1]", 1))
	if _, err := r.Reload(); err != nil {
		t.Fatal(err)
	}
	rep := r.ReconcileAll(context.Background(), false)
	if st := section(rep, "areader").Status.State; st != StateReady {
		t.Fatalf("areader after zconf turned invalid: %s", st)
	}
	if st := section(rep, "zconf").Status.State; st == StateReady {
		t.Fatalf("zconf with a list for a string: %s", st)
	}
	if s := seen(); s["zconf"] != `{"a":"one"}` {
		t.Fatalf("seen after zconf turned invalid: %v", s)
	}
}
