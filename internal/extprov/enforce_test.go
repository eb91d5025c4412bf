package extprov

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/twinlet/twinlet/reconciler"
)

// callsSince returns the methods the agent sent after the first n traced
// lines.
func (r *recorder) callsSince(n int) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, l := range r.lines[n:] {
		if !l.out {
			continue
		}
		var m struct{ Method string }
		if json.Unmarshal(l.line, &m) == nil {
			out = append(out, m.Method)
		}
	}
	return out
}

func (r *recorder) len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.lines)
}

// TestSchemaIsEnforcedBeforeTheProvider: a section that fails the schema
// the provider described, from local policy or from the twin, is reported
// Invalid with its pointer (and file:line for the policy) and not a single
// call reaches the process; a valid one does. The provider (chaos.py)
// checks nothing itself, so only the agent can have refused the value.
func TestSchemaIsEnforcedBeforeTheProvider(t *testing.T) {
	rec := &recorder{}
	opts := testOpts(t)
	opts.Trace = rec.trace
	dir := t.TempDir()
	manifest(t, dir, "chaos.yaml", "chaos", chaos(t))
	h := load(t, opts, dir)
	root, stateDir, policyDir := t.TempDir(), t.TempDir(), t.TempDir()
	pol := filepath.Join(policyDir, "p.yaml")
	write := func(body string) {
		t.Helper()
		doc := "apiVersion: twinlet.dev/v1\nkind: DevicePolicy\nmetadata: {name: p}\nspec:\n  mode: enforce\n" + body
		if err := os.WriteFile(pol, []byte(doc), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("  chaos: {value: 3, extra: x}\n")
	r, err := reconciler.New(reconciler.Options{Root: root, StateDir: stateDir, PolicyDir: policyDir, Providers: h.Infos()})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ctx := context.Background()

	mark := rec.len()
	res := r.ReconcileSection(ctx, "chaos", false)
	if res.Status.State != reconciler.StateFailed || res.Status.Reason != reconciler.ReasonInvalid {
		t.Fatalf("invalid local section: %+v", res.Status)
	}
	got := map[string]string{}
	for _, e := range res.Errors {
		got[e.Pointer] = e.At
	}
	for _, ptr := range []string{"/value", "/extra"} {
		if !strings.HasPrefix(got[ptr], pol+":6:") {
			t.Errorf("no error at %s located in %s:6: %+v", ptr, pol, res.Errors)
		}
	}
	if calls := rec.callsSince(mark); len(calls) > 0 {
		t.Fatalf("an invalid section reached the provider: %v", calls)
	}

	// The same from the twin.
	if err := os.Remove(pol); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Reload(); err != nil {
		t.Fatal(err)
	}
	if _, err := r.SetTwinDesired(map[string]json.RawMessage{"chaos": json.RawMessage(`{"value": ["a"]}`)}, 2); err != nil {
		t.Fatal(err)
	}
	mark = rec.len()
	res = r.ReconcileSection(ctx, "chaos", false)
	if res.Status.Reason != reconciler.ReasonInvalid || len(res.Errors) != 1 || res.Errors[0].Pointer != "/value" || res.Errors[0].At != "twin:/chaos/value" {
		t.Fatalf("invalid twin section: %+v %+v", res.Status, res.Errors)
	}
	if calls := rec.callsSince(mark); len(calls) > 0 {
		t.Fatalf("an invalid twin section reached the provider: %v", calls)
	}

	// A valid section does reach it: the trace above would have seen it.
	if _, err := r.SetTwinDesired(map[string]json.RawMessage{"chaos": json.RawMessage(`{"value": "ok"}`)}, 3); err != nil {
		t.Fatal(err)
	}
	mark = rec.len()
	if res = r.ReconcileSection(ctx, "chaos", false); res.Status.State != reconciler.StateReady {
		t.Fatalf("valid section: %+v", res.Status)
	}
	if calls := strings.Join(rec.callsSince(mark), " "); !strings.Contains(calls, "decode") || !strings.Contains(calls, "apply") {
		t.Fatalf("a valid section's calls: %s", calls)
	}
	if b, _ := os.ReadFile(filepath.Join(root, "chaos/chaos")); string(b) != "ok" {
		t.Fatalf("applied %q", b)
	}
}
