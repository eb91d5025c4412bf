package reboot

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twinlet/twinlet/providers"
	"github.com/twinlet/twinlet/providers/providertest"
)

// clock is a fake clock for Env.Now.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time  { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Set(t time.Time) { c.mu.Lock(); c.t = t; c.mu.Unlock() }

// zone is a fixed zone, so that the tests do not depend on the machine's.
var zone = time.FixedZone("UTC+1", 3600)

func at(s string) time.Time {
	t, err := time.ParseInLocation("2006-01-02 15:04", s, zone)
	if err != nil {
		panic(err)
	}
	return t
}

// boot writes the kernel's boot id and boot time into the sandbox root.
func boot(t *testing.T, env *providers.Env, id string, when time.Time) {
	t.Helper()
	for p, data := range map[string]string{
		"proc/sys/kernel/random/boot_id": id + "\n",
		"proc/stat":                      fmt.Sprintf("cpu  1 2 3 4\nbtime %d\nprocesses 42\n", when.Unix()),
	} {
		p = filepath.Join(env.Root, p)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

type fixture struct {
	env     *providers.Env
	clock   *clock
	latch   []string
	requeue []time.Duration
	mu      sync.Mutex
}

func newFixture(t *testing.T, now time.Time) *fixture {
	f := &fixture{env: providertest.NewEnv(t), clock: &clock{t: now}}
	f.env.Now = f.clock.Now
	f.env.CloudAllowed = true
	f.env.RebootRequired = func() []string { f.mu.Lock(); defer f.mu.Unlock(); return f.latch }
	f.env.RequeueAfter = func(d time.Duration) { f.mu.Lock(); f.requeue = append(f.requeue, d); f.mu.Unlock() }
	return f
}

func (f *fixture) lastRequeue(t *testing.T) time.Duration {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.requeue) == 0 {
		t.Fatal("no requeue asked")
	}
	return f.requeue[len(f.requeue)-1]
}

func (f *fixture) record(t *testing.T) *record {
	t.Helper()
	rec, err := loadRecord(f.env)
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

func TestRegistered(t *testing.T) {
	info, ok := providers.Lookup(ID)
	if !ok || info.Kind != providers.Object || !info.RebootPolicy || info.Methods["now"].Call == nil {
		t.Fatalf("Lookup(%q) = %+v, %v", ID, info, ok)
	}
}

func TestScheduledReboot(t *testing.T) {
	p, f := New(), newFixture(t, at("2026-12-23 22:00"))
	boot(t, f.env, "boot-1", at("2026-12-20 08:00"))
	raw := json.RawMessage(`{"at": "2026-12-24T03:00:00+01:00"}`)

	// Before its time: scheduled, and the runtime is asked to come back
	// at 03:00.
	if got := providertest.PlanOnly(t, p, f.env, raw); len(got) != 0 {
		t.Fatalf("plan before the time %q", providertest.Lines(got))
	}
	if d := f.lastRequeue(t); d != 5*time.Hour {
		t.Fatalf("requeue after %v, want 5h", d)
	}
	obs := providertest.ObserveJSON(t, p, f.env, raw)
	if obs["nextReboot"] != "2026-12-24T02:00:00Z" || obs["bootId"] != "boot-1" || obs["lastBootTime"] != "2026-12-20T07:00:00Z" ||
		!reflect.DeepEqual(obs["pending"], map[string]any{"state": "Scheduled", "reason": "scheduled for 2026-12-24T03:00:00+01:00", "at": "2026-12-24T02:00:00Z"}) {
		t.Fatalf("observed %v", obs)
	}

	// At 03:00: the reboot is recorded (a sandbox root), once.
	f.clock.Set(at("2026-12-24 03:00"))
	changes := providertest.Converge(t, p, f.env, raw)
	if got := providertest.Lines(changes); !reflect.DeepEqual(got, []string{"~ reboot: running since 2026-12-20T07:00:00Z -> reboot now: scheduled for 2026-12-24T03:00:00+01:00"}) {
		t.Fatalf("plan at the time %q", got)
	}
	rec := f.record(t)
	if rec.Rebooting == nil || !rec.Rebooting.Recorded || rec.Rebooting.Executed || rec.Rebooting.BootID != "boot-1" || !reflect.DeepEqual(rec.Rebooting.By, []string{"at"}) {
		t.Fatalf("record %+v", rec.Rebooting)
	}
	if p := providertest.ObserveJSON(t, p, f.env, raw)["pending"].(map[string]any); p["state"] != "Recorded" {
		t.Fatalf("pending %v", p)
	}

	// The device comes back 90 seconds later with a new boot id: the
	// reboot is done, with its duration, and the schedule is Done.
	f.clock.Set(at("2026-12-24 03:05"))
	boot(t, f.env, "boot-2", at("2026-12-24 03:00").Add(90*time.Second))
	changes = providertest.Converge(t, p, f.env, raw)
	if got := providertest.Lines(changes); !reflect.DeepEqual(got, []string{"~ lastReboot: rebooting since 2026-12-24T02:00:00Z -> done: booted boot-2 after 90s"}) {
		t.Fatalf("plan after the boot %q", got)
	}
	obs = providertest.ObserveJSON(t, p, f.env, raw)
	last := obs["lastReboot"].(map[string]any)
	if last["durationSeconds"] != float64(90) || last["newBootId"] != "boot-2" || last["reason"] != "scheduled for 2026-12-24T03:00:00+01:00" ||
		obs["pending"] != nil || !reflect.DeepEqual(obs["scheduled"], map[string]any{"at": "2026-12-24T02:00:00Z", "state": "Done"}) {
		t.Fatalf("observed after the boot %v", obs)
	}
}

func TestMissedScheduleAndDaily(t *testing.T) {
	p, f := New(), newFixture(t, at("2026-12-24 05:00"))
	boot(t, f.env, "boot-1", at("2026-12-20 08:00"))
	// The agent was not running at 03:00 and catchUp is 1h: missed, not
	// carried out hours late.
	raw := json.RawMessage(`{"at": "2026-12-24T03:00:00+01:00", "daily": "04:30"}`)
	if got := providertest.PlanOnly(t, p, f.env, raw); len(got) != 1 || !strings.Contains(got[0].String(), "daily at 04:30") {
		t.Fatalf("plan %q", providertest.Lines(got))
	}
	obs := providertest.ObserveJSON(t, p, f.env, raw)
	if obs["scheduled"].(map[string]any)["state"] != "Missed" {
		t.Fatalf("observed %v", obs)
	}
	// With a short catch-up, 04:30 is missed at 05:00 too: next is
	// tomorrow's.
	raw = json.RawMessage(`{"daily": "04:30", "catchUp": "15m"}`)
	if got := providertest.PlanOnly(t, p, f.env, raw); len(got) != 0 {
		t.Fatalf("plan %q", providertest.Lines(got))
	}
	if obs := providertest.ObserveJSON(t, p, f.env, raw); obs["nextReboot"] != "2026-12-25T03:30:00Z" {
		t.Fatalf("observed %v", obs)
	}
	if d := f.lastRequeue(t); d != 23*time.Hour+30*time.Minute {
		t.Fatalf("requeue %v", d)
	}
	// Daily reboots happen every day, once each.
	f.clock.Set(at("2026-12-25 04:31"))
	providertest.Converge(t, p, f.env, raw)
	boot(t, f.env, "boot-2", at("2026-12-25 04:32"))
	f.clock.Set(at("2026-12-25 04:40"))
	if got := providertest.Lines(providertest.Converge(t, p, f.env, raw)); len(got) != 1 || !strings.HasPrefix(got[0], "~ lastReboot:") {
		t.Fatalf("after the boot %q", got)
	}
	f.clock.Set(at("2026-12-26 04:30"))
	if got := providertest.Lines(providertest.Converge(t, p, f.env, raw)); len(got) != 1 || !strings.HasPrefix(got[0], "~ reboot:") {
		t.Fatalf("the next day %q", got)
	}
}

func TestWindowWaitsForLatch(t *testing.T) {
	// Friday 23:00; the window opens on Saturdays and Sundays at 02:00.
	p, f := New(), newFixture(t, at("2026-12-25 23:00"))
	boot(t, f.env, "boot-1", at("2026-12-20 08:00"))
	raw := json.RawMessage(`{"maintenanceWindow": {"start": "02:00", "duration": "2h", "days": ["Sat", "Sun"]}}`)
	if got := providertest.PlanOnly(t, p, f.env, raw); len(got) != 0 {
		t.Fatalf("plan without the latch %q", providertest.Lines(got))
	}
	f.latch = []string{"packages", "sysctl"}
	if got := providertest.PlanOnly(t, p, f.env, raw); len(got) != 0 {
		t.Fatalf("plan outside the window %q", providertest.Lines(got))
	}
	if d := f.lastRequeue(t); d != 3*time.Hour {
		t.Fatalf("requeue %v, want 3h (Saturday 02:00)", d)
	}
	obs := providertest.ObserveJSON(t, p, f.env, raw)
	if obs["rebootRequired"] != true || !reflect.DeepEqual(obs["requiredBy"], []any{"packages", "sysctl"}) || obs["windowOpen"] != false ||
		obs["nextWindow"] != "2026-12-26T01:00:00Z" || obs["pending"].(map[string]any)["state"] != "Scheduled" {
		t.Fatalf("observed %v", obs)
	}
	// Saturday 04:00 is past the window's end; 03:59 is in it.
	f.clock.Set(at("2026-12-26 04:00"))
	if got := providertest.PlanOnly(t, p, f.env, raw); len(got) != 0 {
		t.Fatalf("plan after the window %q", providertest.Lines(got))
	}
	f.clock.Set(at("2026-12-26 03:59"))
	got := providertest.Lines(providertest.Converge(t, p, f.env, raw))
	if !reflect.DeepEqual(got, []string{"~ reboot: running since 2026-12-20T07:00:00Z -> reboot now: required by packages, sysctl (maintenance window)"}) {
		t.Fatalf("plan in the window %q", got)
	}
	if rec := f.record(t); !reflect.DeepEqual(rec.Rebooting.By, []string{"packages", "sysctl"}) {
		t.Fatalf("record %+v", rec.Rebooting)
	}
	// whenRequired: never only reports the latch.
	never := json.RawMessage(`{"maintenanceWindow": {"start": "02:00", "duration": "2h"}, "whenRequired": "never"}`)
	os.Remove(filepath.Join(f.env.StateDir, StateFile))
	if got := providertest.PlanOnly(t, p, f.env, never); len(got) != 0 {
		t.Fatalf("plan with never %q", providertest.Lines(got))
	}
	// A window across midnight, opening on Sunday, is open on Monday
	// 00:30.
	late := json.RawMessage(`{"maintenanceWindow": {"start": "23:00", "duration": "2h", "days": ["Sun"]}}`)
	f.clock.Set(at("2026-12-28 00:30"))
	if got := providertest.PlanOnly(t, p, f.env, late); len(got) != 1 {
		t.Fatalf("plan across midnight %q", providertest.Lines(got))
	}
}

func TestNowMethod(t *testing.T) {
	p, f := New(), newFixture(t, at("2026-12-24 12:00"))
	boot(t, f.env, "boot-1", at("2026-12-20 08:00"))
	out, err := callNow(context.Background(), f.env, json.RawMessage(`{"delay": 300, "reason": "kernel update"}`))
	if err != nil {
		t.Fatal(err)
	}
	if res := out.(*NowResult); res.ScheduledFor != "2026-12-24T11:05:00Z" || !res.Sandbox {
		t.Fatalf("result %+v", res)
	}
	if d := f.lastRequeue(t); d != 5*time.Minute {
		t.Fatalf("requeue %v", d)
	}
	raw := json.RawMessage(`{}`)
	if got := providertest.PlanOnly(t, p, f.env, raw); len(got) != 0 {
		t.Fatalf("plan before the delay %q", providertest.Lines(got))
	}
	f.clock.Set(at("2026-12-24 12:05"))
	if got := providertest.Lines(providertest.Converge(t, p, f.env, raw)); !reflect.DeepEqual(got, []string{"~ reboot: running since 2026-12-20T07:00:00Z -> reboot now: kernel update"}) {
		t.Fatalf("plan after the delay %q", got)
	}
	if rec := f.record(t); rec.Request != nil || rec.Rebooting == nil || !reflect.DeepEqual(rec.Rebooting.By, []string{"reboot.now"}) {
		t.Fatalf("record %+v", rec)
	}
	// A second request while the first is under way in this boot.
	_, err = callNow(context.Background(), f.env, json.RawMessage(`{"reason": "again"}`))
	var me *providers.MethodError
	if !errors.As(err, &me) || me.Status != 409 {
		t.Fatalf("second request: %v", err)
	}
	// The cloud scope: denied "now", or the section not the cloud's.
	f.env.CloudRules = providers.ScopeRules{Deny: []string{"now"}}
	if _, err := callNow(context.Background(), f.env, json.RawMessage(`{"reason": "x"}`)); !errors.As(err, &me) || me.Status != 403 {
		t.Fatalf("denied: %v", err)
	}
	f.env.CloudRules, f.env.CloudAllowed = providers.ScopeRules{}, false
	if _, err := callNow(context.Background(), f.env, json.RawMessage(`{"reason": "x"}`)); !errors.As(err, &me) || me.Status != 403 {
		t.Fatalf("not in cloud.sections: %v", err)
	}
}

// recorder stands in for systemctl and shutdown: a test must never reboot
// the machine it runs on.
type recorder struct {
	mu    sync.Mutex
	calls [][]string
	fail  map[string]bool
}

func (r *recorder) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, append([]string{name}, args...))
	if r.fail[name] {
		return nil, fmt.Errorf("run %s: exit status 1", name)
	}
	return nil, nil
}

