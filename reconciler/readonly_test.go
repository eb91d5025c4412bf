package reconciler

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twinlet/twinlet/internal/testutil"
	"github.com/twinlet/twinlet/providers"
)

// inventory is a read-only provider, as deviceInfo is: it reports the
// notes it finds under <root>/etc/notes, whoever wrote them, and watches
// nothing.
type inventory struct{ note }

func (inventory) Decode(*providers.Env, json.RawMessage) (providers.Spec, error) {
	return noteSpec{}, nil
}

func (inventory) Observe(_ context.Context, env *providers.Env, _ providers.Spec) (providers.Observed, error) {
	o := noteObs{Items: map[string]string{}}
	ents, _ := os.ReadDir(filepath.Join(env.Root, "etc/notes"))
	for _, e := range ents {
		if b, err := os.ReadFile(filepath.Join(env.Root, "etc/notes", e.Name())); err == nil {
			o.Items[e.Name()] = string(b)
		}
	}
	return o, nil
}

func (inventory) Plan(providers.Spec, providers.Observed) ([]providers.Change, error) {
	return nil, nil
}

func (inventory) WatchPaths(*providers.Env, providers.Spec) []string { return nil }

func inventoryProviders() []providers.Info {
	return append(testProviders(), providers.Info{ID: "inventory", Kind: providers.Object, ReadOnly: true,
		Schema: json.RawMessage(`{"type":"object"}`), New: func() providers.Provider { return inventory{} }})
}

// inventoried is what the inventory section last reported of note k.
func inventoried(r *Reconciler, k string) string {
	res := r.ctrls["inventory"].lastResult()
	if res == nil || res.observedValue == nil {
		return "<none>"
	}
	if v, ok := res.observedValue.(noteObs).Items[k]; ok {
		return v
	}
	return "<missing>"
}

// TestReadOnlySectionsSeeWhatTheLoopChanged: a section that changed the
// system brings the read-only sections back at once (deviceInfo reported
// the old hostname for up to a resync after the hostname section set a
// new one).
func TestReadOnlySectionsSeeWhatTheLoopChanged(t *testing.T) {
	f := newFixture(t)
	f.policy(t, "base.yaml", basePolicy)
	r := f.new(t, func(o *Options) { o.Providers = inventoryProviders() })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx, RunOptions{Resync: time.Hour, PolicyPoll: 20 * time.Millisecond}) }()
	testutil.Eventually(t, "the first apply, inventoried", func() bool { return inventoried(r, "greeting") == "hello" })
	f.policy(t, "base.yaml", strings.Replace(basePolicy, "hello", "bonjour", 1))
	testutil.Eventually(t, "the policy change, inventoried", func() bool { return inventoried(r, "greeting") == "bonjour" })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestOnePassInventoriesWhatItChanged: apply --once runs the read-only
// sections after every section that changes the system, so its report
// holds what the pass left.
func TestOnePassInventoriesWhatItChanged(t *testing.T) {
	f := newFixture(t)
	f.policy(t, "base.yaml", basePolicy)
	r := f.new(t, func(o *Options) { o.Providers = inventoryProviders(); o.Workers = 4 })
	if got := r.passDeps("inventory"); strings.Join(got, ",") != "notes,later" {
		t.Errorf("inventory runs after %v, want notes,later", got)
	}
	rep := r.ReconcileAll(context.Background(), false)
	if s := section(rep, "notes"); s == nil || s.Status.Changes == 0 {
		t.Fatalf("notes changed nothing: %+v", s)
	}
	if got := inventoried(r, "greeting"); got != "hello" {
		t.Errorf("the pass inventoried greeting as %q, want what it wrote", got)
	}
}
