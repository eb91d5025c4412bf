package reconciler

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twinlet/twinlet/internal/testutil"
	"github.com/twinlet/twinlet/providers"
)

// gated is the note provider whose Observe waits for a gate (or for its
// call to be cancelled), and counts how many of its calls run at once.
type gated struct {
	note
	gate    <-chan struct{}
	started chan<- struct{}
	inCall  *atomic.Int32
	maxCall *atomic.Int32
}

func (g gated) Observe(ctx context.Context, env *providers.Env, spec providers.Spec) (providers.Observed, error) {
	n := g.inCall.Add(1)
	defer g.inCall.Add(-1)
	for {
		m := g.maxCall.Load()
		if n <= m || g.maxCall.CompareAndSwap(m, n) {
			break
		}
	}
	select {
	case g.started <- struct{}{}:
	default:
	}
	select {
	case <-g.gate:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return g.note.Observe(ctx, env, spec)
}

type gate struct {
	ch      chan struct{}
	started chan struct{}
	in, max atomic.Int32
}

func newGate() *gate { return &gate{ch: make(chan struct{}), started: make(chan struct{}, 1)} }

func (g *gate) provider(id string, timeout time.Duration, deps ...string) providers.Info {
	return providers.Info{ID: id, Kind: providers.Collection, Schema: noteSchema, DependsOn: deps, Timeout: timeout,
		New: func() providers.Provider {
			return gated{gate: g.ch, started: g.started, inCall: &g.in, maxCall: &g.max}
		}}
}

func runLoop(t *testing.T, r *Reconciler) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	// The policy directory is polled only while it cannot be watched (no
	// inotify instance left: a machine running many agents at once), and
	// then often enough for a test.
	go func() { done <- r.Run(ctx, RunOptions{Resync: time.Hour, PolicyPoll: 200 * time.Millisecond}) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("run: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("Run did not return after cancel")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func resultOf(r *Reconciler, id string) Status {
	if res := r.ctrls[id].lastResult(); res != nil {
		return res.Status
	}
	return Status{}
}

// A section whose provider blocks until cancelled (a hung package
// install) delays no other section, and the loop still stops at once.
func TestBlockedSectionDoesNotDelayOthers(t *testing.T) {
	f := newFixture(t)
	g := newGate() // never opened
	f.policy(t, "p.yaml", "apiVersion: twinlet.dev/v1\nkind: DevicePolicy\nmetadata: { name: p }\nspec:\n  stuck: { x: y }\n  notes: { greeting: hello }\n")
	r := f.new(t, func(o *Options) {
		o.CallTimeout = 0 // each provider's own timeout
		o.Providers = []providers.Info{g.provider("stuck", time.Hour), testProviders()[0]}
	})
	stop := runLoop(t, r)
	<-g.started
	testutil.Eventually(t, "notes converge while stuck is blocked", func() bool {
		return f.read(t, "greeting") == "hello" && resultOf(r, "notes").State == StateReady
	})
	if g.in.Load() != 1 {
		t.Fatal("the stuck provider is not blocked any more")
	}
	stop()
	if g.in.Load() != 0 {
		t.Fatal("Run returned with a provider call still running")
	}
}

// The timeout of a call is the provider's own (Info.Timeout).
func TestProviderTimeoutFromRegistration(t *testing.T) {
	f := newFixture(t)
	g := newGate()
	f.policy(t, "p.yaml", "apiVersion: twinlet.dev/v1\nkind: DevicePolicy\nmetadata: { name: p }\nspec:\n  stuck: { x: y }\n")
	r := f.new(t, func(o *Options) {
		o.CallTimeout = 0
		o.Providers = []providers.Info{g.provider("stuck", 50*time.Millisecond)}
	})
	s := section(r.ReconcileAll(context.Background(), false), "stuck")
	if s.Status.State != StateFailed || !s.Retry || !strings.Contains(s.Status.Message, "deadline") {
		t.Fatalf("status: %+v", s.Status)
	}
}

// A section waits for its dependency to be Ready for the same input and
// goes on as soon as it is: no resync, no polling.
func TestWaitingIsEventDriven(t *testing.T) {
	f := newFixture(t)
	g := newGate()
	f.policy(t, "p.yaml", "apiVersion: twinlet.dev/v1\nkind: DevicePolicy\nmetadata: { name: p }\nspec:\n  first: { a: one }\n  later: { b: two }\n")
	r := f.new(t, func(o *Options) {
		o.Providers = []providers.Info{g.provider("first", 0),
			{ID: "later", Kind: providers.Collection, Schema: noteSchema, DependsOn: []string{"first"}, New: func() providers.Provider { return note{} }}}
		o.CallTimeout = time.Minute
	})
	runLoop(t, r)
	<-g.started
	testutil.Eventually(t, "later waits", func() bool {
		st := resultOf(r, "later")
		return st.State == StateWaiting && st.Reason == ReasonDependencyNotReady
	})
	if f.read(t, "b") != "<missing>" {
		t.Fatal("later ran before first was Ready")
	}
	close(g.ch)
	testutil.Eventually(t, "later runs once first is Ready", func() bool {
		return resultOf(r, "later").State == StateReady && f.read(t, "b") == "two"
	})
}

// progressive applies each change in ten steps, advancing the test clock
// by 2 s a step.
type progressive struct {
	note
	clock *atomic.Int64 // seconds
}

func (p progressive) Apply(ctx context.Context, env *providers.Env, c providers.Change) error {
	for i := 1; i <= 10; i++ {
		p.clock.Add(2)
		env.Progress("copy "+c.Item, i, 10)
	}
	return p.note.Apply(ctx, env, c)
}

// Progress of a long Apply is reported as Reconciling/InProgress with
// {step, done, total}, at most once per interval, and the final state
// goes out at once.
func TestProgressIsReportedAndRateLimited(t *testing.T) {
	f := newFixture(t)
	f.policy(t, "p.yaml", "apiVersion: twinlet.dev/v1\nkind: DevicePolicy\nmetadata: { name: p }\nspec:\n  notes: { big: data }\n")
	var clock atomic.Int64
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var mu sync.Mutex
	var docs []string
	r := f.new(t, func(o *Options) {
		o.Providers = []providers.Info{{ID: "notes", Kind: providers.Collection, Schema: noteSchema,
			New: func() providers.Provider { return progressive{clock: &clock} }}}
		o.Now = func() time.Time { return t0.Add(time.Duration(clock.Load()) * time.Second) }
		o.OnReport = func(doc []byte) { mu.Lock(); docs = append(docs, string(doc)); mu.Unlock() }
	})
	r.ReconcileAll(context.Background(), false)
	mu.Lock()
	defer mu.Unlock()
	var progress []Status
	for _, d := range docs {
		var doc map[string]struct {
			Status Status `json:"__status"`
		}
		json.Unmarshal([]byte(d), &doc)
		if st := doc["notes"].Status; st.Reason == ReasonInProgress {
			if st.State != StateReconciling || st.Progress == nil {
				t.Fatalf("progress report: %+v", st)
			}
			progress = append(progress, st)
		}
	}
	// Steps at 2 s … 20 s with a 5 s interval: 2, 8, 14 and 20 go out.
	if len(progress) != 4 || *progress[0].Progress != (Progress{Step: "copy big", Done: 1, Total: 10}) || progress[3].Progress.Done != 10 {
		t.Fatalf("progress reports: %+v", progress)
	}
	last := docs[len(docs)-1]
	if !strings.Contains(last, `"reason":"Applied"`) || strings.Contains(last, `"progress"`) {
		t.Fatalf("final report: %s", last)
	}
	if f.read(t, "big") != "data" {
		t.Fatal("not applied")
	}
}

// A dry run (getPlan) never calls a provider while its section is being
// reconciled, and does not wait for it either.
func TestDryRunNeverOverlapsAReconcile(t *testing.T) {
	f := newFixture(t)
	g := newGate()
	f.policy(t, "p.yaml", "apiVersion: twinlet.dev/v1\nkind: DevicePolicy\nmetadata: { name: p }\nspec:\n  slow: { a: one }\n")
	r := f.new(t, func(o *Options) {
		o.Providers = []providers.Info{g.provider("slow", 0)}
		o.CallTimeout = time.Minute
	})
	runLoop(t, r)
	<-g.started
	rep := r.ReconcileAll(context.Background(), true)
	if s := section(rep, "slow"); s.Status.Reason != ReasonInProgress {
		t.Fatalf("dry run during a reconcile: %+v", s.Status)
	}
	if g.max.Load() != 1 {
		t.Fatalf("%d provider calls at once", g.max.Load())
	}
	close(g.ch)
	testutil.Eventually(t, "converged", func() bool { return resultOf(r, "slow").State == StateReady })
}

// A dry run does not spend the "which sections changed" signal: the loop
// still sees the change.
func TestDryRunKeepsTheChangeSignal(t *testing.T) {
	f := newFixture(t)
	twin := filepath.Join(t.TempDir(), "twin.json")
	os.WriteFile(twin, []byte(`{"notes":{"a":"one"},"$version":1}`), 0o644)
	r := f.new(t, func(o *Options) { o.TwinDesiredFile = twin })
	r.ReconcileAll(context.Background(), false)
	os.WriteFile(twin, []byte(`{"notes":{"a":"two"},"$version":2}`), 0o644)
	if err := r.loadSources(); err != nil {
		t.Fatal(err)
	}
	r.ReconcileAll(context.Background(), true) // getPlan
	changed, err := r.Reload()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(changed, ",") != "notes" {
		t.Fatalf("changed after a dry run = %v, want notes", changed)
	}
}

// Ready is not enough: the dependency must be Ready for its current
// desired input.
func TestDependencyMustBeReadyForTheSameInput(t *testing.T) {
	f := newFixture(t)
	f.policy(t, "p.yaml", "apiVersion: twinlet.dev/v1\nkind: DevicePolicy\nmetadata: { name: p }\nspec:\n  notes: { a: one }\n  later: { b: two }\n")
	r := f.new(t)
	if rep := r.ReconcileAll(context.Background(), false); !rep.AllReady() {
		t.Fatalf("first pass: %+v", rep.Summary)
	}
	f.policy(t, "p.yaml", "apiVersion: twinlet.dev/v1\nkind: DevicePolicy\nmetadata: { name: p }\nspec:\n  notes: { a: uno }\n  later: { b: dos }\n")
	if _, err := r.Reload(); err != nil {
		t.Fatal(err)
	}
	if s := r.ReconcileSection(context.Background(), "later", false); s.Status.State != StateWaiting || f.read(t, "b") != "two" {
		t.Fatalf("later ran before notes took its new input: %+v", s.Status)
	}
	r.ReconcileSection(context.Background(), "notes", false)
	if s := r.ReconcileSection(context.Background(), "later", false); s.Status.State != StateReady || f.read(t, "b") != "dos" {
		t.Fatalf("later after notes: %+v", s.Status)
	}
}

// One pass over every section (`twinlet apply --once`, `twinlet plan`)
// runs them side by side too: a section whose provider hangs until its
// timeout holds back only the sections that depend on it.
func TestReconcileAllDoesNotWaitForAHungSection(t *testing.T) {
	f := newFixture(t)
	g := newGate() // never opened
	f.policy(t, "p.yaml", "apiVersion: twinlet.dev/v1\nkind: DevicePolicy\nmetadata: { name: p }\nspec:\n  stuck: { x: y }\n  after: { x: y }\n  notes: { greeting: hello }\n")
	var mu sync.Mutex
	var ended []string
	r := f.new(t, func(o *Options) {
		o.CallTimeout = 0
		// stuck comes first in the order and blocks for its whole
		// timeout; after depends on it.
		o.Providers = []providers.Info{g.provider("stuck", 3*time.Second), g.provider("after", time.Hour, "stuck"), testProviders()[0]}
		o.OnSection = func(res *SectionResult, _ time.Duration) {
			mu.Lock()
			ended = append(ended, res.ID)
			mu.Unlock()
		}
	})
	rep := r.ReconcileAll(context.Background(), false)
	if got := strings.Join(ended, ","); got != "notes,stuck,after" {
		t.Fatalf("sections ended in the order %s, want notes,stuck,after", got)
	}
	if st := section(rep, "notes").Status; st.State != StateReady || f.read(t, "greeting") != "hello" {
		t.Fatalf("notes = %+v", st)
	}
	if st := section(rep, "after").Status; st.Reason != ReasonDependencyNotReady {
		t.Fatalf("after = %+v, want waiting for stuck", st)
	}
	var ids []string
	for _, s := range rep.Sections {
		ids = append(ids, s.ID)
	}
	if got := strings.Join(ids, ","); got != "stuck,after,notes" {
		t.Fatalf("report order %s, want the dependency order stuck,after,notes", got)
	}
}
