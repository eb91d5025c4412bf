package agent_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/twinlet/twinlet/internal/agent"
	"github.com/twinlet/twinlet/internal/hub"
	"github.com/twinlet/twinlet/internal/iothub"
	"github.com/twinlet/twinlet/internal/testutil"
	_ "github.com/twinlet/twinlet/providers/standard"
	"github.com/twinlet/twinlet/reconciler"
)

// childEnv carries the configuration of an agent run as a child process.
const childEnv = "TWINLET_AGENT_CHILD"

type childConfig struct {
	Root, State, Policy, Host, Addr, CAFile, Device string
	Key                                             []byte
}

func TestMain(m *testing.M) {
	if v := os.Getenv(childEnv); v != "" {
		var cc childConfig
		_ = json.Unmarshal([]byte(v), &cc)
		ca, _ := os.ReadFile(cc.CAFile)
		cs := iothub.ConnectionString{HostName: cc.Host, DeviceID: cc.Device, SharedAccessKey: cc.Key}
		_, _, run := build(cc.Root, cc.State, cc.Policy, cs, ca, cc.Addr, nil)
		os.Exit(run(context.Background()))
	}
	os.Exit(m.Run())
}

// build wires a reconciler and an agent the way `twinlet run` does.
func build(root, stateDir, policyDir string, cs iothub.ConnectionString, ca []byte, addr string, mod func(*iothub.DeviceConfig, *agent.Options)) (*reconciler.Reconciler, *agent.Agent, func(context.Context) int) {
	var a *agent.Agent
	log := slog.New(slog.DiscardHandler)
	if os.Getenv("TWINLET_TEST_LOG") != "" {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	r, err := reconciler.New(reconciler.Options{Root: root, StateDir: stateDir, PolicyDir: policyDir, Logger: log,
		OnReport: func(doc []byte) {
			if a != nil {
				a.Notify(doc)
			}
		}})
	if err != nil {
		panic(err)
	}
	cfg := iothub.DeviceConfig{HostName: cs.HostName, DeviceID: cs.DeviceID, Signer: iothub.KeySigner{Key: cs.SharedAccessKey},
		CAPEM: ca, Addr: addr, MinBackoff: 20 * time.Millisecond, MaxBackoff: 300 * time.Millisecond, RequestTimeout: 5 * time.Second}
	opts := agent.Options{StateDir: stateDir, Coalesce: 20 * time.Millisecond, MinBackoff: 50 * time.Millisecond, MaxBackoff: 500 * time.Millisecond, Logger: log}
	if mod != nil {
		mod(&cfg, &opts)
	}
	a, err = agent.New(r, cfg, opts)
	if err != nil {
		panic(err)
	}
	run := func(ctx context.Context) int {
		var wg sync.WaitGroup
		wg.Add(2)
		go func() {
			defer wg.Done()
			r.Run(ctx, reconciler.RunOptions{Resync: time.Hour, PolicyPoll: 100 * time.Millisecond})
		}()
		go func() { defer wg.Done(); a.Run(ctx) }()
		wg.Wait()
		return 0
	}
	return r, a, run
}

type env struct {
	t                   testing.TB
	h                   *hub.Hub
	dir                 string
	root, state, policy string
	cs                  iothub.ConnectionString
	mqttAddr, httpsAddr string
}

func newEnv(t testing.TB) *env {
	t.Helper()
	e := &env{t: t, dir: t.TempDir()}
	e.root, e.state, e.policy = filepath.Join(e.dir, "root"), filepath.Join(e.dir, "state"), filepath.Join(e.dir, "policy")
	for _, d := range []string{e.root, e.policy} {
		os.MkdirAll(d, 0o755)
	}
	e.startHub("127.0.0.1:0", "127.0.0.1:0")
	cs, err := e.h.CreateDevice("kiosk-17")
	if err != nil {
		t.Fatal(err)
	}
	e.cs = cs
	return e
}

func (e *env) startHub(mqttAddr, httpsAddr string) {
	e.t.Helper()
	e.startHubWith(mqttAddr, httpsAddr, hub.Faults{})
}

func (e *env) startHubWith(mqttAddr, httpsAddr string, faults hub.Faults) {
	e.t.Helper()
	h, err := hub.New(hub.Options{Dir: filepath.Join(e.dir, "hub"), MQTTAddr: mqttAddr, HTTPSAddr: httpsAddr, Faults: faults})
	if err != nil {
		e.t.Fatal(err)
	}
	if err := h.Start(context.Background()); err != nil {
		e.t.Fatal(err)
	}
	e.h = h
	e.mqttAddr, e.httpsAddr = h.MQTTAddr(), h.HTTPSAddr()
	e.t.Cleanup(func() { h.Close() })
}

func (e *env) agent(mod func(*iothub.DeviceConfig, *agent.Options)) (*reconciler.Reconciler, *agent.Agent) {
	e.t.Helper()
	r, a, run := build(e.root, e.state, e.policy, e.cs, e.h.CAPEM(), e.mqttAddr, mod)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); run(ctx) }()
	e.t.Cleanup(func() { cancel(); <-done })
	return r, a
}

