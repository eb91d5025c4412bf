package extprov

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twinlet/twinlet/internal/testutil"
	"github.com/twinlet/twinlet/providers"
)

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestKeepAliveStopsAnIdleProcessAndStartsItOnUse: an idle process is
// stopped after its keep-alive; the next call starts it again; Close
// leaves no goroutine behind.
func TestKeepAliveStopsAnIdleProcessAndStartsItOnUse(t *testing.T) {
	dir := t.TempDir()
	manifest(t, dir, "vendor.yaml", "vendorIni", pythonExample(t), "keepAlive: 1ms")
	opts := testOpts(t)
	opts.Dirs = []string{dir}
	h := Load(context.Background(), opts)
	state := func() string { return h.List()[0].State }
	eventually(t, "the idle process to stop", func() bool { return state() == "stopped" })
	p := h.Infos()[0].New()
	if _, err := p.Decode(&providers.Env{Root: t.TempDir()}, json.RawMessage(`{}`)); err != nil {
		t.Fatal(err)
	}
	if s := h.List()[0]; s.Starts != 2 {
		t.Fatalf("not started on use: %+v", s)
	}
	h.Close()
	if _, err := p.Decode(&providers.Env{Root: t.TempDir()}, json.RawMessage(`{}`)); err == nil || !strings.Contains(err.Error(), "stopping") {
		t.Fatalf("a call after Close: %v", err)
	}
	eventually(t, "no goroutine of the package left", func() bool {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		for _, g := range bytes.Split(buf, []byte("\n\n")) {
			if bytes.Contains(g, []byte("internal/extprov.(*")) || bytes.Contains(g, []byte("internal/extprov.start")) {
				return false
			}
		}
		return true
	})
}

// TestStderrIsLogged: every line a provider writes to stderr reaches the
// agent's log, tagged with its section; stdout stays the protocol's.
func TestStderrIsLogged(t *testing.T) {
	dir := t.TempDir()
	manifest(t, dir, "crash.yaml", "crashy", chaos(t), "args: [--crash-in, observe]")
	var logs testutil.SyncBuffer
	opts := testOpts(t)
	opts.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	h := load(t, opts, dir)
	p := one(t, h, "crashy").New()
	env := &providers.Env{Root: t.TempDir()}
	spec, err := p.Decode(env, json.RawMessage(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Observe(context.Background(), env, spec); err == nil {
		t.Fatal("no crash")
	}
	h.Close()
	if !strings.Contains(logs.String(), `msg="provider stderr" provider=crashy`) || !strings.Contains(logs.String(), `line="chaos: crashing in observe on purpose"`) {
		t.Fatalf("stderr not logged:\n%s", logs.String())
	}
}

// TestStderrTailIsBounded: the stderr tail kept for messages stays
// bounded and starts at a line.
func TestStderrTailIsBounded(t *testing.T) {
	var tl tail
	for i := range 1000 {
		tl.add(strings.Repeat("x", 30) + " line " + string(rune('a'+i%26)))
	}
	if n := len(tl.String()); n > tailSize || n < tailSize/2 {
		t.Fatalf("tail of %d bytes", n)
	}
	if !strings.HasPrefix(tl.String(), "xxx") {
		t.Fatalf("tail not cut at a line start: %.40q", tl.String())
	}
}

// TestExampleManifestsAreValid: the manifests shipped in examples/ pass
// the manifest schema (their executables live on a device, not here).
func TestExampleManifestsAreValid(t *testing.T) {
	files, _ := filepath.Glob("../../examples/providers/*/*.yaml")
	if len(files) < 2 {
		t.Fatalf("example manifests: %v", files)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if _, probs := parseManifest(f, b); len(probs) > 0 {
			t.Errorf("%v", probs)
		}
	}
}

// TestRunsAsTheManifestUser: the program runs as the manifest's user, with
// that user's uid and gid.
func TestRunsAsTheManifestUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("only root can run a provider as another user")
	}
	python(t)
	u, err := lookupUser("nobody")
	if err != nil || u == nil {
		t.Skip("no user nobody")
	}
	exe := install(t, "testdata/chaos.py")
	for d := filepath.Dir(exe); d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
		os.Chmod(d, 0o755) // nobody must reach the program
	}
	dir := t.TempDir()
	manifest(t, dir, "chaos.yaml", "asNobody", exe, "user: nobody")
	h := load(t, testOpts(t), dir)
	s := h.List()[0]
	if s.State != "running" {
		t.Fatalf("%+v", s)
	}
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(s.PID), "status"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "Uid:") {
			if f := strings.Fields(line); len(f) < 2 || f[1] != strconv.Itoa(int(u.uid)) {
				t.Fatalf("runs as %q, want uid %d", line, u.uid)
			}
			return
		}
	}
	t.Fatal("no Uid in /proc status")
}

