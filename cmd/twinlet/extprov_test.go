package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twinlet/twinlet/internal/testutil"
)

// externalDir installs both example providers (the Python one copied, the
// Go one built with go build) and their manifests in a fresh directory.
func externalDir(t *testing.T) string {
	t.Helper()
	if _, err := os.Stat("/usr/bin/python3"); err != nil {
		t.Skip("needs /usr/bin/python3: run make ext-tools")
	}
	dir, bin := t.TempDir(), t.TempDir()
	py, err := os.ReadFile("../../examples/providers/vendor-ini/vendor-ini")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bin, "vendor-ini"), py, 0o755); err != nil {
		t.Fatal(err)
	}
	build := exec.Command("go", "build", "-o", filepath.Join(bin, "sensor-calibration"), "./examples/providers/sensor-calibration")
	build.Dir = "../.."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for _, m := range []string{"vendor-ini/vendor-ini.yaml", "sensor-calibration/sensor-calibration.yaml"} {
		b, err := os.ReadFile("../../examples/providers/" + m)
		if err != nil {
			t.Fatal(err)
		}
		b = bytes.ReplaceAll(b, []byte("/usr/lib/twinlet/providers/"), []byte(bin+"/"))
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(m)), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

const externalSpec = `  vendorIni:
    __meta: { deploymentId: vendor-1 }
    reportingMode: detailed
    sensor: { path: /etc/vendor/sensor.ini, settings: { calibration: { offset: "0.5" } } }
  sensorCalibration: { gain: 1.5 }
  files:
    motd: { path: /etc/motd, content: "hello\n", mode: "0644" }
`

// TestExternalSectionsEndToEnd: plan shows the external providers'
// changes as diff lines like the built-in ones, apply --once converges
// them, and a second plan has nothing to do.
func TestExternalSectionsEndToEnd(t *testing.T) {
	dir := externalDir(t)
	s := newSandbox(t)
	s.write(t, "ext.yaml", policyDoc("enforce", externalSpec))
	code, out, errs := twinlet(t, s.args("plan", "--provider-dirs", dir)...)
	if code != 2 {
		t.Fatalf("plan: exit %d\n%s\n%s", code, out, errs)
	}
	for _, want := range []string{"+ sensor/calibration/offset: 0.5", "+ gain: 1.5", "+ motd"} {
		if !strings.Contains(out, want) {
			t.Errorf("plan lacks %q:\n%s", want, out)
		}
	}
	code, out, errs = twinlet(t, s.args("apply", "--once", "--provider-dirs", dir)...)
	if code != 0 {
		t.Fatalf("apply: exit %d\n%s\n%s", code, out, errs)
	}
	if got := s.file("etc/vendor/sensor.ini"); got != "[calibration]\noffset = 0.5\n" {
		t.Errorf("sensor.ini: %q", got)
	}
	if got := s.file("etc/vendor/sensor/calibration.conf"); !strings.Contains(got, "gain = 1.5") {
		t.Errorf("calibration.conf: %q", got)
	}
	code, out, errs = twinlet(t, s.args("plan", "--provider-dirs", dir)...)
	if code != 0 {
		t.Fatalf("second plan: exit %d\n%s\n%s", code, out, errs)
	}
	// A section the schema refuses is located like a built-in's.
	s.write(t, "ext.yaml", policyDoc("enforce", "  sensorCalibration: { gain: -1 }\n"))
	code, out, _ = twinlet(t, s.args("plan", "--provider-dirs", dir)...)
	if code != 1 || !strings.Contains(out, "/gain") || !strings.Contains(out, "ext.yaml:") {
		t.Fatalf("invalid plan: exit %d\n%s", code, out)
	}
}