func (e *env) desired(patch map[string]any) {
	e.t.Helper()
	p := hub.TwinPatch{}
	p.Properties = &struct {
		Desired map[string]any `json:"desired,omitempty"`
	}{Desired: patch}
	if _, err := e.h.UpdateTwin("kiosk-17", "", p, false, ""); err != nil {
		e.t.Fatal(err)
	}
}

// reported returns the twin's reported properties as JSON-decoded values.
func (e *env) reported() map[string]any {
	tw, err := e.h.Twin("kiosk-17", "")
	if err != nil {
		return nil
	}
	b, _ := json.Marshal(tw.Properties.Reported)
	var m map[string]any
	json.Unmarshal(b, &m)
	return m
}

func path(m map[string]any, keys ...string) any {
	var v any = m
	for _, k := range keys {
		mm, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = mm[k]
	}
	return v
}

func (e *env) file(p string) string {
	b, err := os.ReadFile(filepath.Join(e.root, p))
	if err != nil {
		return "<missing>"
	}
	return string(b)
}

func TestDesiredPatchBecomesReady(t *testing.T) {
	e := newEnv(t)
	_, a := e.agent(nil)
	e.desired(map[string]any{
		"hostname": map[string]any{"name": "kiosk-17"},
		"files":    map[string]any{"motd": map[string]any{"path": "/etc/motd", "content": "hi\n"}},
		"timezone": map[string]any{"name": "Mars/Olympus"},
		"other":    map[string]any{"left": "alone"},
	})
	testutil.Eventually(t, "hostname and files Ready, timezone Failed", func() bool {
		rep := e.reported()
		return path(rep, "hostname", "__status", "state") == "Ready" &&
			path(rep, "files", "__status", "state") == "Ready" &&
			path(rep, "timezone", "__status", "state") == "Failed"
	})
	// Once converged, an idle agent sends nothing (no patch loop). The
	// states above can be reached one reconcile before the last report
	// (a section's own write wakes it once more: Applied → Unchanged), so
	// first wait for a quiet moment; a patch loop never has one.
	testutil.Eventually(t, "a quiet moment", func() bool {
		n := a.Attempts()
		time.Sleep(300 * time.Millisecond) // a window in which nothing may happen
		return a.Attempts() == n
	})
	before := a.Attempts()
	time.Sleep(time.Second) // a window in which nothing may happen
	if n := a.Attempts() - before; n != 0 {
		t.Fatalf("%d reported patches while idle", n)
	}
	rep := e.reported()
	if e.file("etc/motd") != "hi\n" || path(rep, "hostname", "name") != "kiosk-17" {
		t.Fatalf("not applied: motd=%q reported=%v", e.file("etc/motd"), rep["hostname"])
	}
	errs, _ := path(rep, "timezone", "__errors").([]any)
	if len(errs) != 1 || !strings.Contains(fmt.Sprint(errs[0]), "/name") || !strings.Contains(fmt.Sprint(errs[0]), "twin:/timezone/name") {
		t.Fatalf("timezone errors: %v", errs)
	}
	if path(rep, "__summary", "state") != "Failed" || path(rep, "__summary", "failedSections") != "timezone" {
		t.Fatalf("summary: %v", rep["__summary"])
	}
	if _, ok := rep["other"]; ok {
		t.Fatal("reported a section nobody owns")
	}
	// Removing the bad section from desired stops managing it, and the
	// report drops it.
	e.desired(map[string]any{"timezone": nil})
	testutil.Eventually(t, "timezone gone, summary Ready", func() bool {
		rep := e.reported()
		_, has := rep["timezone"]
		return !has && path(rep, "__summary", "state") == "Ready"
	})
}

