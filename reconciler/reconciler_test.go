package reconciler

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/twinlet/twinlet/internal/testutil"
	"github.com/twinlet/twinlet/providers"
	"github.com/twinlet/twinlet/state"
)

// note is a real provider for the reconciler's own tests: it keeps named
// notes as files under <root>/etc/notes/, so that the loop's mechanics
// (layers, validation, prune records, retries) are tested on a real
// directory. Its value "panic" panics, "slow" blocks until the call's
// deadline, "bad…" is invalid, "reboot" asks for a reboot, and "busy"
// fails as if someone else held its lock.
type note struct{}

type noteSpec struct {
	items map[string]string
	prune bool
}

type noteObs struct {
	Items   map[string]string
	orphans []string
}

// MarshalJSON reports items at the top level, as collections must.
func (o noteObs) MarshalJSON() ([]byte, error) { return json.Marshal(o.Items) }

func (note) Decode(env *providers.Env, raw json.RawMessage) (providers.Spec, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, providers.Invalid("", "%v", err)
	}
	s := noteSpec{items: map[string]string{}}
	errs := &providers.InvalidError{}
	for k, v := range m {
		if k == "prune" {
			_ = json.Unmarshal(v, &s.prune)
			continue
		}
		var str string
		if err := json.Unmarshal(v, &str); err != nil {
			errs.Add("/"+k, "must be a string")
			continue
		}
		if strings.HasPrefix(str, "bad") {
			errs.Add("/"+k, "value %q is not allowed", str)
		}
		s.items[k] = str
	}
	return s, errs.OrNil()
}

func (note) Observe(ctx context.Context, env *providers.Env, spec providers.Spec) (providers.Observed, error) {
	s := spec.(noteSpec)
	o := noteObs{Items: map[string]string{}}
	for k, v := range s.items {
		if v == "slow" {
			<-ctx.Done()
			return nil, ctx.Err()
		}
		if v == "panic" {
			panic("boom")
		}
		b, err := os.ReadFile(filepath.Join(env.Root, "etc/notes", k))
		if err == nil {
			o.Items[k] = string(b)
		}
	}
	for k := range env.Managed {
		if _, ok := s.items[k]; !ok {
			if _, err := os.Stat(filepath.Join(env.Root, "etc/notes", k)); err == nil {
				o.orphans = append(o.orphans, k)
			}
		}
	}
	return o, nil
}

func (note) Plan(spec providers.Spec, obs providers.Observed) ([]providers.Change, error) {
	s, o := spec.(noteSpec), obs.(noteObs)
	var out []providers.Change
	for _, k := range sortedKeys(s.items) {
		cur, ok := o.Items[k]
		switch {
		case !ok:
			out = append(out, providers.Change{Action: providers.Create, Item: k, Key: k, After: s.items[k], Data: s.items[k],
				RebootRequired: s.items[k] == "reboot"})
		case cur != s.items[k]:
			out = append(out, providers.Change{Action: providers.Update, Item: k, Before: cur, After: s.items[k], Data: s.items[k],
				RebootRequired: s.items[k] == "reboot"})
		}
	}
	if s.prune {
		for _, k := range o.orphans {
			out = append(out, providers.Change{Action: providers.Delete, Item: k, Key: k})
		}
	}
	return out, nil
}

