package reboot

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/twinlet/twinlet/providers"
	"github.com/twinlet/twinlet/reconciler"
)

// kmod is a test provider whose change needs a reboot (a kernel module
// option, say): it writes <root>/etc/kmod.conf and latches.
type kmod struct{}

func (kmod) Decode(env *providers.Env, raw json.RawMessage) (providers.Spec, error) {
	return string(raw), nil
}

func (kmod) Observe(ctx context.Context, env *providers.Env, spec providers.Spec) (providers.Observed, error) {
	b, _ := os.ReadFile(filepath.Join(env.Root, "etc/kmod.conf"))
	return map[string]string{"conf": string(b)}, nil
}

func (kmod) Plan(spec providers.Spec, observed providers.Observed) ([]providers.Change, error) {
	if observed.(map[string]string)["conf"] == spec.(string) {
		return nil, nil
	}
	return []providers.Change{{Action: providers.Update, Item: "conf", After: spec.(string), RebootRequired: true, Data: spec}}, nil
}

func (kmod) Apply(ctx context.Context, env *providers.Env, c providers.Change) error {
	os.MkdirAll(filepath.Join(env.Root, "etc"), 0o755)
	return os.WriteFile(filepath.Join(env.Root, "etc/kmod.conf"), []byte(c.Data.(string)), 0o644)
}

type doc struct {
	Summary struct {
		RebootRequired   bool   `json:"rebootRequired"`
		RebootRequiredBy string `json:"rebootRequiredBy"`
	} `json:"__summary"`
	Reboot struct {
		Status struct {
			State, Reason string
		} `json:"__status"`
		RebootRequired bool     `json:"rebootRequired"`
		RequiredBy     []string `json:"requiredBy"`
		Pending        *Pending `json:"pending"`
		LastReboot     *Reboot  `json:"lastReboot"`
	} `json:"reboot"`
}

func document(t *testing.T, rep *reconciler.Report) doc {
	t.Helper()
	var d doc
	if err := json.Unmarshal(rep.Document, &d); err != nil {
		t.Fatal(err)
	}
	return d
}

