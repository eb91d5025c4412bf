package extprov

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/twinlet/twinlet/providers"
	"github.com/twinlet/twinlet/providers/providertest"
	"github.com/twinlet/twinlet/reconciler"
)

// TestPythonExampleDriftTimeline runs the shared harness, unchanged,
// against the Python example through the real protocol: converge, a
// no-op second pass, drift healed, a key removed, invalid input located.
func TestPythonExampleDriftTimeline(t *testing.T) {
	dir := t.TempDir()
	manifest(t, dir, "vendor-ini.yaml", "vendorIni", pythonExample(t))
	h := load(t, testOpts(t), dir)
	p := one(t, h, "vendorIni").New()
	env := providertest.NewEnv(t)
	ini := filepath.Join(env.Root, "etc/vendor/sensor.ini")
	if err := os.MkdirAll(filepath.Dir(ini), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(ini, []byte("# vendor defaults\n[net]\nport = 80\nkeep = yes\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	desired := json.RawMessage(`{"sensor":{"path":"/etc/vendor/sensor.ini","settings":{"net":{"port":"8080"},"calibration":{"offset":"0.5"}}}}`)

	changes := providertest.Converge(t, p, env, desired)
	want := []string{"+ sensor/calibration/offset: 0.5", "~ sensor/net/port: 80 -> 8080"}
	if got := providertest.Lines(changes); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("plan %q, want %q", got, want)
	}
	b, _ := os.ReadFile(ini)
	if got := string(b); got != "# vendor defaults\n[net]\nport = 8080\nkeep = yes\n\n[calibration]\noffset = 0.5\n" {
		t.Fatalf("file:\n%s", got)
	}
	if left := providertest.PlanOnly(t, p, env, desired); len(left) != 0 {
		t.Fatalf("second pass plans %v", providertest.Lines(left))
	}
	// Drift: someone edits the file.
	if err := os.WriteFile(ini, []byte("[net]\nport = 81\nkeep = yes\n[calibration]\noffset = 0.5\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := providertest.Lines(providertest.Converge(t, p, env, desired)); len(got) != 1 || got[0] != "~ sensor/net/port: 81 -> 8080" {
		t.Fatalf("drift plan %q", got)
	}
	// A null removes a key, leaving the others.
	removed := json.RawMessage(`{"sensor":{"path":"/etc/vendor/sensor.ini","settings":{"net":{"keep":null,"port":"8080"}}}}`)
	if got := providertest.Lines(providertest.Converge(t, p, env, removed)); len(got) != 1 || got[0] != "- sensor/net/keep: yes" {
		t.Fatalf("removal plan %q", got)
	}
	obs := providertest.ObserveJSON(t, p, env, removed)
	if s := obs["sensor"].(map[string]any)["settings"].(map[string]any)["net"].(map[string]any); s["port"] != "8080" || s["keep"] != nil {
		t.Fatalf("observed %v", obs)
	}
	// Invalid input that the schema cannot see is located.
	_, err := p.Decode(env, json.RawMessage(`{"x":{"path":"/etc/../root/x.ini","settings":{}},"y":{"path":"/boot/y.ini","settings":{}}}`))
	if got := providertest.Invalid(t, err); strings.Join(got, " ") != "/x/path /y/path" {
		t.Fatalf("pointers %v (%v)", got, err)
	}
}

// TestGoExampleDriftTimeline runs the harness against the Go example,
// built with go build, through the real protocol, and calls its method.
func TestGoExampleDriftTimeline(t *testing.T) {
	dir := t.TempDir()
	manifest(t, dir, "sensor.yaml", "sensorCalibration", goExample(t), "timeout: 20s")
	h := load(t, testOpts(t), dir)
	info := one(t, h, "sensorCalibration")
	p := info.New()
	env := providertest.NewEnv(t)
	desired := json.RawMessage(`{"offset": 0.5, "gain": 1.25}`)
	if got := providertest.Lines(providertest.Converge(t, p, env, desired)); strings.Join(got, "|") != "+ offset: 0.5|+ gain: 1.25" {
		t.Fatalf("plan %q", got)
	}
	conf := filepath.Join(env.Root, "etc/vendor/sensor/calibration.conf")
	if b, _ := os.ReadFile(conf); string(b) != "# written by twinlet (sensorCalibration)\ngain = 1.25\noffset = 0.5\n" {
		t.Fatalf("file:\n%s", b)
	}
	if err := os.WriteFile(conf, []byte("gain = 2\noffset = 0.5\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := providertest.Lines(providertest.Converge(t, p, env, desired)); len(got) != 1 || got[0] != "~ gain: 2 -> 1.25" {
		t.Fatalf("drift plan %q", got)
	}
	_, err := p.Decode(env, json.RawMessage(`{"file":"/boot/cal.conf"}`))
	if got := providertest.Invalid(t, err); len(got) != 1 || got[0] != "/file" {
		t.Fatalf("pointers %v", got)
	}
	// The direct method goes through the process too; its errors keep
	// their status.
	out, err := info.Methods["read"].Call(context.Background(), env, json.RawMessage(`{}`))
	if err != nil || !strings.Contains(string(out.(json.RawMessage)), `"gain":"1.25"`) {
		t.Fatalf("read: %s, %v", out, err)
	}
	_, err = info.Methods["read"].Call(context.Background(), env, json.RawMessage(`{"file":"/etc/none"}`))
	if me, ok := err.(*providers.MethodError); !ok || me.Status != 404 {
		t.Fatalf("read of a missing file: %#v", err)
	}
	// All of it went to the process started at load: it is kept for its
	// keep-alive (the default 5m), not started per call.
	if s := h.List()[0]; s.Starts != 1 || s.State != "running" {
		t.Fatalf("process not kept between calls: %+v", s)
	}
}

// TestExternalMethodThroughTheReconciler: the reconciler validates an
// external method's payload against the schema the provider described
// before the call reaches the process.
func TestExternalMethodThroughTheReconciler(t *testing.T) {
	dir := t.TempDir()
	manifest(t, dir, "sensor.yaml", "sensorCalibration", goExample(t))
	h := load(t, testOpts(t), dir)
	r, err := reconciler.New(reconciler.Options{Root: t.TempDir(), StateDir: t.TempDir(), Providers: h.Infos()})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	_, err = r.CallMethod(context.Background(), "sensorCalibration", "read", json.RawMessage(`{"file": 3}`))
	if got := providertest.Invalid(t, err); len(got) != 1 || got[0] != "/file" {
		t.Fatalf("pointers %v (%v)", got, err)
	}
	_, err = r.CallMethod(context.Background(), "sensorCalibration", "read", json.RawMessage(`{}`))
	if me, ok := err.(*providers.MethodError); !ok || me.Status != 404 {
		t.Fatalf("read of a missing file: %#v", err)
	}
}

// TestGoProviderOutsideTheModule: a Go provider in a module of its own
// (testdata/outside, given a go.mod that requires twinlet through a
// replace) imports providers and providers/plugin and nothing else of
// twinlet, builds with the go tool, and passes the shared harness through
// the real protocol.
func TestGoProviderOutsideTheModule(t *testing.T) {
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	mod := t.TempDir()
	for _, f := range []struct{ src, dst string }{{"testdata/outside/main.go", "main.go"}, {"../../go.sum", "go.sum"}} {
		b, err := os.ReadFile(f.src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(mod, f.dst), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	gomod := "module example.com/greeting\n\ngo 1.26\n\nrequire github.com/twinlet/twinlet v0.0.0\n\nreplace github.com/twinlet/twinlet => " + repo + "\n"
	if err := os.WriteFile(filepath.Join(mod, "go.mod"), []byte(gomod), 0o644); err != nil {
		t.Fatal(err)
	}
	gocmd := func(args ...string) string {
		t.Helper()
		cmd := exec.Command("go", args...)
		cmd.Dir = mod
		// Offline: everything comes from the module cache this build filled.
		cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOPROXY=off", "GOWORK=off")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	var twinlet []string
	for _, imp := range strings.Fields(gocmd("list", "-f", "{{join .Imports \" \"}}", ".")) {
		if strings.HasPrefix(imp, "github.com/twinlet/") {
			twinlet = append(twinlet, imp)
		}
	}
	if strings.Join(twinlet, " ") != "github.com/twinlet/twinlet/providers github.com/twinlet/twinlet/providers/plugin" {
		t.Fatalf("the outside provider imports %v of twinlet", twinlet)
	}
	exe := filepath.Join(t.TempDir(), "greeting")
	gocmd("build", "-o", exe, ".")

	dir := t.TempDir()
	manifest(t, dir, "greeting.yaml", "greeting", exe)
	h := load(t, testOpts(t), dir)
	p := one(t, h, "greeting").New()
	env := providertest.NewEnv(t)
	if got := providertest.Lines(providertest.Converge(t, p, env, json.RawMessage(`{"text": "hello"}`))); strings.Join(got, "|") != "+ text: hello" {
		t.Fatalf("plan %q", got)
	}
	if err := os.WriteFile(filepath.Join(env.Root, "etc/greeting"), []byte("bye"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := providertest.Lines(providertest.Converge(t, p, env, json.RawMessage(`{"text": "hello"}`))); strings.Join(got, "|") != "~ text: bye -> hello" {
		t.Fatalf("drift plan %q", got)
	}
	if s := h.List()[0]; s.State != "running" || s.Version == "" {
		t.Fatalf("list %+v", s)
	}
}

// TestProgressReachesTheAgent: the progress notifications both examples
// send while they apply reach the Env of the apply call, in order, as a
// built-in provider's Env.Progress would.
func TestProgressReachesTheAgent(t *testing.T) {
	dir := t.TempDir()
	manifest(t, dir, "vendor.yaml", "vendorIni", pythonExample(t))
	manifest(t, dir, "sensor.yaml", "sensorCalibration", goExample(t))
	h := load(t, testOpts(t), dir)
	for _, c := range []struct {
		id, desired string
		want        []string
	}{
		{"vendorIni", `{"a":{"path":"/etc/a.ini","settings":{"s":{"k":"v"}}}}`, []string{"write /etc/a.ini 0/1", "write /etc/a.ini 1/1"}},
		{"sensorCalibration", `{"gain": 2}`, []string{"write /etc/vendor/sensor/calibration.conf 0/1"}},
	} {
		p := one(t, h, c.id).New()
		env := providertest.NewEnv(t)
		plan := providertest.PlanOnly(t, p, env, json.RawMessage(c.desired))
		if len(plan) != 1 {
			t.Fatalf("%s: plan %v", c.id, providertest.Lines(plan))
		}
		var got []string
		env.OnProgress = func(step string, done, total int) { got = append(got, fmt.Sprintf("%s %d/%d", step, done, total)) }
		if err := p.Apply(context.Background(), env, plan[0]); err != nil {
			t.Fatal(err)
		}
		if strings.Join(got, "|") != strings.Join(c.want, "|") {
			t.Errorf("%s: progress %q, want %q", c.id, got, c.want)
		}
	}
}

// TestPythonExampleNeedsOnlyTheStandardLibrary: the Python example runs
// under Debian's python3 with -I -S (no site-packages, no user site, no
// PYTHON* environment), so it needs the standard library alone.
func TestPythonExampleNeedsOnlyTheStandardLibrary(t *testing.T) {
	script := pythonExample(t)
	dir := t.TempDir()
	manifest(t, dir, "vendor-ini.yaml", "vendorIni", "/usr/bin/python3", "args: [-I, -S, "+script+"]")
	h := load(t, testOpts(t), dir)
	p := one(t, h, "vendorIni").New()
	env := providertest.NewEnv(t)
	got := providertest.Lines(providertest.Converge(t, p, env, json.RawMessage(`{"a":{"path":"/etc/a.ini","settings":{"s":{"k":"v"}}}}`)))
	if strings.Join(got, "|") != "+ a/s/k: v" {
		t.Fatalf("plan %q", got)
	}
}
