package extprov

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/twinlet/twinlet/providers"
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

// TestDependenciesFromDescribeAndManifest: the dependencies a provider
// describes are its section's, a manifest's dependsOn replaces them, and
// the reconciler holds the section until they are Ready, like a built-in
// one's: nothing is applied while files fails.
func TestDependenciesFromDescribeAndManifest(t *testing.T) {
	dir := t.TempDir()
	exe := chaos(t)
	manifest(t, dir, "described.yaml", "described", exe, "args: [--depends-on, files]")
	manifest(t, dir, "manifest.yaml", "declared", exe, "args: [--depends-on, described]", "dependsOn: [files]")
	h := load(t, testOpts(t), dir)
	if d := one(t, h, "described").DependsOn; len(d) != 1 || d[0] != "files" {
		t.Fatalf("described dependsOn %v", d)
	}
	if d := one(t, h, "declared").DependsOn; len(d) != 1 || d[0] != "files" {
		t.Fatalf("the manifest's dependsOn does not replace the described one: %v", d)
	}
	root, stateDir, policyDir := t.TempDir(), t.TempDir(), t.TempDir()
	write := func(motd string) {
		t.Helper()
		doc := "apiVersion: twinlet.dev/v1\nkind: DevicePolicy\nmetadata: {name: p}\nspec:\n  mode: enforce\n" +
			"  described: {value: a}\n  declared: {value: b}\n  files:\n    motd: {path: " + motd + ", content: \"hi\\n\"}\n"
		if err := os.WriteFile(filepath.Join(policyDir, "p.yaml"), []byte(doc), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("/boot/motd") // outside the allowed roots: files is Invalid
	files, _ := providers.Lookup("files")
	r, err := reconciler.New(reconciler.Options{Root: root, StateDir: stateDir, PolicyDir: policyDir, Providers: append(h.Infos(), files)})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ctx := context.Background()
	rep := r.ReconcileAll(ctx, false)
	if st := statusOf(rep, "files"); st.Reason != reconciler.ReasonInvalid {
		t.Fatalf("files: %+v", st)
	}
	for _, id := range []string{"described", "declared"} {
		if st := statusOf(rep, id); st.Reason != reconciler.ReasonDependencyNotReady || st.Message != "waiting for files" {
			t.Errorf("%s: %+v", id, st)
		}
	}
	if _, err := os.Stat(filepath.Join(root, "chaos")); !os.IsNotExist(err) {
		t.Fatalf("applied while a dependency failed: %v", err)
	}
	write("/etc/motd")
	if _, err := r.Reload(); err != nil {
		t.Fatal(err)
	}
	rep = r.ReconcileAll(ctx, false)
	if !rep.AllReady() {
		t.Fatalf("not ready once files is: %s", rep.Document)
	}
	var order []string
	for _, s := range rep.Sections {
		order = append(order, s.ID)
	}
	if o := strings.Join(order, " "); strings.Index(o, "files") > strings.Index(o, "declared") || strings.Index(o, "files") > strings.Index(o, "described") {
		t.Errorf("order %s: files is not first", o)
	}
}