// TestLatchThroughRuntime drives the real reconciler: a section's change
// latches "reboot required" (a section whose id sorts after "reboot", so
// that the pass must run the reboot policy after it, not in id order),
// the reboot section waits for the window,
// records the reboot in it, and a new boot id clears the latch and reports
// the reboot done with its duration.
func TestLatchThroughRuntime(t *testing.T) {
	root, stateDir := t.TempDir(), t.TempDir()
	twin := filepath.Join(t.TempDir(), "twin.json")
	os.WriteFile(twin, []byte(`{"zkmod": {"option": "a"}, "reboot": {"maintenanceWindow": {"start": "02:00", "duration": "2h"}}}`), 0o600)
	clk := &clock{t: at("2026-12-25 23:00")}
	env := &providers.Env{Root: root}
	boot(t, env, "boot-1", at("2026-12-20 08:00"))
	info, _ := providers.Lookup(ID)
	infos := []providers.Info{info, {ID: "zkmod", Kind: providers.Object, Schema: json.RawMessage(`{"type": "object"}`), New: func() providers.Provider { return kmod{} }}}
	opts := reconciler.Options{Root: root, StateDir: stateDir, TwinDesiredFile: twin, Providers: infos, Now: clk.Now,
		Logger: slog.New(slog.DiscardHandler), CallTimeout: 5 * time.Second}
	r, err := reconciler.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	d := document(t, r.ReconcileAll(ctx, false))
	if !d.Summary.RebootRequired || d.Summary.RebootRequiredBy != "zkmod" || !reflect.DeepEqual(d.Reboot.RequiredBy, []string{"zkmod"}) ||
		d.Reboot.Pending == nil || d.Reboot.Pending.State != "Scheduled" || d.Reboot.Pending.At != "2026-12-26T01:00:00Z" {
		t.Fatalf("before the window: %+v", d)
	}
	if _, err := os.Stat(filepath.Join(stateDir, StateFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a reboot was recorded outside the window: %v", err)
	}

	// The window opens: the reboot is recorded (a sandbox root).
	clk.Set(at("2026-12-26 02:00"))
	d = document(t, r.ReconcileAll(ctx, false))
	if d.Reboot.Pending == nil || d.Reboot.Pending.State != "Recorded" || d.Reboot.Status.State != reconciler.StateReady {
		t.Fatalf("in the window: %+v", d.Reboot)
	}
	d = document(t, r.ReconcileAll(ctx, false)) // not twice
	if d.Reboot.Pending.State != "Recorded" || d.Reboot.Status.Reason != reconciler.ReasonUnchanged {
		t.Fatalf("again in the window: %+v", d.Reboot)
	}

	// The machine "reboots": a new boot id. The latch clears and the
	// reboot is reported done.
	clk.Set(at("2026-12-26 02:03"))
	boot(t, env, "boot-2", at("2026-12-26 02:01"))
	d = document(t, r.ReconcileAll(ctx, false))
	if d.Summary.RebootRequired || d.Reboot.RebootRequired || d.Reboot.Pending != nil || d.Reboot.LastReboot == nil ||
		*d.Reboot.LastReboot.DurationSeconds != 60 || d.Reboot.LastReboot.NewBootID != "boot-2" ||
		!reflect.DeepEqual(d.Reboot.LastReboot.By, []string{"zkmod"}) {
		t.Fatalf("after the boot: %+v %+v", d.Summary, d.Reboot)
	}

	// Another change latches in the same window: no second reboot sooner
	// than LatchInterval after the last one.
	os.WriteFile(twin, []byte(`{"zkmod": {"option": "b"}, "reboot": {"maintenanceWindow": {"start": "02:00", "duration": "2h"}}}`), 0o600)
	if _, err := r.Reload(); err != nil {
		t.Fatal(err)
	}
	d = document(t, r.ReconcileAll(ctx, false))
	if !d.Summary.RebootRequired || d.Reboot.Pending == nil || d.Reboot.Pending.State != "Scheduled" || d.Reboot.Pending.At != "2026-12-26T01:30:00Z" {
		t.Fatalf("latched again: %+v", d.Reboot.Pending)
	}
	clk.Set(at("2026-12-26 02:30"))
	if d = document(t, r.ReconcileAll(ctx, false)); d.Reboot.Pending == nil || d.Reboot.Pending.State != "Recorded" {
		t.Fatalf("after the guard: %+v", d.Reboot.Pending)
	}
	os.Remove(filepath.Join(stateDir, StateFile))

	// reboot.now through the runtime: a bad payload is located, the
	// cloud scope is obeyed.
	_, err = r.CallMethod(ctx, ID, "now", json.RawMessage(`{"delay": "soon", "reason": "x"}`))
	var inv *providers.InvalidError
	if !errors.As(err, &inv) || inv.Errors[0].Pointer != "/delay" {
		t.Fatalf("bad payload: %v", err)
	}
	if _, err := r.CallMethod(ctx, ID, "now", json.RawMessage(`{"delay": 0}`)); !errors.As(err, &inv) {
		t.Fatalf("no reason: %v", err)
	}
	out, err := r.CallMethod(ctx, ID, "now", json.RawMessage(`{"delay": 60, "reason": "support asked"}`))
	if err != nil || out.(*NowResult).ScheduledFor != "2026-12-26T01:31:00Z" {
		t.Fatalf("reboot.now: %+v, %v", out, err)
	}
	opts.CloudRules = map[string]providers.ScopeRules{ID: {Deny: []string{"now"}}}
	r2, err := reconciler.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	var me *providers.MethodError
	if _, err := r2.CallMethod(ctx, ID, "now", json.RawMessage(`{"reason": "x"}`)); !errors.As(err, &me) || me.Status != 403 {
		t.Fatalf("denied by the config: %v", err)
	}
}

// TestNowThroughLoop: reboot.now on a running loop is carried out by the
// section's next reconcile, which the method asks for (Env.Requeue).
func TestNowThroughLoop(t *testing.T) {
	root, stateDir := t.TempDir(), t.TempDir()
	env := &providers.Env{Root: root}
	boot(t, env, "boot-1", time.Now().Add(-time.Hour))
	info, _ := providers.Lookup(ID)
	r, err := reconciler.New(reconciler.Options{Root: root, StateDir: stateDir, Providers: []providers.Info{info},
		Logger: slog.New(slog.DiscardHandler), CallTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx, reconciler.RunOptions{Resync: time.Hour}) }()
	defer func() { cancel(); <-done }()
	state := func() string {
		var d doc
		if json.Unmarshal(r.Document(), &d) != nil || d.Reboot.Pending == nil {
			return ""
		}
		return d.Reboot.Pending.State
	}
	// The first pass publishes the section (nothing desires it).
	for deadline := time.Now().Add(30 * time.Second); r.Document() == nil; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no report")
		}
	}
	if _, err := r.CallMethod(ctx, ID, "now", json.RawMessage(`{"reason": "operator"}`)); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); state() != "Recorded"; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("reboot.now was not carried out: %s", r.Document())
		}
	}
}