// TestCrashSeenDespiteAnOrphanHoldingStdout: a program that dies leaving a
// child with its stdout open is a crash (not a hang), and the child is
// killed with the process group.
func TestCrashSeenDespiteAnOrphanHoldingStdout(t *testing.T) {
	dir := t.TempDir()
	manifest(t, dir, "orphan.yaml", "orphan", chaos(t), "args: [--orphan-in, observe]", "timeout: 60s")
	h := load(t, testOpts(t), dir)
	p := one(t, h, "orphan").New()
	env := &providers.Env{Root: t.TempDir()}
	spec, err := p.Decode(env, json.RawMessage(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	_, err = p.Observe(context.Background(), env, spec)
	var f *Failure
	if !asFailure(err, &f) || f.Reason != ReasonCrashed || !strings.Contains(f.Message, "exit status 4") {
		t.Fatalf("observe: %v", err)
	}
}

// TestConcurrentCalls: calls from several goroutines (reconciles and
// direct methods) that start the process together and share it each get
// their own answer. (With a keep-alive of 1ms the process may stop and
// start again between them; that is fine too.)
func TestConcurrentCalls(t *testing.T) {
	dir := t.TempDir()
	manifest(t, dir, "sensor.yaml", "sensorCalibration", goExample(t), "keepAlive: 1ms")
	h := load(t, testOpts(t), dir)
	eventually(t, "the idle process to stop", func() bool { return h.List()[0].State == "stopped" })
	info := one(t, h, "sensorCalibration")
	env := &providers.Env{Root: t.TempDir()}
	conf := filepath.Join(env.Root, "etc/vendor/sensor/calibration.conf")
	os.MkdirAll(filepath.Dir(conf), 0o755)
	os.WriteFile(conf, []byte("gain = 3\n"), 0o644)
	errs := make(chan error, 16)
	for i := range 16 {
		go func() {
			if i%2 == 0 {
				out, err := info.Methods["read"].Call(context.Background(), env, json.RawMessage(`{}`))
				if err == nil && !strings.Contains(string(out.(json.RawMessage)), `"gain":"3"`) {
					err = errors.New("read: " + string(out.(json.RawMessage)))
				}
				errs <- err
				return
			}
			p := info.New()
			spec, err := p.Decode(env, json.RawMessage(`{"gain": 3}`))
			if err == nil {
				var obs providers.Observed
				if obs, err = p.Observe(context.Background(), env, spec); err == nil {
					var plan []providers.Change
					if plan, err = p.Plan(spec, obs); err == nil && len(plan) != 0 {
						err = errors.New("a plan for a converged section")
					}
				}
			}
			errs <- err
		}()
	}
	for range 16 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}

// TestPlanAfterTheProcessStoppedObservesAgain: the process stops at its
// keep-alive between Observe and Plan, so it no longer knows the
// observation; Plan observes again and plans from that instead of
// failing the section. The same between Plan and Apply.
func TestPlanAfterTheProcessStoppedObservesAgain(t *testing.T) {
	dir := t.TempDir()
	manifest(t, dir, "sensor.yaml", "sensorCalibration", goExample(t), "keepAlive: 1ms")
	h := load(t, testOpts(t), dir)
	info := one(t, h, "sensorCalibration")
	env := &providers.Env{Root: t.TempDir()}
	conf := filepath.Join(env.Root, "etc/vendor/sensor/calibration.conf")
	os.MkdirAll(filepath.Dir(conf), 0o755)
	os.WriteFile(conf, []byte("gain = 3\n"), 0o644)
	p := info.New()
	spec, err := p.Decode(env, json.RawMessage(`{"gain": 5}`))
	if err != nil {
		t.Fatal(err)
	}
	obs, err := p.Observe(context.Background(), env, spec)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "the idle process to stop", func() bool { return h.List()[0].State == "stopped" })
	plan, err := p.Plan(spec, obs)
	if err != nil {
		t.Fatalf("plan after a restart: %v", err)
	}
	if len(plan) != 1 || plan[0].Action != providers.Update {
		t.Fatalf("plan = %+v, want one update", plan)
	}
	// And between Plan and Apply: the change is planned again and applied.
	eventually(t, "the idle process to stop again", func() bool { return h.List()[0].State == "stopped" })
	if err := p.Apply(context.Background(), env, plan[0]); err != nil {
		t.Fatalf("apply: %v", err)
	}
	if b, _ := os.ReadFile(conf); !strings.Contains(string(b), "5") {
		t.Fatalf("calibration.conf = %q", b)
	}
}

// TestManifestDirectories: the default directories are the packages' then
// the local one; *.yaml and *.yml are manifests (not hidden files, not
// others), in name order; a later directory's file replaces an earlier
// one's of the same name, so a local manifest overrides a packaged one.
func TestManifestDirectories(t *testing.T) {
	if strings.Join(DefaultDirs, " ") != "/usr/lib/twinlet/providers.d /etc/twinlet/providers.d" {
		t.Fatalf("DefaultDirs %v", DefaultDirs)
	}
	pkg, local := t.TempDir(), t.TempDir()
	for _, f := range []string{pkg + "/b.yaml", pkg + "/a.yml", pkg + "/.hidden.yaml", pkg + "/notes.txt", pkg + "/c.yaml.dpkg-old", local + "/b.yaml"} {
		if err := os.WriteFile(f, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	files, probs := manifestFiles([]string{pkg, filepath.Join(pkg, "none"), local})
	if len(probs) > 0 {
		t.Fatal(probs)
	}
	if got, want := strings.Join(files, " "), pkg+"/a.yml "+local+"/b.yaml"; got != want {
		t.Fatalf("manifests %s, want %s", got, want)
	}
	// Through Load: the local one is the one that runs.
	exe := chaos(t)
	manifest(t, pkg, "b.yaml", "fromPackage", exe)
	manifest(t, local, "b.yaml", "fromLocal", exe)
	os.Remove(pkg + "/a.yml")
	opts := testOpts(t)
	opts.Dirs = []string{pkg, local}
	h := Load(context.Background(), opts)
	defer h.Close()
	if infos := h.Infos(); len(infos) != 1 || infos[0].ID != "fromLocal" || len(h.Problems()) != 0 {
		t.Fatalf("infos %v, problems %v", infos, h.Problems())
	}
}

// TestKeepAliveZeroStopsAfterEveryCall: keepAlive 0s stops the process
// once no call is in flight; each call starts it afresh.
func TestKeepAliveZeroStopsAfterEveryCall(t *testing.T) {
	dir := t.TempDir()
	manifest(t, dir, "vendor.yaml", "vendorIni", pythonExample(t), "keepAlive: 0s")
	h := load(t, testOpts(t), dir)
	state := func() string { return h.List()[0].State }
	eventually(t, "the process to stop after describe", func() bool { return state() == "stopped" })
	p := one(t, h, "vendorIni").New()
	for i := range 2 {
		if _, err := p.Decode(&providers.Env{Root: t.TempDir()}, json.RawMessage(`{}`)); err != nil {
			t.Fatal(err)
		}
		eventually(t, "the process to stop after the call", func() bool { return state() == "stopped" })
		if s := h.List()[0]; s.Starts != i+2 {
			t.Fatalf("call %d: %+v", i, s)
		}
	}
}
