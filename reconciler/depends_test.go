package reconciler

import (
	"context"
	"testing"

	"github.com/twinlet/twinlet/providers"
)

// TestDependencyWithoutProvider: a section may depend on a section that
// no provider of this reconciler owns (files depends on users, and a
// binary or test may have files alone); nothing can desire it, so the
// dependent runs.
func TestDependencyWithoutProvider(t *testing.T) {
	f := newFixture(t)
	f.policy(t, "p.yaml", "apiVersion: twinlet.dev/v1\nkind: DevicePolicy\nmetadata: { name: p }\nspec:\n  notes: { greeting: hello }\n")
	r := f.new(t, func(o *Options) {
		o.Providers = []providers.Info{{ID: "notes", Kind: providers.Collection, Schema: noteSchema, DependsOn: []string{"users"},
			New: func() providers.Provider { return note{} }}}
	})
	if got := r.Sections(); len(got) != 1 || got[0] != "notes" {
		t.Fatalf("sections %v", got)
	}
	rep := r.ReconcileAll(context.Background(), false)
	if s := section(rep, "notes"); s == nil || s.Status.State != StateReady {
		t.Fatalf("notes: %+v", s)
	}
	if f.read(t, "greeting") != "hello" {
		t.Fatal("not applied")
	}
}