func TestProvidersListAndCheck(t *testing.T) {
	dir := externalDir(t)
	code, out, errs := twinlet(t, "providers", "list", "--provider-dirs", dir)
	if code != 0 {
		t.Fatalf("list: exit %d\n%s\n%s", code, out, errs)
	}
	for _, want := range []string{"vendorIni", "1.0.0", "sensorCalibration", "files", "built-in", filepath.Join(dir, "vendor-ini.yaml")} {
		if !strings.Contains(out, want) {
			t.Errorf("list lacks %q:\n%s", want, out)
		}
	}
	code, out, errs = twinlet(t, "providers", "check", "--root", t.TempDir(), filepath.Join(dir, "vendor-ini.yaml"))
	if code != 0 || !strings.Contains(out, "plan      ok") {
		t.Fatalf("check: exit %d\n%s\n%s", code, out, errs)
	}
	bad := filepath.Join(t.TempDir(), "v2.yaml")
	b, _ := os.ReadFile(filepath.Join(dir, "vendor-ini.yaml"))
	os.WriteFile(bad, bytes.Replace(b, []byte("protocolVersion: 1"), []byte("protocolVersion: 2"), 1), 0o644)
	code, out, _ = twinlet(t, "providers", "check", bad)
	if code != 1 || !strings.Contains(out, "FAILED") || !strings.Contains(out, "speaks protocol version 2") {
		t.Fatalf("check of a v2 manifest: exit %d\n%s", code, out)
	}
	os.WriteFile(filepath.Join(dir, "v2.yaml"), bytes.Replace(b, []byte("protocolVersion: 1"), []byte("protocolVersion: 2"), 1), 0o644)
	code, out, _ = twinlet(t, "providers", "list", "--provider-dirs", dir)
	if code != 1 || !strings.Contains(out, "refused") || !strings.Contains(out, "vendorIni") {
		t.Fatalf("list with a refused manifest: exit %d\n%s", code, out)
	}
	// Every built-in section is the agent's: a manifest for one is refused
	// and the built-in provider stays.
	for _, id := range []string{"files", "hostname", "packages", "users"} {
		m := filepath.Join(t.TempDir(), id+".yaml")
		os.WriteFile(m, bytes.Replace(b, []byte("section: vendorIni"), []byte("section: "+id), 1), 0o644)
		code, out, _ = twinlet(t, "providers", "check", m)
		if code != 1 || !strings.Contains(out, `section "`+id+`" belongs to a built-in provider`) {
			t.Errorf("check of a manifest for %s: exit %d\n%s", id, code, out)
		}
	}
	if code, _, _ := twinlet(t, "providers", "check"); code != 2 {
		t.Fatalf("check without a manifest: exit %d", code)
	}
	// The Go example passes every step; a program that crashes in observe
	// fails that step with its stderr, after describe and schema passed.
	code, out, errs = twinlet(t, "providers", "check", "--root", t.TempDir(), "--output", "json", filepath.Join(dir, "sensor-calibration.yaml"))
	if code != 0 || strings.Count(out, `"ok": true`) != 7 {
		t.Fatalf("check of the Go example: exit %d\n%s\n%s", code, out, errs)
	}
	py, _ := os.ReadFile("../../internal/extprov/testdata/chaos.py")
	exe := filepath.Join(t.TempDir(), "chaos.py")
	os.WriteFile(exe, py, 0o755)
	crash := filepath.Join(t.TempDir(), "crash.yaml")
	os.WriteFile(crash, []byte("apiVersion: twinlet.dev/v1\nkind: Provider\nsection: crashy\nexecutable: "+exe+"\nargs: [--crash-in, observe]\nprotocolVersion: 1\n"), 0o644)
	code, out, _ = twinlet(t, "providers", "check", "--root", t.TempDir(), crash)
	for _, want := range []string{"describe  ok", "schema    ok", "decode    ok", "observe   FAILED", "crashing in observe on purpose"} {
		if code != 1 || !strings.Contains(out, want) {
			t.Errorf("check of a program that crashes in observe: exit %d, no %q in\n%s", code, want, out)
		}
	}
}

// TestRunWithExternalProvidersLeavesNothing: the agent with external
// providers stops them all when it stops: no goroutine of the process
// supervision and no child process outlives run.
func TestRunWithExternalProvidersLeavesNothing(t *testing.T) {
	dir := externalDir(t)
	s := newSandbox(t)
	s.write(t, "ext.yaml", policyDoc("enforce", externalSpec))
	ctx, cancel := context.WithCancel(context.Background())
	var out, errb testutil.SyncBuffer
	done := make(chan int, 1)
	go func() { done <- run(ctx, s.args("run", "--provider-dirs", dir), &out, &errb) }()
	testutil.Eventually(t, "external sections converge", func() bool {
		return s.file("etc/vendor/sensor.ini") != "<missing>" && strings.Contains(s.file("etc/vendor/sensor/calibration.conf"), "gain")
	})
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errb.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("run did not return")
	}
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		if bytes.Contains(g, []byte("internal/extprov.")) {
			t.Errorf("goroutine left:\n%s", g)
		}
	}
	if kids := children(); len(kids) > 0 {
		t.Errorf("child processes left: %v", kids)
	}
}

// children lists the processes whose parent is this test process, from
// /proc (the go tool's builds have ended by then).
func children() []string {
	var out []string
	ents, _ := os.ReadDir("/proc")
	me := strconv.Itoa(os.Getpid())
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid …; comm may hold spaces.
		rest := string(b[bytes.LastIndexByte(b, ')')+1:])
		if f := strings.Fields(rest); len(f) > 1 && f[1] == me {
			out = append(out, e.Name()+" "+string(b[:bytes.LastIndexByte(b, ')')+1]))
		}
	}
	return out
}