// TestHostCommand checks the argv a reboot of the running system would
// run, without running it: the root is "/" for IsHostRoot, and the
// runner records instead of executing: a real `systemctl reboot` would
// reboot the machine the tests run on. Nothing is written outside the
// state directory.
func TestHostCommand(t *testing.T) {
	for _, tc := range []struct {
		fail map[string]bool
		want [][]string
	}{
		{nil, [][]string{{"systemctl", "reboot", "--message=twinlet: required by sysctl"}}},
		{map[string]bool{"systemctl": true}, [][]string{{"systemctl", "reboot", "--message=twinlet: required by sysctl"}, {"shutdown", "-r", "now", "twinlet: required by sysctl"}}},
	} {
		env := providertest.NewEnv(t)
		env.Root = "/"
		run := &recorder{fail: tc.fail}
		env.Runner = run
		c := providers.Change{Action: providers.Update, Item: "reboot", Data: op{reboot: &due{reason: "required by sysctl", by: []string{"sysctl"}, bootID: "b1"}}}
		for range 2 { // idempotent: the second Apply runs nothing
			if err := (Provider{}).Apply(context.Background(), env, c); err != nil {
				t.Fatal(err)
			}
		}
		if !reflect.DeepEqual(run.calls, tc.want) {
			t.Fatalf("ran %q, want %q", run.calls, tc.want)
		}
		rec, _ := loadRecord(env)
		if r := rec.Rebooting; r == nil || !r.Executed || r.Recorded || !reflect.DeepEqual(r.Command, tc.want[len(tc.want)-1]) {
			t.Fatalf("record %+v", rec.Rebooting)
		}
	}
}

