package extprov

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twinlet/twinlet/providers"
	_ "github.com/twinlet/twinlet/providers/files"
	"github.com/twinlet/twinlet/reconciler"
)

// TestManifestsRefused: every bad manifest is refused with its location
// and a clear message; the good one among them starts.
func TestManifestsRefused(t *testing.T) {
	dir := t.TempDir()
	exe := chaos(t)
	writable := install(t, "testdata/chaos.py")
	if err := os.Chmod(writable, 0o777); err != nil {
		t.Fatal(err)
	}
	manifest(t, dir, "00-good.yaml", "good", exe)
	manifest(t, dir, "01-v2.yaml", "vtwo", exe, "protocolVersion: 2")
	os.WriteFile(filepath.Join(dir, "01-v2.yaml"), []byte("apiVersion: twinlet.dev/v1\nkind: Provider\nsection: vtwo\nexecutable: "+exe+"\nprotocolVersion: 2\n"), 0o644)
	manifest(t, dir, "02-speaks-v2.yaml", "speaksTwo", exe, "args: [--protocol, \"2.0\"]")
	manifest(t, dir, "03-builtin.yaml", "files", exe)
	manifest(t, dir, "04-dup.yaml", "good", exe)
	manifest(t, dir, "05-writable-exe.yaml", "writableExe", writable)
	w := manifest(t, dir, "06-writable.yaml", "writable", exe)
	if err := os.Chmod(w, 0o666); err != nil {
		t.Fatal(err)
	}
	manifest(t, dir, "07-unknown-key.yaml", "unknownKey", exe, "restart: always")
	manifest(t, dir, "08-no-user.yaml", "noUser", exe, "user: no-such-user-here")
	manifest(t, dir, "09-missing.yaml", "missing", "/nonexistent/provider")
	manifest(t, dir, "10-deps.yaml", "deps", exe, "dependsOn: [nothing]")
	os.WriteFile(filepath.Join(dir, "11-syntax.yaml"), []byte("section: [\n"), 0o644)
	manifest(t, dir, "12-relative.yaml", "relative", "chaos.py")
	manifest(t, dir, "13-timeout.yaml", "timeout", exe, "timeout: soon")

	// StrictModes also means owned by root (or the agent's user): as root,
	// a manifest and an executable that belong to someone else.
	foreign := map[string]string{}
	if os.Geteuid() == 0 {
		foreignExe := install(t, "testdata/chaos.py")
		if err := os.Chown(foreignExe, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		manifest(t, dir, "14-foreign-exe.yaml", "foreignExe", foreignExe)
		if err := os.Chown(manifest(t, dir, "15-foreign.yaml", "foreign", exe), 65534, 65534); err != nil {
			t.Fatal(err)
		}
		foreign["14-foreign-exe.yaml:4:"] = "refused: owned by uid 65534, not by root"
		foreign["15-foreign.yaml"] = "refused: owned by uid 65534, not by root"
	}

	h := load(t, testOpts(t), dir)
	if len(h.entries) != 1 || h.entries[0].m.Section != "good" {
		t.Fatalf("accepted %v", h.Infos())
	}
	want := map[string]string{
		"01-v2.yaml:5:":           "the provider speaks protocol version 2; this agent speaks version 1 only",
		"02-speaks-v2.yaml:4:":    "the provider speaks protocol version 2.0; this agent speaks version 1 only",
		"03-builtin.yaml:3:":      `section "files" belongs to a built-in provider`,
		"04-dup.yaml:3:":          `section "good" is already provided by`,
		"05-writable-exe.yaml:4:": "mode 0777 lets group or others write it",
		"06-writable.yaml":        "mode 0666 lets group or others write it",
		"07-unknown-key.yaml:6:":  `unknown field 'restart'`,
		"08-no-user.yaml:6:":      `user: no user "no-such-user-here"`,
		"09-missing.yaml:4:":      "no such file or directory",
		"10-deps.yaml:6:":         "depends on nothing, which no provider owns",
		"11-syntax.yaml:":         "YAML syntax",
		"12-relative.yaml:4:":     "/executable",
		"13-timeout.yaml:6:":      `timeout: time: invalid duration "soon"`,
	}
	for pos, msg := range foreign {
		want[pos] = msg
	}
	probs := h.Problems()
	for pos, msg := range want {
		found := false
		for _, p := range probs {
			if strings.Contains(p.Pos, pos) && strings.Contains(p.String(), msg) {
				found = true
			}
		}
		if !found {
			t.Errorf("no problem %s … %q in:\n%s", pos, msg, problemsText(probs))
		}
	}
	if len(probs) != len(want) {
		t.Errorf("%d problems, want %d:\n%s", len(probs), len(want), problemsText(probs))
	}
	list := h.List()
	states := map[string]string{}
	for _, s := range list {
		states[s.Section+" "+filepath.Base(s.Manifest)] = s.State
	}
	if states["good 00-good.yaml"] != "running" || states["vtwo 01-v2.yaml"] != "refused" || states["writable 06-writable.yaml"] != "refused" {
		t.Fatalf("list %+v", list)
	}
	// Every refused section but the built-in one reports why.
	for _, info := range h.Infos() {
		if info.ID == "good" {
			continue
		}
		_, err := info.New().Decode(&providers.Env{}, json.RawMessage(`{}`))
		var f *Failure
		if !asFailure(err, &f) || f.Reason != ReasonRefused {
			t.Errorf("section %s: %v", info.ID, err)
		}
	}
	sections := map[string]bool{}
	for _, info := range h.Infos() {
		sections[info.ID] = true
	}
	for _, id := range []string{"vtwo", "speaksTwo", "writable", "writableExe", "unknownKey", "noUser", "missing", "deps", "relative", "timeout"} {
		if !sections[id] {
			t.Errorf("refused section %s has no placeholder: %v", id, sections)
		}
	}
	if sections["files"] {
		t.Error("a refused manifest for the built-in files section took it over")
	}
	if os.Geteuid() == 0 && (!sections["foreign"] || !sections["foreignExe"]) {
		t.Errorf("foreign sections have no placeholder: %v", sections)
	}
}

func problemsText(ps []Problem) string {
	var b strings.Builder
	for _, p := range ps {
		b.WriteString(p.String() + "\n")
	}
	return b.String()
}

func statusOf(rep *reconciler.Report, id string) reconciler.Status {
	for _, s := range rep.Sections {
		if s.ID == id {
			return s.Status
		}
	}
	return reconciler.Status{}
}

// TestMisbehavingProvidersDoNotStopOthers: a provider that crashes in
// apply, one that hangs, one that writes garbage to stdout: each section
// gets its clear status, the well-behaved sections (external and built
// in) converge, the crashed one is relaunched and converges from a fresh
// observe, and nothing is applied twice.
func TestMisbehavingProvidersDoNotStopOthers(t *testing.T) {
	dir := t.TempDir()
	exe := chaos(t)
	manifest(t, dir, "crash.yaml", "crashy", exe, "args: [--crash-in, apply, --once]")
	manifest(t, dir, "hang.yaml", "hangs", exe, "args: [--hang-in, observe]", "timeout: 2s")
	manifest(t, dir, "garbage.yaml", "garbage", exe, "args: [--garbage-in, observe]")
	manifest(t, dir, "vendor.yaml", "vendorIni", pythonExample(t))
	manifest(t, dir, "v2.yaml", "vtwo", exe)
	os.WriteFile(filepath.Join(dir, "v2.yaml"), []byte("apiVersion: twinlet.dev/v1\nkind: Provider\nsection: vtwo\nexecutable: "+exe+"\nprotocolVersion: 2\n"), 0o644)
	if err := os.Chmod(manifest(t, dir, "writable.yaml", "writable", exe), 0o666); err != nil {
		t.Fatal(err)
	}
	h := load(t, testOpts(t), dir)
	// The writable manifest is refused before it is parsed; its section
	// id is read for the refusal alone, so that the section says why.
	if len(h.Problems()) != 2 || !strings.Contains(h.Problems()[0].String(), "protocol version 2") || !strings.Contains(h.Problems()[1].String(), "mode 0666") {
		t.Fatalf("problems: %v", h.Problems())
	}
	root, stateDir, policyDir := t.TempDir(), t.TempDir(), t.TempDir()
	policy := `apiVersion: twinlet.dev/v1
kind: DevicePolicy
metadata: {name: ext}
spec:
  mode: enforce
  crashy: {value: one}
  hangs: {value: two}
  garbage: {value: three}
  vtwo: {value: four}
  writable: {value: five}
  vendorIni:
    main: {path: /etc/vendor/main.ini, settings: {core: {level: "3"}}}
  files:
    motd: {path: /etc/motd, content: "hello\n", mode: "0644"}
`
	if err := os.WriteFile(filepath.Join(policyDir, "ext.yaml"), []byte(policy), 0o644); err != nil {
		t.Fatal(err)
	}
	files, _ := providers.Lookup("files")
	r, err := reconciler.New(reconciler.Options{Root: root, StateDir: stateDir, PolicyDir: policyDir,
		Providers: append(h.Infos(), files)})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ctx := context.Background()
	rep := r.ReconcileAll(ctx, false)
	for id, want := range map[string]struct{ state, reason, msg string }{
		"crashy":    {"Failed", "ProviderCrashed", "crashing in apply on purpose"},
		"hangs":     {"Failed", "ProviderTimeout", "observe did not answer within its timeout; the provider process was killed"},
		"garbage":   {"Failed", "ProviderBug", `not a JSON-RPC 2.0 message to stdout: "hello from a print statement`},
		"vendorIni": {"Ready", "Applied", ""},
		"vtwo":      {"Failed", "ProviderRefused", "v2.yaml:5:18: /protocolVersion: the provider speaks protocol version 2; this agent speaks version 1 only"},
		"files":     {"Ready", "Applied", ""},
		"writable":  {"Failed", "ProviderRefused", "writable.yaml: refused: mode 0666 lets group or others write it"},
	} {
		st := statusOf(rep, id)
		if st.State != want.state || st.Reason != want.reason || !strings.Contains(st.Message, want.msg) {
			t.Errorf("%s: %s %s %q, want %s %s …%q", id, st.State, st.Reason, st.Message, want.state, want.reason, want.msg)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(root, "etc/vendor/main.ini")); string(b) != "[core]\nlevel = 3\n" {
		t.Errorf("vendor ini: %q", b)
	}
	// The crashed provider is relaunched (its backoff is a nanosecond
	// here) and its section converges from a fresh observe.
	rep = r.ReconcileAll(ctx, false)
	if st := statusOf(rep, "crashy"); st.State != "Ready" {
		t.Fatalf("crashy after relaunch: %+v", st)
	}
	applies, _ := os.ReadFile(filepath.Join(root, "chaos/crashy.applies"))
	if string(applies) != "one\n" {
		t.Fatalf("applied %q, want exactly once", applies)
	}
	if st := statusOf(rep, "hangs"); st.Reason != "ProviderTimeout" {
		t.Errorf("hangs: %+v", st)
	}
	for _, s := range h.List() {
		if s.Section == "hangs" && s.State == "running" {
			t.Errorf("the hung provider still runs: %+v", s)
		}
		// Killed for its garbage, it was started again for the next pass.
		if s.Section == "garbage" && s.Starts < 2 {
			t.Errorf("the provider that wrote garbage was not restarted: %+v", s)
		}
	}
	rep = r.ReconcileAll(ctx, false)
	if st := statusOf(rep, "crashy"); st.State != "Ready" || st.Reason != "Unchanged" {
		t.Fatalf("crashy third pass: %+v", st)
	}
}

// TestRelaunchBackoff: after a crash the process is not relaunched before
// its backoff; the call says when it will be.
func TestRelaunchBackoff(t *testing.T) {
	dir := t.TempDir()
	manifest(t, dir, "crash.yaml", "crashy", chaos(t), "args: [--crash-in, observe]")
	opts := testOpts(t)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	opts.Now = func() time.Time { return now }
	opts.RestartBackoff = time.Minute
	h := load(t, opts, dir)
	p := one(t, h, "crashy").New()
	env := &providers.Env{Root: t.TempDir()}
	spec, err := p.Decode(env, json.RawMessage(`{"value":"x"}`))
	if err != nil {
		t.Fatal(err)
	}
	_, err = p.Observe(context.Background(), env, spec)
	var f *Failure
	if !asFailure(err, &f) || f.Reason != ReasonCrashed || !strings.Contains(f.Stderr, "crashing in observe") {
		t.Fatalf("first observe: %v", err)
	}
	starts := h.List()[0].Starts
	_, err = p.Observe(context.Background(), env, spec)
	if !asFailure(err, &f) || !strings.Contains(err.Error(), "relaunched no sooner than 2026-01-01T00:0") {
		t.Fatalf("second observe: %v", err)
	}
	if h.List()[0].Starts != starts || h.List()[0].State != "failed" {
		t.Fatalf("relaunched within its backoff: %+v", h.List()[0])
	}
	now = now.Add(2 * time.Minute)
	if _, err := p.Decode(env, json.RawMessage(`{"value":"y"}`)); err != nil {
		t.Fatalf("decode after the backoff: %v", err)
	}
	if h.List()[0].Starts != starts+1 {
		t.Fatalf("not relaunched after its backoff: %+v", h.List()[0])
	}
}

func asFailure(err error, f **Failure) bool {
	for err != nil {
		if x, ok := err.(*Failure); ok {
			*f = x
			return true
		}
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return false
		}
		err = u.Unwrap()
	}
	return false
}

// TestReasonsAreTheReconcilers: the reasons a process failure names are
// the reconciler's vocabulary.
func TestReasonsAreTheReconcilers(t *testing.T) {
	for got, want := range map[string]string{
		ReasonCrashed: reconciler.ReasonProviderCrashed, ReasonTimeout: reconciler.ReasonProviderTimeout,
		ReasonProtocol: reconciler.ReasonProviderBug, ReasonRefused: reconciler.ReasonProviderRefused,
	} {
		if got != want {
			t.Errorf("%s != %s", got, want)
		}
	}
}

// TestHungDescribeIsRefusedAndHoldsUpNobody: a program that never
// describes itself is refused at its start timeout; the others, started
// side by side, are accepted.
func TestHungDescribeIsRefusedAndHoldsUpNobody(t *testing.T) {
	dir := t.TempDir()
	exe := chaos(t)
	manifest(t, dir, "a-hangs.yaml", "hangs", exe, "args: [--hang-in, describe]")
	manifest(t, dir, "b-good.yaml", "good", exe)
	opts := testOpts(t)
	opts.StartTimeout = 2 * time.Second
	h := load(t, opts, dir)
	if len(h.entries) != 1 || h.entries[0].m.Section != "good" {
		t.Fatalf("accepted %v", h.Infos())
	}
	if p := h.Problems(); len(p) != 1 || !strings.Contains(p[0].String(), "a-hangs.yaml:4:") || !strings.Contains(p[0].String(), "describe did not answer within its timeout") {
		t.Fatalf("problems %v", p)
	}
}