// TestValidateKnowsExternalSections: validate checks an external section
// with its described schema and its Decode, located in the file.
func TestValidateKnowsExternalSections(t *testing.T) {
	dir := externalDir(t)
	s := newSandbox(t)
	p := s.write(t, "ext.yaml", policyDoc("enforce", "  sensorCalibration: { gain: 2 }\n  vendorIni:\n    x: { path: /boot/x.ini, settings: {} }\n"))
	code, out, errs := twinlet(t, "validate", "--config", "", "--root", s.root, "--provider-dirs", dir, p)
	if code != 1 || !strings.Contains(out, "/spec/vendorIni/x/path: /boot/x.ini is outside the allowed roots") || strings.Contains(out, "sensorCalibration") {
		t.Fatalf("validate: exit %d\n%s\n%s", code, out, errs)
	}
}

// TestCompletionsKnowTheProvidersCommands: completions and the man page
// come from the flag definitions, the providers commands' too.
func TestCompletionsKnowTheProvidersCommands(t *testing.T) {
	code, out, _ := twinlet(t, "completion", "bash")
	if code != 0 || !strings.Contains(out, `["providers"]="check list"`) || !strings.Contains(out, `["providers list"]="--config --output --provider-dirs --state-dir"`) {
		t.Fatalf("completion: exit %d\n%s", code, out)
	}
}

// TestCloudScopeOfExternalSections: the agent config names external
// sections like built-in ones: cloud.sections limits the twin to some of
// them (section level), and a provider that describes a cloud scope gets
// its default denials and the config's rules (item level). Local policy is
// not limited.
func TestCloudScopeOfExternalSections(t *testing.T) {
	if _, err := os.Stat("/usr/bin/python3"); err != nil {
		t.Skip("needs /usr/bin/python3: run make ext-tools")
	}
	dir, bin := t.TempDir(), t.TempDir()
	py, _ := os.ReadFile("../../internal/extprov/testdata/chaos.py")
	exe := filepath.Join(bin, "chaos.py")
	os.WriteFile(exe, py, 0o755)
	for _, m := range []struct{ name, section, args string }{
		{"scoped.yaml", "scoped", "[--scope]"}, {"plain.yaml", "plain", "[]"}, {"allowed.yaml", "allowed", "[--scope]"}} {
		os.WriteFile(filepath.Join(dir, m.name), []byte("apiVersion: twinlet.dev/v1\nkind: Provider\nsection: "+m.section+
			"\nexecutable: "+exe+"\nargs: "+m.args+"\nprotocolVersion: 1\n"), 0o644)
	}
	s := newSandbox(t)
	cfg := filepath.Join(t.TempDir(), "twinlet.yaml")
	os.WriteFile(cfg, []byte("providerDirs: ["+dir+"]\ncloud:\n  sections: [scoped, allowed]\n  allowed:\n    allow: [\"ok-*\"]\n"), 0o644)
	twin := filepath.Join(t.TempDir(), "twin.json")
	os.WriteFile(twin, []byte(`{"scoped": {"value": "secret-1"}, "plain": {"value": "x"}, "allowed": {"value": "nope"}}`), 0o644)
	code, out, errs := twinlet(t, "plan", "--config", cfg, "--root", s.root, "--state-dir", s.state, "--policy", s.policy, "--twin-desired", twin, "--output", "json")
	if code != 1 {
		t.Fatalf("plan: exit %d\n%s\n%s", code, out, errs)
	}
	for _, want := range []string{`'secret-1' is denied to the twin by secret*`, `'nope' is not allowed to the twin`, "outside the cloud scope"} {
		if !strings.Contains(out, want) {
			t.Errorf("plan lacks %q:\n%s", want, out)
		}
	}
	if !strings.Contains(out, `"plain"`) {
		t.Errorf("plan does not mention the section the twin may not set:\n%s", out)
	}
	// Local policy is not limited by the cloud scope.
	s.write(t, "p.yaml", policyDoc("enforce", "  scoped: { value: secret-2 }\n"))
	code, out, errs = twinlet(t, "plan", "--config", cfg, "--root", s.root, "--state-dir", s.state, "--policy", s.policy)
	if !strings.Contains(out, "+ value: secret-2") {
		t.Fatalf("local plan: exit %d\n%s\n%s", code, out, errs)
	}
	// A rule for an external section that has none is refused, located.
	os.WriteFile(cfg, []byte("providerDirs: ["+dir+"]\ncloud:\n  plain:\n    deny: [\"x\"]\n"), 0o644)
	code, _, errs = twinlet(t, "plan", "--config", cfg, "--root", s.root, "--state-dir", s.state, "--policy", s.policy)
	if code != 1 || !strings.Contains(errs, "twinlet.yaml:3: cloud.plain: the external provider of section plain has no cloud rules") {
		t.Fatalf("rule for a provider without scope: exit %d\n%s", code, errs)
	}
}