func (note) Apply(ctx context.Context, env *providers.Env, c providers.Change) error {
	p := filepath.Join(env.Root, "etc/notes", c.Item)
	if c.Action == providers.Delete {
		err := os.Remove(p)
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	if c.Data.(string) == "crash" {
		return errors.New("disk on fire")
	}
	if c.Data.(string) == "busy" {
		return &providers.BusyError{Reason: "LockHeld", RetryAfter: 3 * time.Second, Err: errors.New("the notes lock is held by process 42")}
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	return env.WriteFileAtomic(p, []byte(c.Data.(string)), 0o644)
}

func sortedKeys(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

// waiter depends on notes.
type waiter struct{ note }

// noteSchema is the test sections' schema: an object of strings and a
// prune flag.
var noteSchema = json.RawMessage(`{"type":"object","properties":{"prune":{"type":"boolean"}},
  "additionalProperties":{"type":["string","boolean"]}}`)

func testProviders() []providers.Info {
	return []providers.Info{
		{ID: "notes", Kind: providers.Collection, Schema: noteSchema, New: func() providers.Provider { return note{} }},
		{ID: "later", Kind: providers.Collection, Schema: noteSchema, DependsOn: []string{"notes"}, New: func() providers.Provider { return waiter{} }},
	}
}

type fixture struct {
	root, stateDir, policyDir string
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{root: t.TempDir(), stateDir: t.TempDir(), policyDir: t.TempDir()}
	return f
}

func (f *fixture) policy(t *testing.T, name, body string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(f.policyDir, name), []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) new(t *testing.T, mod ...func(*Options)) *Reconciler {
	t.Helper()
	o := Options{Root: f.root, StateDir: f.stateDir, PolicyDir: f.policyDir, Providers: testProviders(),
		Logger: slog.New(slog.DiscardHandler), CallTimeout: 2 * time.Second}
	for _, m := range mod {
		m(&o)
	}
	r, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func (f *fixture) read(t *testing.T, name string) string {
	b, err := os.ReadFile(filepath.Join(f.root, "etc/notes", name))
	if err != nil {
		return "<missing>"
	}
	return string(b)
}

func section(rep *Report, id string) *SectionResult {
	for _, s := range rep.Sections {
		if s.ID == id {
			return s
		}
	}
	return nil
}

const basePolicy = `apiVersion: twinlet.dev/v1
kind: DevicePolicy
metadata: { name: base }
spec:
  mode: default
  notes:
    greeting: hello
    color: blue
`

func TestApplyThenUnchanged(t *testing.T) {
	f := newFixture(t)
	f.policy(t, "base.yaml", basePolicy)
	r := f.new(t)
	rep := r.ReconcileAll(context.Background(), false)
	s := section(rep, "notes")
	if s.Status.State != StateReady || s.Status.Reason != ReasonApplied || s.Status.Changes != 2 {
		t.Fatalf("first apply: %+v", s.Status)
	}
	if f.read(t, "greeting") != "hello" {
		t.Fatal("not applied")
	}
	// A second pass, even from a fresh process, changes nothing.
	r2 := f.new(t)
	if plan := r2.ReconcileAll(context.Background(), true); plan.Pending() != 0 {
		t.Fatalf("plan after apply: %d pending", plan.Pending())
	}
	rep = r2.ReconcileAll(context.Background(), false)
	if s := section(rep, "notes"); s.Status.Reason != ReasonUnchanged || s.Status.Changes != 0 {
		t.Fatalf("second apply: %+v", s.Status)
	}
	if !rep.AllReady() {
		t.Fatalf("summary: %+v", rep.Summary)
	}
	// Drift behind the agent's back is healed by the next pass.
	os.WriteFile(filepath.Join(f.root, "etc/notes/color"), []byte("red"), 0o644)
	rep = r2.ReconcileAll(context.Background(), false)
	if s := section(rep, "notes"); s.Status.Reason != ReasonApplied || f.read(t, "color") != "blue" {
		t.Fatalf("drift not healed: %+v %q", s.Status, f.read(t, "color"))
	}
}

func TestPlanChangesNothing(t *testing.T) {
	f := newFixture(t)
	f.policy(t, "base.yaml", basePolicy)
	stateDir := filepath.Join(t.TempDir(), "state")
	r := f.new(t, func(o *Options) { o.StateDir = stateDir })
	rep := r.ReconcileAll(context.Background(), true)
	if rep.Pending() != 2 {
		t.Fatalf("pending = %d, want 2", rep.Pending())
	}
	if _, err := os.Stat(stateDir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("plan created the state dir: %v", err)
	}
	if f.read(t, "greeting") != "<missing>" {
		t.Fatal("plan changed the system")
	}
}

func TestLayersAndConflicts(t *testing.T) {
	f := newFixture(t)
	f.policy(t, "base.yaml", basePolicy)
	f.policy(t, "lock.yaml", `apiVersion: twinlet.dev/v1
kind: DevicePolicy
metadata: { name: lock }
spec:
  mode: enforce
  notes:
    color: green
`)
	twin := filepath.Join(t.TempDir(), "twin.json")
	os.WriteFile(twin, []byte(`{"notes":{"color":"purple","extra":"from-twin","greeting":null},"other-app":{"x":1},"$version":7}`), 0o644)
	r := f.new(t, func(o *Options) { o.TwinDesiredFile = twin })
	rep := r.ReconcileAll(context.Background(), false)
	s := section(rep, "notes")
	if f.read(t, "color") != "green" || f.read(t, "extra") != "from-twin" || f.read(t, "greeting") != "hello" {
		t.Fatalf("merge wrong: color=%s extra=%s greeting=%s", f.read(t, "color"), f.read(t, "extra"), f.read(t, "greeting"))
	}
	if s.Status.Reason != ReasonConflict || len(s.Status.Conflicts) != 1 || !strings.Contains(s.Status.Conflicts[0], "/color from twin overridden by lock.yaml") {
		t.Fatalf("conflict not reported: %+v", s.Status)
	}
	if s.Status.DesiredVersion != 7 || s.Status.Source != "twin+local" {
		t.Fatalf("status: %+v", s.Status)
	}
	var doc map[string]json.RawMessage
	json.Unmarshal(rep.Document, &doc)
	if _, ok := doc["other-app"]; ok {
		t.Fatal("a section no provider owns was reported")
	}
}

func TestInvalidKeepsLastGood(t *testing.T) {
	f := newFixture(t)
	f.policy(t, "base.yaml", basePolicy)
	r := f.new(t)
	r.ReconcileAll(context.Background(), false)

	// Now the value becomes invalid; the last good stays in force, and
	// drift is still healed with it.
	f.policy(t, "base.yaml", strings.Replace(basePolicy, "color: blue", "color: bad-color", 1))
	os.WriteFile(filepath.Join(f.root, "etc/notes/color"), []byte("drifted"), 0o644)
	r2 := f.new(t)
	rep := r2.ReconcileAll(context.Background(), false)
	s := section(rep, "notes")
	if s.Status.State != StateFailed || s.Status.Reason != ReasonInvalid {
		t.Fatalf("status: %+v", s.Status)
	}
	if len(s.Errors) != 1 || s.Errors[0].Pointer != "/color" || !strings.HasSuffix(s.Errors[0].At, "base.yaml:8:12") {
		t.Fatalf("errors: %+v", s.Errors)
	}
	if f.read(t, "color") != "blue" {
		t.Fatalf("last good not in force: %q", f.read(t, "color"))
	}
	if rep.AllReady() {
		t.Fatal("summary says ready")
	}

	// A syntax error in the file keeps the last good too.
	f.policy(t, "base.yaml", "apiVersion: twinlet.dev/v1\nkind: [\n")
	rep = f.new(t).ReconcileAll(context.Background(), false)
	s = section(rep, "notes")
	if s == nil || s.Status.Reason != ReasonInvalid || len(s.Errors) == 0 || !strings.Contains(s.Errors[0].At, "base.yaml:") {
		t.Fatalf("syntax error not reported on the section: %+v", s)
	}
	if f.read(t, "greeting") != "hello" {
		t.Fatal("last good lost")
	}
}

func TestPanicTimeoutAndDependencies(t *testing.T) {
	f := newFixture(t)
	f.policy(t, "p.yaml", `apiVersion: twinlet.dev/v1
kind: DevicePolicy
metadata: { name: p }
spec:
  notes: { a: panic }
  later: { b: fine }
`)
	r := f.new(t)
	rep := r.ReconcileAll(context.Background(), false)
	if s := section(rep, "notes"); s.Status.Reason != ReasonProviderBug || !s.Retry {
		t.Fatalf("panic: %+v", s.Status)
	}
	if s := section(rep, "later"); s.Status.State != StateWaiting || s.Status.Reason != ReasonDependencyNotReady {
		t.Fatalf("dependency: %+v", s.Status)
	}
	f.policy(t, "p.yaml", strings.Replace(`apiVersion: twinlet.dev/v1
kind: DevicePolicy
metadata: { name: p }
spec:
  notes: { a: slow }
`, "\t", "", -1))
	r = f.new(t, func(o *Options) { o.CallTimeout = 50 * time.Millisecond })
	rep = r.ReconcileAll(context.Background(), false)
	if s := section(rep, "notes"); s.Status.State != StateFailed || !s.Retry || !strings.Contains(s.Status.Message, "deadline") {
		t.Fatalf("timeout: %+v", s.Status)
	}
}

func TestPruneWriteAhead(t *testing.T) {
	f := newFixture(t)
	f.policy(t, "p.yaml", `apiVersion: twinlet.dev/v1
kind: DevicePolicy
metadata: { name: p }
spec:
  notes: { a: one, b: crash }
`)
	// A pre-existing note that twinlet did not create.
	os.MkdirAll(filepath.Join(f.root, "etc/notes"), 0o755)
	os.WriteFile(filepath.Join(f.root, "etc/notes/mine"), []byte("user's"), 0o644)
	r := f.new(t)
	rep := r.ReconcileAll(context.Background(), false)
	if s := section(rep, "notes"); s.Status.Reason != ReasonApplyFailed || !s.Retry {
		t.Fatalf("apply failure: %+v", s.Status)
	}
	st, err := (&state.Store{Dir: f.stateDir}).Load()
	if err != nil {
		t.Fatal(err)
	}
	// Both creations were recorded before Apply ran, even the one that failed.
	if got := strings.Join(st.Sections["notes"].Managed, ","); got != "a,b" {
		t.Fatalf("managed = %q", got)
	}
	// Prune removes only what twinlet created.
	f.policy(t, "p.yaml", `apiVersion: twinlet.dev/v1
kind: DevicePolicy
metadata: { name: p }
spec:
  notes: { prune: true, b: two }
`)
	rep = f.new(t).ReconcileAll(context.Background(), false)
	if s := section(rep, "notes"); s.Status.State != StateReady {
		t.Fatalf("prune: %+v", s.Status)
	}
	if f.read(t, "a") != "<missing>" || f.read(t, "mine") != "user's" || f.read(t, "b") != "two" {
		t.Fatalf("prune wrong: a=%s mine=%s b=%s", f.read(t, "a"), f.read(t, "mine"), f.read(t, "b"))
	}
	st, _ = (&state.Store{Dir: f.stateDir}).Load()
	if got := strings.Join(st.Sections["notes"].Managed, ","); got != "b" {
		t.Fatalf("managed after prune = %q", got)
	}
}

func TestCorruptStateIsAFreshStart(t *testing.T) {
	f := newFixture(t)
	f.policy(t, "base.yaml", basePolicy)
	os.WriteFile(filepath.Join(f.stateDir, state.FileName), []byte("{not json"), 0o600)
	var logs bytes.Buffer
	r := f.new(t, func(o *Options) { o.Logger = slog.New(slog.NewTextHandler(&logs, nil)) })
	if rep := r.ReconcileAll(context.Background(), false); !rep.AllReady() {
		t.Fatalf("not ready: %+v", rep.Summary)
	}
	if !strings.Contains(logs.String(), "corrupt") {
		t.Fatalf("no warning: %s", logs.String())
	}
}

func TestDependencyCycle(t *testing.T) {
	_, err := New(Options{Root: t.TempDir(), StateDir: t.TempDir(), Providers: []providers.Info{
		{ID: "a", Schema: noteSchema, DependsOn: []string{"b"}, New: func() providers.Provider { return note{} }},
		{ID: "b", Schema: noteSchema, DependsOn: []string{"a"}, New: func() providers.Provider { return note{} }},
	}})
	if err == nil || !strings.Contains(err.Error(), "cycle") {
		t.Fatalf("err = %v", err)
	}
}

func TestRunReactsToPolicyAndDrift(t *testing.T) {
	f := newFixture(t)
	f.policy(t, "base.yaml", basePolicy)
	r := f.new(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- r.Run(ctx, RunOptions{Resync: 300 * time.Millisecond, PolicyPoll: 200 * time.Millisecond})
	}()
	testutil.Eventually(t, "first apply", func() bool { return f.read(t, "greeting") == "hello" })
	f.policy(t, "base.yaml", strings.Replace(basePolicy, "hello", "bonjour", 1))
	testutil.Eventually(t, "policy change", func() bool { return f.read(t, "greeting") == "bonjour" })
	os.WriteFile(filepath.Join(f.root, "etc/notes/color"), []byte("drift"), 0o644)
	testutil.Eventually(t, "drift healed", func() bool { return f.read(t, "color") == "blue" })
	testutil.Eventually(t, "reported.json", func() bool {
		b, err := os.ReadFile(filepath.Join(f.stateDir, state.ReportedFile))
		return err == nil && bytes.Contains(b, []byte(`"state": "Ready"`))
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestBackoffGrowsAndIsBounded(t *testing.T) {
	b := Backoff{Base: time.Second, Max: 10 * time.Second}
	if d := b.Delay(1); d < 800*time.Millisecond || d > 1200*time.Millisecond {
		t.Fatalf("first delay %v", d)
	}
	if d := b.Delay(3); d < 3200*time.Millisecond || d > 4800*time.Millisecond {
		t.Fatalf("third delay %v", d)
	}
	if d := b.Delay(50); d > 12*time.Second {
		t.Fatalf("unbounded delay %v", d)
	}
}

func TestLargeCollectionReportsMinimally(t *testing.T) {
	f := newFixture(t)
	var sb strings.Builder
	sb.WriteString("apiVersion: twinlet.dev/v1\nkind: DevicePolicy\nmetadata: { name: big }\nspec:\n  notes:\n")
	for i := 0; i < 60; i++ {
		fmt.Fprintf(&sb, "    n%02d: v%d\n", i, i)
	}
	f.policy(t, "big.yaml", sb.String())
	r := f.new(t)
	first := section(r.ReconcileAll(context.Background(), false), "notes")
	var obs map[string]json.RawMessage
	json.Unmarshal(first.Observed, &obs)
	if string(obs["__count"]) != "60" || len(obs) != 61 {
		t.Fatalf("first report: %d keys, count %s", len(obs), obs["__count"])
	}
	again := section(r.ReconcileAll(context.Background(), false), "notes")
	if string(again.Observed) != `{"__count":60}` {
		t.Fatalf("no-op report = %s", again.Observed)
	}
}

func TestRestartKeepsReportedDocument(t *testing.T) {
	f := newFixture(t)
	f.policy(t, "base.yaml", basePolicy)
	var reports int
	first := f.new(t).ReconcileAll(context.Background(), false)
	r := f.new(t, func(o *Options) { o.OnReport = func([]byte) { reports++ } })
	if !bytes.Equal(r.Document(), first.Document) {
		t.Fatal("a restart does not know what it reported last")
	}
	r.ReconcileAll(context.Background(), false)
	r.ReconcileAll(context.Background(), false)
	// Applied → Unchanged is one real change; after that, nothing.
	if reports != 1 {
		t.Fatalf("%d reports after a restart, want 1", reports)
	}
}

// TestNoOpRestartWritesNothing: a converged device reconciled again by a
// fresh process (`twinlet apply --once` from a timer) an hour later keeps
// every lastTransitionTime and leaves state/ untouched on disk.
func TestNoOpRestartWritesNothing(t *testing.T) {
	f := newFixture(t)
	f.policy(t, "base.yaml", basePolicy)
	now := time.Date(2026, 12, 2, 8, 0, 0, 0, time.UTC)
	clock := func(o *Options) { o.Now = func() time.Time { return now } }
	f.new(t, clock).ReconcileAll(context.Background(), false)
	f.new(t, clock).ReconcileAll(context.Background(), false) // Applied → Unchanged
	snap := func() map[string]string {
		out := map[string]string{}
		ents, err := os.ReadDir(f.stateDir)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			fi, err := e.Info()
			if err != nil {
				t.Fatal(err)
			}
			b, _ := os.ReadFile(filepath.Join(f.stateDir, e.Name()))
			out[e.Name()] = fi.ModTime().String() + " " + string(b)
		}
		return out
	}
	before := snap()
	now = now.Add(time.Hour)
	rep := f.new(t, clock).ReconcileAll(context.Background(), false)
	s := section(rep, "notes")
	if s.Status.Reason != ReasonUnchanged || s.Status.LastTransitionTime != "2026-12-02T08:00:00Z" {
		t.Fatalf("after a no-op restart: %+v", s.Status)
	}
	after := snap()
	for name, b := range before {
		if after[name] != b {
			t.Errorf("%s was rewritten by a no-op reconcile", name)
		}
	}
	if len(after) != len(before) {
		t.Errorf("state files %d → %d", len(before), len(after))
	}
}

// TestValidatedOnceUnderOneSchema: a section that passed its schema is not
// validated again by a later run while section and schema are the same,
// but a new schema (an upgrade) or a new value is validated afresh.
func TestValidatedOnceUnderOneSchema(t *testing.T) {
	f := newFixture(t)
	f.policy(t, "base.yaml", basePolicy)
	rep := f.new(t).ReconcileAll(context.Background(), false)
	if s := section(rep, "notes"); s.Status.State != StateReady {
		t.Fatalf("first run: %+v", s.Status)
	}
	st, err := os.ReadFile(filepath.Join(f.stateDir, "state.json"))
	if err != nil || !strings.Contains(string(st), `"validated"`) {
		t.Fatalf("state does not record the validation: %v", err)
	}
	// The same section under a stricter schema: validated again, and now
	// refused.
	strict := json.RawMessage(`{"type":"object","properties":{"prune":{"type":"boolean"}},
  "additionalProperties":{"type":"string","maxLength":4}}`)
	rep = f.new(t, func(o *Options) { o.Providers[0].Schema = strict }).ReconcileAll(context.Background(), false)
	if s := section(rep, "notes"); s.Status.Reason != ReasonInvalid || len(s.Errors) != 1 || s.Errors[0].Pointer != "/greeting" {
		t.Fatalf("under a new schema: %+v %+v", s.Status, s.Errors)
	}
	// Back to the first schema and a new value that it refuses.
	f.policy(t, "base.yaml", strings.Replace(basePolicy, "color: blue", "color: [blue]", 1))
	rep = f.new(t).ReconcileAll(context.Background(), false)
	if s := section(rep, "notes"); s.Status.Reason != ReasonInvalid || len(s.Errors) != 1 || s.Errors[0].Pointer != "/color" {
		t.Fatalf("a new value: %+v %+v", s.Status, s.Errors)
	}
}

// TestRunSeesPolicyChangesWithoutPolling: with the policy directory
// watched, a change is applied through inotify alone (the poll and the
// resync are an hour away), so an idle agent need not re-hash it.
func TestRunSeesPolicyChangesWithoutPolling(t *testing.T) {
	needInotify(t)
	f := newFixture(t)
	f.policy(t, "base.yaml", basePolicy)
	r := f.new(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx, RunOptions{Resync: time.Hour, PolicyPoll: 10 * time.Millisecond}) }()
	testutil.Eventually(t, "first apply", func() bool { return f.read(t, "greeting") == "hello" })
	f.policy(t, "base.yaml", strings.Replace(basePolicy, "hello", "bonjour", 1))
	testutil.Eventually(t, "policy change", func() bool { return f.read(t, "greeting") == "bonjour" })
	time.Sleep(50 * time.Millisecond)
	if n := r.rehashes.Load(); n != 0 {
		t.Errorf("the watched policy directory was re-hashed %d times", n)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestRunRehashesAWatchedPolicyDirInTheResyncsWake: with the policy
// directory watched, the safety-net re-hash rides on the resync: the
// loop's timers fire once per resync, not once more for a poll on the
// same period (which woke an idle agent twice every 5 minutes).
func TestRunRehashesAWatchedPolicyDirInTheResyncsWake(t *testing.T) {
	needInotify(t)
	f := newFixture(t)
	f.policy(t, "base.yaml", basePolicy)
	r := f.new(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- r.Run(ctx, RunOptions{Resync: 100 * time.Millisecond, PolicyPoll: 10 * time.Millisecond})
	}()
	testutil.Eventually(t, "four resyncs", func() bool { return r.resyncs.Load() >= 4 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	resyncs, wakes, rehashes := r.resyncs.Load(), r.timerWakes.Load(), r.rehashes.Load()
	if wakes != resyncs {
		t.Errorf("the loop's timers fired %d times for %d resyncs, want one per resync", wakes, resyncs)
	}
	if rehashes != resyncs {
		t.Errorf("%d re-hashes for %d resyncs, want one per resync", rehashes, resyncs)
	}
}

// TestRunPollsForARemovedPolicyDir: the policy directory is removed and
// created again (as a package upgrade or `rm -r; cp -r` does); its watch
// went with it, so the loop polls until it is back, watches it again and
// applies what it holds.
func TestRunPollsForARemovedPolicyDir(t *testing.T) {
	f := newFixture(t)
	f.policy(t, "base.yaml", basePolicy)
	r := f.new(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx, RunOptions{Resync: time.Hour, PolicyPoll: 50 * time.Millisecond}) }()
	testutil.Eventually(t, "first apply", func() bool { return f.read(t, "greeting") == "hello" })
	if err := os.RemoveAll(f.policyDir); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // let the loop see the directory go
	if err := os.Mkdir(f.policyDir, 0o755); err != nil {
		t.Fatal(err)
	}
	f.policy(t, "base.yaml", strings.Replace(basePolicy, "hello", "bonjour", 1))
	testutil.Eventually(t, "the recreated directory applied", func() bool { return f.read(t, "greeting") == "bonjour" })
	// Watched again: the next change arrives too.
	f.policy(t, "base.yaml", strings.Replace(basePolicy, "hello", "hola", 1))
	testutil.Eventually(t, "the next change", func() bool { return f.read(t, "greeting") == "hola" })
	if r.rehashes.Load() == 0 {
		t.Error("the missing directory was never polled for")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestReportGoesOutBeforeItsLocalCopies: a change's report is handed to
// OnReport before reported.json is written, so that the report is not
// delayed by its fsyncs; when the reconcile returns, it and the state's
// bookkeeping (the last good desired) are on disk.
func TestReportGoesOutBeforeItsLocalCopies(t *testing.T) {
	f := newFixture(t)
	f.policy(t, "base.yaml", basePolicy)
	var onDisk []string
	r := f.new(t, func(o *Options) {
		o.OnReport = func(doc []byte) {
			b, err := os.ReadFile(filepath.Join(f.stateDir, state.ReportedFile))
			if err == nil && bytes.Equal(bytes.TrimSpace(b), bytes.TrimSpace(indent(doc))) {
				onDisk = append(onDisk, "reported.json")
			}
		}
	})
	r.ReconcileAll(context.Background(), false)
	if len(onDisk) > 0 {
		t.Fatalf("written before the report went out: %v", onDisk)
	}
	st, err := os.ReadFile(filepath.Join(f.stateDir, state.FileName))
	if err != nil || !bytes.Contains(st, []byte(`"lastGood"`)) {
		t.Fatalf("the state after the reconcile lacks the last good desired (%v):\n%s", err, st)
	}
	rep, err := os.ReadFile(filepath.Join(f.stateDir, state.ReportedFile))
	if err != nil || !bytes.Equal(bytes.TrimSpace(rep), bytes.TrimSpace(indent(r.Document()))) {
		t.Fatalf("reported.json is not the last report (%v)", err)
	}
}

// needInotify skips a test of the watched policy directory where no
// inotify instance is left (the loop polls instead).
func needInotify(t *testing.T) {
	t.Helper()
	w, err := fsnotify.NewWatcher()
	if err != nil {
		t.Skipf("no inotify instance to watch with (%v): the loop polls instead", err)
	}
	w.Close()
}