func TestHubRestartMidRun(t *testing.T) {
	e := newEnv(t)
	_, a := e.agent(nil)
	e.desired(map[string]any{"hostname": map[string]any{"name": "before"}})
	testutil.Eventually(t, "first", func() bool { return path(e.reported(), "hostname", "name") == "before" })
	connects := a.Client().Reconnects.Load()
	mq, hs := e.mqttAddr, e.httpsAddr
	e.h.Close()
	testutil.Eventually(t, "agent offline", func() bool { return !a.Client().Connected() })
	// The hub comes back on the same directory and ports but turns the
	// agent away while desired changes: the change can only reach the
	// agent by the twin read after its next connect.
	e.startHubWith(mq, hs, hub.Faults{RejectConnects: 1})
	e.desired(map[string]any{"hostname": map[string]any{"name": "after"}})
	e.h.SetFaults(hub.Faults{})
	testutil.Eventually(t, "converged after restart", func() bool {
		return path(e.reported(), "hostname", "name") == "after" && e.file("etc/hostname") == "after\n"
	})
	if a.Client().Reconnects.Load() <= connects {
		t.Fatal("no reconnect")
	}
}

func TestBurstWithDroppedConnections(t *testing.T) {
	e := newEnv(t)
	_, a := e.agent(nil)
	e.desired(map[string]any{"hostname": map[string]any{"name": "host-0"}})
	testutil.Eventually(t, "connected and converged", func() bool { return path(e.reported(), "hostname", "name") == "host-0" })
	connects := a.Client().Reconnects.Load()
	dropped := 0
	for i := 1; i <= 100; i++ {
		e.desired(map[string]any{"hostname": map[string]any{"name": fmt.Sprintf("host-%d", i)}})
		if i%20 == 0 {
			dropped += e.h.DropConnections("kiosk-17")
		}
	}
	if dropped == 0 {
		t.Fatal("fault injection dropped no connection")
	}
	tw, _ := e.h.Twin("kiosk-17", "")
	want := tw.Properties.Desired["$version"]
	testutil.Eventually(t, "last version reported", func() bool {
		rep := e.reported()
		return path(rep, "hostname", "name") == "host-100" &&
			fmt.Sprint(path(rep, "__summary", "desiredVersion")) == fmt.Sprint(want) && e.file("etc/hostname") == "host-100\n"
	})
	if a.Client().Reconnects.Load() == connects {
		t.Fatal("the agent never reconnected")
	}
}

func TestTokenRenewalLosesNothing(t *testing.T) {
	e := newEnv(t)
	// 2 s tokens, renewed by a reconnect at 80% of their lifetime.
	_, a := e.agent(func(c *iothub.DeviceConfig, _ *agent.Options) { c.TokenLifetime = 2 * time.Second })
	// Change desired without pause across three renewals; every change
	// must reach the device and the reported properties, including those
	// made while the agent was reconnecting.
	i := 0
	for a.Client().Renewals.Load() < 3 {
		i++
		name := fmt.Sprintf("r-%d", i)
		e.desired(map[string]any{"hostname": map[string]any{"name": name}})
		testutil.Eventually(t, name+" applied and reported", func() bool {
			return path(e.reported(), "hostname", "name") == name && e.file("etc/hostname") == name+"\n"
		})
	}
	t.Logf("%d desired changes across %d renewals (%d connects)", i, a.Client().Renewals.Load(), a.Client().Reconnects.Load())
}

func TestThrottledReportsBackOff(t *testing.T) {
	e := newEnv(t)
	_, a := e.agent(nil)
	e.desired(map[string]any{"hostname": map[string]any{"name": "t-0"}})
	testutil.Eventually(t, "connected and converged", func() bool { return path(e.reported(), "hostname", "name") == "t-0" })
	e.h.SetFaults(hub.Faults{ThrottleReportedPatch: 0.5})
	before := a.Attempts()
	// Ten changes, each waited for: ten reports, about half of the tries
	// answered 429.
	const changes = 10
	for i := 1; i <= changes; i++ {
		name := fmt.Sprintf("t-%d", i)
		e.desired(map[string]any{"hostname": map[string]any{"name": name}})
		testutil.Eventually(t, name+" reported under throttling", func() bool { return path(e.reported(), "hostname", "name") == name })
	}
	tw, _ := e.h.Twin("kiosk-17", "")
	want := fmt.Sprint(tw.Properties.Desired["$version"])
	testutil.Eventually(t, "converged under throttling", func() bool {
		return fmt.Sprint(path(e.reported(), "__summary", "desiredVersion")) == want
	})
	// Each retry waits for its backoff: the attempts stay close to two per
	// report (a busy loop would make hundreds).
	n := a.Attempts() - before
	t.Logf("%d reported-patch attempts for %d changes", n, changes)
	if n < changes || n > 6*changes {
		t.Fatalf("%d reported-patch attempts for %d changes", n, changes)
	}
}

