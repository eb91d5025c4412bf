package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestMain lets the crash test re-run this binary as the agent.
func TestMain(m *testing.M) {
	if args := os.Getenv("TWINLET_TEST_CHILD"); args != "" {
		var argv []string
		_ = json.Unmarshal([]byte(args), &argv)
		os.Exit(run(context.Background(), argv, os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

type sandbox struct {
	root, state, policy string
}

func newSandbox(t *testing.T) *sandbox {
	t.Helper()
	d := t.TempDir()
	s := &sandbox{root: filepath.Join(d, "root"), state: filepath.Join(d, "state"), policy: filepath.Join(d, "policy")}
	for _, p := range []string{s.root, s.policy} {
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

func (s *sandbox) write(t *testing.T, name, body string) string {
	t.Helper()
	p := filepath.Join(s.policy, name)
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func (s *sandbox) args(cmd string, extra ...string) []string {
	// No external providers unless a test names them: the machine's
	// providers.d is not the sandbox's.
	return append([]string{cmd, "--config", "", "--root", s.root, "--state-dir", s.state, "--policy", s.policy, "--provider-dirs", ""}, extra...)
}

func (s *sandbox) file(name string) string {
	b, err := os.ReadFile(filepath.Join(s.root, name))
	if err != nil {
		return "<missing>"
	}
	return string(b)
}

func twinlet(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func policyDoc(mode, spec string) string {
	return fmt.Sprintf("apiVersion: twinlet.dev/v1\nkind: DevicePolicy\nmetadata: { name: p }\nspec:\n  mode: %s\n%s", mode, spec)
}

const goodSpec = `  hostname: { name: kiosk-17 }
  timezone: { name: Europe/Berlin }
  files:
    motd: { path: /etc/motd, content: "hello\n", mode: "0644" }
  sysctl:
    swappiness: { key: vm.swappiness, value: "10" }
`

func TestApplyPlanIdempotent(t *testing.T) {
	s := newSandbox(t)
	s.write(t, "base.yaml", policyDoc("default", goodSpec))

	code, out, errs := twinlet(t, s.args("plan")...)
	if code != 2 || !strings.Contains(out, "+ motd") {
		t.Fatalf("plan before apply: code %d\n%s%s", code, out, errs)
	}
	if _, err := os.Stat(s.state); !os.IsNotExist(err) {
		t.Fatal("plan created the state dir")
	}
	code, out, errs = twinlet(t, s.args("apply", "--once")...)
	if code != 0 {
		t.Fatalf("apply: code %d\n%s%s", code, out, errs)
	}
	if s.file("etc/motd") != "hello\n" || s.file("etc/hostname") != "kiosk-17\n" || s.file("etc/timezone") != "Europe/Berlin\n" {
		t.Fatalf("not applied: motd=%q hostname=%q", s.file("etc/motd"), s.file("etc/hostname"))
	}
	// Idempotent: the second apply changes nothing and plan has nothing to do.
	code, out, _ = twinlet(t, s.args("apply", "--once", "--output", "json")...)
	if code != 0 {
		t.Fatalf("second apply: %d %s", code, out)
	}
	var doc map[string]struct {
		Status struct{ State, Reason string } `json:"__status"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"hostname", "timezone", "files", "sysctl"} {
		if doc[id].Status.State != "Ready" || doc[id].Status.Reason != "Unchanged" {
			t.Errorf("%s: %+v", id, doc[id].Status)
		}
	}
	if code, out, _ := twinlet(t, s.args("plan")...); code != 0 {
		t.Fatalf("plan after apply: code %d\n%s", code, out)
	}
	code, out, _ = twinlet(t, "status", "--config", "", "--state-dir", s.state)
	if code != 0 || !strings.Contains(out, "hostname") || !strings.Contains(out, "Ready") {
		t.Fatalf("status: %d\n%s", code, out)
	}
}

// TestInvalidInputIsLocated: each kind of bad input gives a located error,
// the other sections are still applied, and the bad section's last good
// desired stays in force.
func TestInvalidInputIsLocated(t *testing.T) {
	tests := []struct {
		name, spec string
		section    string // the section that fails ("" for a whole-file problem)
		want       string // in the text output
	}{
		{"wrong type", strings.Replace(goodSpec, `value: "10"`, `value: [10]`, 1), "sysctl", "base.yaml:11:39: /sysctl/swappiness/value"},
		{"unknown field", strings.Replace(goodSpec, `mode: "0644" }`, `mode: "0644", colour: red }`, 1), "files", "/files/motd/colour"},
		{"unknown section", goodSpec + "  hostnam: { name: x }\n", "", `unknown section "hostnam"`},
		{"bad hostname", strings.Replace(goodSpec, "kiosk-17", "-bad_host", 1), "hostname", "base.yaml:6:21: /hostname/name"},
		{"unknown zone", strings.Replace(goodSpec, "Europe/Berlin", "Mars/Olympus", 1), "timezone", "base.yaml:7:21: /timezone/name"},
		{"out of root path", strings.Replace(goodSpec, "/etc/motd", "/root/motd", 1), "files", "/files/motd/path"},
		{"dotdot path", strings.Replace(goodSpec, "/etc/motd", "/etc/../root/x", 1), "files", "/files/motd/path"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSandbox(t)
			s.write(t, "base.yaml", policyDoc("default", goodSpec))
			if code, out, errs := twinlet(t, s.args("apply")...); code != 0 {
				t.Fatalf("good apply: %d\n%s%s", code, out, errs)
			}
			// Drift, then bad input: the good sections and the bad
			// section's last good desired are still enforced.
			os.WriteFile(filepath.Join(s.root, "etc/motd"), []byte("drift"), 0o644)
			os.WriteFile(filepath.Join(s.root, "etc/hostname"), []byte("drift\n"), 0o644)
			s.write(t, "base.yaml", policyDoc("default", tt.spec))
			code, out, errs := twinlet(t, s.args("apply")...)
			if code != 1 {
				t.Fatalf("code %d, want 1\n%s%s", code, out, errs)
			}
			if !strings.Contains(out, tt.want) {
				t.Fatalf("output lacks %q:\n%s", tt.want, out)
			}
			if tt.section != "" && !strings.Contains(out, tt.section) {
				t.Fatalf("section %s not reported:\n%s", tt.section, out)
			}
			if s.file("etc/motd") != "hello\n" || s.file("etc/hostname") != "kiosk-17\n" {
				t.Fatalf("not converged: motd=%q hostname=%q\n%s", s.file("etc/motd"), s.file("etc/hostname"), out)
			}
			// validate says the same, one line per problem.
			vcode, vout, _ := twinlet(t, "validate", "--config", "", "--root", s.root, s.policy)
			if vcode != 1 || !strings.Contains(vout, "base.yaml:") {
				t.Fatalf("validate: %d\n%s", vcode, vout)
			}
		})
	}
}

func TestSyntaxErrorKeepsLastGood(t *testing.T) {
	s := newSandbox(t)
	s.write(t, "base.yaml", policyDoc("default", goodSpec))
	if code, out, _ := twinlet(t, s.args("apply")...); code != 0 {
		t.Fatal(out)
	}
	s.write(t, "base.yaml", policyDoc("default", goodSpec+"  files: [\n"))
	os.WriteFile(filepath.Join(s.root, "etc/motd"), []byte("drift"), 0o644)
	code, out, _ := twinlet(t, s.args("apply")...)
	if code != 1 || !strings.Contains(out, "base.yaml:") || !strings.Contains(out, "YAML syntax") {
		t.Fatalf("code %d\n%s", code, out)
	}
	if s.file("etc/motd") != "hello\n" {
		t.Fatal("last good desired not in force")
	}
}

func TestRefusesWritablePolicy(t *testing.T) {
	s := newSandbox(t)
	p := s.write(t, "base.yaml", policyDoc("default", goodSpec))
	os.Chmod(p, 0o664)
	code, out, _ := twinlet(t, s.args("apply")...)
	if code != 1 || !strings.Contains(out, "group or others") {
		t.Fatalf("code %d\n%s", code, out)
	}
	if s.file("etc/motd") != "<missing>" {
		t.Fatal("applied a refused policy")
	}
}

func TestTwinDesiredPreview(t *testing.T) {
	s := newSandbox(t)
	s.write(t, "lock.yaml", policyDoc("enforce", "  hostname: { name: locked }\n"))
	twin := filepath.Join(t.TempDir(), "twin.json")
	os.WriteFile(twin, []byte(`{"hostname":{"name":"from-twin"},"files":{"motd":{"path":"/etc/motd","content":"hi\n"}},"$version":4}`), 0o644)
	code, out, errs := twinlet(t, s.args("plan", "--twin-desired", twin)...)
	if code != 2 || !strings.Contains(out, "locked") || !strings.Contains(out, "conflict") {
		t.Fatalf("plan: %d\n%s%s", code, out, errs)
	}
}

func TestExamplesValidate(t *testing.T) {
	code, out, errs := twinlet(t, "validate", "--config", "../../examples/twinlet.yaml", "--root", t.TempDir(), "../../examples/local")
	if code != 0 {
		t.Fatalf("examples invalid: %d\n%s%s", code, out, errs)
	}
	if _, err := os.Stat("../../examples/systemd/twinlet.service"); err != nil {
		t.Fatal(err)
	}
}

func TestSchemaAndVersion(t *testing.T) {
	code, out, _ := twinlet(t, "schema")
	var all map[string]json.RawMessage
	if code != 0 || json.Unmarshal([]byte(out), &all) != nil || all["files"] == nil || all["policy"] == nil {
		t.Fatalf("schema: %d %.200s", code, out)
	}
	if code, _, errs := twinlet(t, "schema", "nope"); code != 1 || !strings.Contains(errs, "have:") {
		t.Fatalf("schema nope: %d %s", code, errs)
	}
	if code, out, _ := twinlet(t, "version"); code != 0 || !strings.HasPrefix(out, "twinlet ") {
		t.Fatal(out)
	}
	if code, _, errs := twinlet(t, "apply", "--output", "xml", "--config", ""); code != 1 || !strings.Contains(errs, "--output") {
		t.Fatalf("bad flag: %d %s", code, errs)
	}
}

func TestAllowedRootsRefused(t *testing.T) {
	s := newSandbox(t)
	if err := os.Symlink(t.TempDir(), filepath.Join(s.root, "srv")); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		flag, want string
	}{
		{"/etc,/proc", "--allowed-roots: /proc is refused"},
		{"/", `--allowed-roots: "/" would let`},
		{"etc", `--allowed-roots: "etc" is not an absolute device path`},
		{"/srv/kiosk", "--allowed-roots: /srv/kiosk is refused: it goes through a symbolic link"},
	} {
		code, _, errs := twinlet(t, s.args("plan", "--allowed-roots", tt.flag)...)
		if code != 1 || !strings.Contains(errs, tt.want) {
			t.Errorf("--allowed-roots %s: exit %d, stderr %q, want %q", tt.flag, code, errs, tt.want)
		}
	}
	// From the config, with its file:line, checked against --root.
	cfg := filepath.Join(t.TempDir(), "twinlet.yaml")
	if err := os.WriteFile(cfg, []byte("resync: 5m\nallowedRoots:\n  - /etc\n  - /srv/kiosk\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	args := append(s.args("plan"), "--config", cfg)
	if code, _, errs := twinlet(t, args...); code != 1 || !strings.Contains(errs, cfg+":4: allowedRoots[1]: /srv/kiosk is refused") {
		t.Fatalf("exit %d, stderr %q", code, errs)
	}
}

func TestUntrustedPolicyAppliesNothing(t *testing.T) {
	s := newSandbox(t)
	p := s.write(t, "10-base.yaml", policyDoc("enforce", goodSpec))
	if err := os.Chmod(p, 0o664); err != nil {
		t.Fatal(err)
	}
	code, out, errs := twinlet(t, s.args("apply")...)
	if code == 0 || !strings.Contains(out+errs, p+": refused: mode 0664") {
		t.Fatalf("exit %d\n%s%s", code, out, errs)
	}
	if got := s.file("etc/motd"); got != "<missing>" {
		t.Fatalf("applied from a refused policy: /etc/motd = %q", got)
	}
	// The directory holding it counts as much as the file.
	os.Chmod(p, 0o644)
	os.Chmod(s.policy, 0o777)
	code, out, errs = twinlet(t, s.args("apply")...)
	if code == 0 || !strings.Contains(out+errs, "directory "+s.policy+": refused: mode 0777") {
		t.Fatalf("exit %d\n%s%s", code, out, errs)
	}
	if got := s.file("etc/motd"); got != "<missing>" {
		t.Fatalf("applied from a policy in a writable directory: /etc/motd = %q", got)
	}
}