// TestRunHealsExternalDriftThroughWatches: with a resync of an hour, an
// edit of a file an external provider manages is healed because the
// provider named it in watchPaths (the Python and the Go example).
func TestRunHealsExternalDriftThroughWatches(t *testing.T) {
	dir := externalDir(t)
	s := newSandbox(t)
	s.write(t, "ext.yaml", policyDoc("enforce", externalSpec))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out, errb testutil.SyncBuffer
	done := make(chan int, 1)
	go func() { done <- run(ctx, s.args("run", "--provider-dirs", dir, "--resync", "1h"), &out, &errb) }()
	ini, conf := "etc/vendor/sensor.ini", "etc/vendor/sensor/calibration.conf"
	testutil.Eventually(t, "first convergence", func() bool {
		return strings.Contains(s.file(ini), "offset = 0.5") && strings.Contains(s.file(conf), "gain = 1.5")
	})
	// The watches are added once a reconcile of the section ends, a little
	// after its files are written: drift again until a watch has seen it.
	drift := func() {
		os.WriteFile(filepath.Join(s.root, ini), []byte("[calibration]\noffset = 9\n"), 0o644)
		os.WriteFile(filepath.Join(s.root, conf), []byte("gain = 7\n"), 0o644)
	}
	drift()
	last := time.Now()
	testutil.Eventually(t, "drift healed through the watches", func() bool {
		healed := strings.Contains(s.file(ini), "offset = 0.5") && strings.Contains(s.file(conf), "gain = 1.5")
		if !healed && time.Since(last) > 2*time.Second && s.file(ini) != "" {
			drift()
			last = time.Now()
		}
		return healed
	})
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
}

// TestProvidersListShowsTheReportedStatus: after the agent ran, list shows
// each provider's section as it reported it: a crashing external provider
// is ok as a provider and Failed/ProviderCrashed as a section, with the
// stderr tail; the Go example and a built-in are Ready.
func TestProvidersListShowsTheReportedStatus(t *testing.T) {
	dir := externalDir(t)
	py, _ := os.ReadFile("../../internal/extprov/testdata/chaos.py")
	exe := filepath.Join(t.TempDir(), "chaos.py")
	if err := os.WriteFile(exe, py, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "crashy.yaml"), []byte("apiVersion: twinlet.dev/v1\nkind: Provider\nsection: crashy\nexecutable: "+exe+
		"\nargs: [--crash-in, apply]\nprotocolVersion: 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	s := newSandbox(t)
	s.write(t, "ext.yaml", policyDoc("enforce", externalSpec+"  crashy: { value: x }\n"))
	if code, out, errs := twinlet(t, s.args("apply", "--once", "--provider-dirs", dir)...); code != 1 {
		t.Fatalf("apply: exit %d\n%s\n%s", code, out, errs)
	}
	code, out, errs := twinlet(t, "providers", "list", "--config", "", "--provider-dirs", dir, "--state-dir", s.state, "--output", "json")
	if code != 0 {
		t.Fatalf("list: exit %d\n%s\n%s", code, out, errs)
	}
	var rows []providerRow
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	got := map[string]providerRow{}
	for _, r := range rows {
		got[r.Section] = r
	}
	for id, want := range map[string]string{"crashy": "Failed/ProviderCrashed", "sensorCalibration": "Ready/Applied", "files": "Ready/Applied"} {
		r := got[id]
		if r.State != "ok" || r.Status.String() != want {
			t.Errorf("%s: state %s status %s, want ok %s", id, r.State, r.Status, want)
		}
	}
	if st := got["crashy"].Status; st == nil || !strings.Contains(st.Message, "crashing in apply on purpose") {
		t.Errorf("crashy's status lacks the stderr tail: %+v", st)
	}
	if got["hostname"].Status != nil || got["hostname"].Source != "built-in" {
		t.Errorf("hostname, not in the policy: %+v", got["hostname"])
	}
	// The text form puts the status beside the provider.
	_, out, _ = twinlet(t, "providers", "list", "--config", "", "--provider-dirs", dir, "--state-dir", s.state)
	row := ""
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "crashy ") {
			row = line
		}
	}
	if !strings.Contains(row, "Failed/ProviderCrashed") || !strings.Contains(row, "crashing in apply") {
		t.Errorf("text row of crashy %q in:\n%s", row, out)
	}
}