// TestCrashBeforeCommand: the agent stopped after recording the reboot
// and before the command ran; the next reconcile runs it.
func TestCrashBeforeCommand(t *testing.T) {
	env := providertest.NewEnv(t)
	now := at("2026-12-24 12:00")
	env.Now = func() time.Time { return now }
	if err := saveRecord(env, &record{Rebooting: &Reboot{RequestedAt: now.Add(-time.Minute), Reason: "kernel update", By: []string{"reboot.now"}}}); err != nil {
		t.Fatal(err)
	}
	env.Root = "/" // boot id read from the machine: the same boot
	if id, _, _ := bootInfo(env, now); id == "" {
		t.Skip("no /proc/sys/kernel/random/boot_id here")
	}
	rec, _ := loadRecord(env)
	id, _, _ := bootInfo(env, now)
	rec.Rebooting.BootID = id
	saveRecord(env, rec)
	run := &recorder{}
	env.Runner = run
	obs, err := (Provider{}).Observe(context.Background(), env, Spec{WhenRequired: WhenNever})
	if err != nil {
		t.Fatal(err)
	}
	plan, _ := (Provider{}).Plan(Spec{}, obs)
	if len(plan) != 1 || !strings.Contains(plan[0].String(), "again: the command did not run") {
		t.Fatalf("plan %q", providertest.Lines(plan))
	}
	if err := (Provider{}).Apply(context.Background(), env, plan[0]); err != nil {
		t.Fatal(err)
	}
	rec, _ = loadRecord(env)
	if len(run.calls) != 1 || !rec.Rebooting.Executed || !rec.Rebooting.RequestedAt.Equal(now.Add(-time.Minute)) {
		t.Fatalf("calls %q, record %+v", run.calls, rec.Rebooting)
	}
}