func TestMethods(t *testing.T) {
	e := newEnv(t)
	e.agent(nil)
	e.desired(map[string]any{"hostname": map[string]any{"name": "m1"}})
	testutil.Eventually(t, "ready", func() bool { return path(e.reported(), "hostname", "__status", "state") == "Ready" })
	ctx := context.Background()
	call := func(name, payload string) (int, map[string]any) {
		var p json.RawMessage
		if payload != "" {
			p = json.RawMessage(payload)
		}
		res, err := e.h.InvokeMethod(ctx, "kiosk-17", "", name, p, 10*time.Second, 0)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		var m map[string]any
		json.Unmarshal(res.Payload, &m)
		return res.Status, m
	}
	if st, m := call("getStatus", ""); st != 200 || path(m, "sections", "hostname", "status", "state") != "Ready" {
		t.Fatalf("getStatus: %d %v", st, m)
	}
	// getPlan is a dry run: it reports sections and changes, and changes
	// nothing. (Drift is healed by the file watches at once, so the plan
	// may or may not see it; its shape is what is checked here.)
	if st, m := call("getPlan", ""); st != 200 || m["pending"] == nil || !strings.Contains(fmt.Sprint(m["sections"]), "section:hostname") {
		t.Fatalf("getPlan: %d %v", st, m)
	}
	if st, m := call("reconcile", `{"sections":["hostname"]}`); st != 200 || fmt.Sprint(m["enqueued"]) != "[hostname]" {
		t.Fatalf("reconcile: %d %v", st, m)
	}
	os.WriteFile(filepath.Join(e.root, "etc/hostname"), []byte("drift\n"), 0o644)
	call("reconcile", "")
	testutil.Eventually(t, "reconciled", func() bool { return e.file("etc/hostname") == "m1\n" })
	if st, m := call("reconcile", `{"sections":["nope"]}`); st != 400 || !strings.Contains(fmt.Sprint(m["error"]), "/sections/0") {
		t.Fatalf("bad payload: %d %v", st, m)
	}
	if st, _ := call("report", ""); st != 200 {
		t.Fatalf("report: %d", st)
	}
	// The reboot provider takes the request (a sandbox root: recorded,
	// never executed).
	if st, m := call("reboot", ""); st != 202 || m["reboot"] != "requested" {
		t.Fatalf("reboot: %d %v", st, m)
	}
	if st, m := call("getStatus", `{"verbose":true}`); st != 400 || m["error"] == nil {
		t.Fatalf("getStatus with a payload: %d %v", st, m)
	}
	if st, _ := call("selfDestruct", ""); st != 404 {
		t.Fatalf("unknown method: %d", st)
	}
}

// TestLogsHoldNoSecrets runs the agent through a renewal, a dropped
// connection and throttling with debug logs on: no key, token or
// signature may appear in them.
func TestLogsHoldNoSecrets(t *testing.T) {
	e := newEnv(t)
	var logs testutil.SyncBuffer
	_, a := e.agent(func(c *iothub.DeviceConfig, o *agent.Options) {
		o.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
		c.Logger = o.Logger
		c.TokenLifetime = 2 * time.Second
	})
	e.desired(map[string]any{"hostname": map[string]any{"name": "s-1"}})
	testutil.Eventually(t, "reported", func() bool { return path(e.reported(), "hostname", "name") == "s-1" })
	e.h.SetFaults(hub.Faults{ThrottleReportedPatch: 0.5})
	e.h.DropConnections("kiosk-17")
	e.desired(map[string]any{"hostname": map[string]any{"name": "s-2"}})
	testutil.Eventually(t, "reported after a drop, a renewal and throttling", func() bool {
		return path(e.reported(), "hostname", "name") == "s-2" && a.Client().Renewals.Load() >= 1
	})
	out := logs.String()
	key := base64.StdEncoding.EncodeToString(e.cs.SharedAccessKey)
	for _, secret := range []string{key, "SharedAccessSignature", "sig=", "SharedAccessKey"} {
		if strings.Contains(out, secret) {
			t.Fatalf("logs hold %q:\n%s", secret, out)
		}
	}
	if !strings.Contains(out, "iothub") {
		t.Fatalf("no logs captured:\n%s", out)
	}
}

