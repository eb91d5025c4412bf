package extprov

import (
	"context"
	"encoding/json"
	"os"
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
