package reconciler

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/twinlet/twinlet/internal/testutil"
	"github.com/twinlet/twinlet/providers"
	"github.com/twinlet/twinlet/state"
)

// onceProv runs each item once, as a later commands provider will: Apply
// appends the item to <root>/runs.log before it does anything else, and
// the value "hang" then blocks until cancelled. Its Observe reports the
// interrupted items; its Plan plans them all the same, so that the test
// shows the runtime itself never runs them twice.
type onceProv struct{ note }

func (onceProv) Observe(ctx context.Context, env *providers.Env, spec providers.Spec) (providers.Observed, error) {
	s := spec.(noteSpec)
	o := noteObs{Items: map[string]string{}}
	for k := range s.items {
		if env.Interrupted[k] {
			o.Items[k] = "Interrupted"
		} else if b, err := os.ReadFile(filepath.Join(env.Root, "etc/notes", k)); err == nil {
			o.Items[k] = string(b)
		}
	}
	return o, nil
}

func (onceProv) Plan(spec providers.Spec, obs providers.Observed) ([]providers.Change, error) {
	s, o := spec.(noteSpec), obs.(noteObs)
	var out []providers.Change
	for _, k := range sortedKeys(s.items) {
		if o.Items[k] != s.items[k] {
			out = append(out, providers.Change{Action: providers.Create, Item: k, Key: k, Once: true, Data: s.items[k]})
		}
	}
	return out, nil
}

func (p onceProv) Apply(ctx context.Context, env *providers.Env, c providers.Change) error {
	f, err := os.OpenFile(filepath.Join(env.Root, "runs.log"), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	_, err = f.WriteString(c.Item + "\n")
	if err == nil {
		err = f.Sync()
	}
	f.Close()
	if err != nil {
		return err
	}
	if c.Data.(string) == "hang" {
		<-ctx.Done()
		return ctx.Err()
	}
	return p.note.Apply(ctx, env, c)
}

func onceProviders() []providers.Info {
	return []providers.Info{{ID: "once", Kind: providers.Collection, Schema: noteSchema, New: func() providers.Provider { return onceProv{} }}}
}

const onceChildEnv = "RECONCILER_ONCE_CHILD"

// TestOnceChild is the agent that the kill test kills: it is not a test
// of its own.
func TestOnceChild(t *testing.T) {
	v := os.Getenv(onceChildEnv)
	if v == "" {
		t.Skip("helper process of TestOnceChangeIsNotRunTwiceAfterAKill")
	}
	var f fixture
	json.Unmarshal([]byte(v), &[]*string{&f.root, &f.stateDir, &f.policyDir})
	r, err := New(Options{Root: f.root, StateDir: f.stateDir, PolicyDir: f.policyDir, Providers: onceProviders(),
		Logger: slog.New(slog.DiscardHandler), CallTimeout: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	r.ReconcileAll(context.Background(), false) // hangs until killed
	t.Fatal("the hanging change returned")
}

func (f *fixture) runs(t *testing.T) string {
	b, _ := os.ReadFile(filepath.Join(f.root, "runs.log"))
	return string(b)
}

// A change that must run once, cut off by a kill -9 while it runs, is
// not run again by the next start: it is reported Interrupted, the
// provider sees it in Env.Interrupted, and it stays so across restarts
// until nothing desires the section any more.
func TestOnceChangeIsNotRunTwiceAfterAKill(t *testing.T) {
	f := newFixture(t)
	f.policy(t, "p.yaml", "apiVersion: twinlet.dev/v1\nkind: DevicePolicy\nmetadata: { name: p }\nspec:\n  once: { job: hang }\n")
	arg, _ := json.Marshal([]string{f.root, f.stateDir, f.policyDir})
	cmd := exec.Command(os.Args[0], "-test.run=^TestOnceChild$")
	cmd.Env = append(os.Environ(), onceChildEnv+"="+string(arg))
	var out testutil.SyncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, "the change runs in the child", func() bool { return f.runs(t) == "job\n" })
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	st, _ := (&state.Store{Dir: f.stateDir}).Load()
	if got := st.Sections["once"].InFlight; len(got) != 1 || got[0] != "job" {
		t.Fatalf("in flight at the kill: %v\n%s", got, out.String())
	}

	for i := 0; i < 2; i++ { // a start, and another
		r := f.new(t, func(o *Options) { o.Providers = onceProviders() })
		for j := 0; j < 2; j++ {
			s := section(r.ReconcileAll(context.Background(), false), "once")
			if s.Status.State != StateFailed || s.Status.Reason != ReasonInterrupted || !strings.Contains(s.Status.Message, "job") {
				t.Fatalf("after the kill: %+v", s.Status)
			}
			if !strings.Contains(string(s.Observed), `"job":"Interrupted"`) {
				t.Fatalf("provider did not see the interruption: %s", s.Observed)
			}
		}
		if f.runs(t) != "job\n" {
			t.Fatalf("ran again: %q", f.runs(t))
		}
	}

	// Nothing desires it any more: forgotten. Desired again, it runs.
	f.policy(t, "p.yaml", "apiVersion: twinlet.dev/v1\nkind: DevicePolicy\nmetadata: { name: p }\nspec: {}\n")
	f.new(t, func(o *Options) { o.Providers = onceProviders() }).ReconcileAll(context.Background(), false)
	f.policy(t, "p.yaml", "apiVersion: twinlet.dev/v1\nkind: DevicePolicy\nmetadata: { name: p }\nspec:\n  once: { job: fine }\n")
	s := section(f.new(t, func(o *Options) { o.Providers = onceProviders() }).ReconcileAll(context.Background(), false), "once")
	if s.Status.State != StateReady || f.runs(t) != "job\njob\n" {
		t.Fatalf("desired again: %+v, runs %q", s.Status, f.runs(t))
	}
	st, _ = (&state.Store{Dir: f.stateDir}).Load()
	if sec := st.Sections["once"]; len(sec.InFlight) != 0 || len(sec.Interrupted) != 0 {
		t.Fatalf("records left: %+v", sec)
	}
}