func TestInvalid(t *testing.T) {
	p, env := New(), providertest.NewEnv(t)
	for _, tc := range []struct{ raw, ptr string }{
		{`{"at": "tomorrow"}`, "/at"},
		{`{"daily": "25:00"}`, "/daily"},
		{`{"daily": "4:30"}`, "/daily"},
		{`{"maintenanceWindow": {"start": "02:00", "duration": "0s"}}`, "/maintenanceWindow/duration"},
		{`{"maintenanceWindow": {"start": "02:00", "duration": "2h", "days": ["Sat", "Funday"]}}`, "/maintenanceWindow/days/1"},
		{`{"maintenanceWindow": {"start": "2am", "duration": "2h"}}`, "/maintenanceWindow/start"},
		{`{"whenRequired": "window"}`, "/whenRequired"},
		{`{"whenRequired": "later"}`, "/whenRequired"},
		{`{"catchUp": "forever"}`, "/catchUp"},
	} {
		_, err := p.Decode(env, json.RawMessage(tc.raw))
		if got := providertest.Invalid(t, err); !reflect.DeepEqual(got, []string{tc.ptr}) {
			t.Errorf("%s: pointers %v, want %s (%v)", tc.raw, got, tc.ptr, err)
		}
	}
}

func TestCloudScope(t *testing.T) {
	twin := json.RawMessage(`{"daily": "04:00", "maintenanceWindow": {"start": "02:00", "duration": "1h"}}`)
	if got := (Provider{}).CloudScope(providers.ScopeRules{}, twin); len(got) != 0 {
		t.Fatalf("default scope forbids %v", got)
	}
	got := (Provider{}).CloudScope(providers.ScopeRules{Allow: []string{"maintenanceWindow"}}, twin)
	if len(got) != 1 || got[0].Pointer != "/daily" {
		t.Fatalf("allow maintenanceWindow forbids %v", got)
	}
}