// TestRebootDelegated: with a reboot provider wired in, the reboot method
// hands it the request and answers 202; a bad payload is a 400.
func TestRebootDelegated(t *testing.T) {
	e := newEnv(t)
	requests := make(chan string, 1)
	_, a := e.agent(func(_ *iothub.DeviceConfig, o *agent.Options) {
		o.Reboot = func(_ context.Context, reason string) error { requests <- reason; return nil }
	})
	testutil.Eventually(t, "connected", a.Client().Connected)
	ctx := context.Background()
	res, err := e.h.InvokeMethod(ctx, "kiosk-17", "", "reboot", json.RawMessage(`{"reason":"kernel update"}`), 10*time.Second, 0)
	if err != nil || res.Status != 202 || <-requests != "kernel update" {
		t.Fatalf("reboot: %+v %v", res, err)
	}
	res, err = e.h.InvokeMethod(ctx, "kiosk-17", "", "reboot", json.RawMessage(`{"when":"now"}`), 10*time.Second, 0)
	if err != nil || res.Status != 400 || !strings.Contains(string(res.Payload), "reason") {
		t.Fatalf("bad reboot payload: %+v %v", res, err)
	}
}

// TestKilledWhileOffline: the agent applies local changes while the hub
// is down and is killed before it could report them. After a restart the
// queued reports reach the hub, in order, and no change is applied a
// second time.
func TestKilledWhileOffline(t *testing.T) {
	e := newEnv(t)
	policy := func(content string) {
		body := "apiVersion: twinlet.dev/v1\nkind: DevicePolicy\nmetadata: { name: p }\nspec:\n  files:\n    motd: { path: /etc/motd, content: \"" + content + "\\n\" }\n"
		os.WriteFile(filepath.Join(e.policy, "p.yaml"), []byte(body), 0o644)
	}
	policy("one")
	start := func() *exec.Cmd {
		ca := filepath.Join(e.dir, "ca.pem")
		os.WriteFile(ca, e.h.CAPEM(), 0o644)
		cc, _ := json.Marshal(childConfig{Root: e.root, State: e.state, Policy: e.policy, Host: e.cs.HostName,
			Addr: e.mqttAddr, CAFile: ca, Device: e.cs.DeviceID, Key: e.cs.SharedAccessKey})
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), childEnv+"="+string(cc))
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		return cmd
	}
	child := start()
	testutil.Eventually(t, "first report", func() bool { return path(e.reported(), "files", "motd", "sha256") != nil })
	tw, _ := e.h.Twin("kiosk-17", "")
	v0 := fmt.Sprint(tw.Properties.Reported["$version"])

	mq, hs := e.mqttAddr, e.httpsAddr
	e.h.Close()
	outbox := filepath.Join(e.state, agent.OutboxFile)
	queued := func() (seqs []uint64) {
		var o struct{ Entries []struct{ Seq uint64 } }
		b, _ := os.ReadFile(outbox)
		json.Unmarshal(b, &o)
		for _, en := range o.Entries {
			seqs = append(seqs, en.Seq)
		}
		return seqs
	}
	// Two changes while offline: two patches wait in the outbox.
	policy("second")
	testutil.Eventually(t, "second applied and queued", func() bool { return e.file("etc/motd") == "second\n" && len(queued()) >= 1 })
	policy("third!")
	testutil.Eventually(t, "third applied and queued", func() bool { return e.file("etc/motd") == "third!\n" && len(queued()) >= 2 })
	fi1, _ := os.Stat(filepath.Join(e.root, "etc/motd"))
	child.Process.Signal(syscall.SIGKILL)
	child.Wait()
	n := len(queued())

	e.startHub(mq, hs)
	start()
	testutil.Eventually(t, "the queued reports arrive", func() bool {
		rep := e.reported()
		return path(rep, "files", "motd", "size") == float64(7) && path(rep, "files", "__status", "state") == "Ready"
	})
	testutil.Eventually(t, "the outbox emptied", func() bool {
		_, err := os.Stat(outbox)
		return os.IsNotExist(err)
	})
	// Each queued patch was a patch of its own (reported $version moves
	// once per patch), not one patch with the final state.
	tw, _ = e.h.Twin("kiosk-17", "")
	var before, after int64
	fmt.Sscan(v0, &before)
	fmt.Sscan(fmt.Sprint(tw.Properties.Reported["$version"]), &after)
	if after-before < int64(n) {
		t.Fatalf("reported $version %d -> %d: fewer patches than the %d queued", before, after, n)
	}
	fi2, _ := os.Stat(filepath.Join(e.root, "etc/motd"))
	if !os.SameFile(fi1, fi2) || !fi1.ModTime().Equal(fi2.ModTime()) {
		t.Fatal("the change was applied a second time after the restart")
	}
}
