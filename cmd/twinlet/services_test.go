package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/twinlet/twinlet/providers/services"
)

// TestServicesNTPThroughTheCLI runs the services, files and ntp sections
// through twinlet plan and apply on a sandbox root with the real
// systemctl --root: plan shows each step as a diff line; apply enables
// the unit, writes the drop-in and the timesyncd drop-in; restartOn
// follows the files item through the reconciler (the fingerprint is
// recorded in the state directory, and recorded again when the file
// changes); a unit disabled behind twinlet's back is converged again.
func TestServicesNTPThroughTheCLI(t *testing.T) {
	if _, err := exec.LookPath("systemctl"); err != nil {
		t.Skip("systemctl is not installed: run `make systemd-tools` (apt-get install systemd)")
	}
	s := newSandbox(t)
	unitDir := filepath.Join(s.root, "usr/lib/systemd/system")
	if err := os.MkdirAll(unitDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(unitDir, "web.service"), []byte("[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	spec := `  files:
    webConf: { path: /etc/web.conf, content: "port 80\n", mode: "0644" }
  services:
    web: { enabled: true, state: running, restartOn: [webConf] }
    dropIns:
      limits: { unit: web.service, content: "[Service]\nLimitNOFILE=4096\n" }
  ntp: { servers: [ntp1.corp.example] }
`
	s.write(t, "base.yaml", policyDoc("enforce", spec))
	code, out, errs := twinlet(t, s.args("plan")...)
	for _, line := range []string{
		"+ webConf",
		"+ dropIns/limits: /etc/systemd/system/web.service.d/limits.conf",
		"~ web: web.service disabled -> enabled",
		"+ servers: servers ntp1.corp.example (systemd-timesyncd /etc/systemd/timesyncd.conf.d/twinlet.conf)",
	} {
		if !strings.Contains(out, line) {
			t.Errorf("plan lacks %q", line)
		}
	}
	t.Logf("plan:\n%s", out)
	if code != 2 || t.Failed() {
		t.Fatalf("plan: code %d\n%s%s", code, out, errs)
	}
	if code, out, errs = twinlet(t, s.args("apply", "--once")...); code != 0 {
		t.Fatalf("apply: code %d\n%s%s", code, out, errs)
	}
	if _, err := os.Lstat(filepath.Join(s.root, "etc/systemd/system/multi-user.target.wants/web.service")); err != nil {
		t.Fatalf("web.service not enabled: %v", err)
	}
	if got := s.file("etc/systemd/timesyncd.conf.d/twinlet.conf"); !strings.Contains(got, "NTP=ntp1.corp.example\n") {
		t.Fatalf("timesyncd drop-in: %q", got)
	}
	record := func() string {
		b, _ := os.ReadFile(filepath.Join(s.state, services.RecordFile))
		return string(b)
	}
	first := record()
	if !strings.Contains(first, `"webConf": "sha256:`) {
		t.Fatalf("restartOn not recorded through the reconciler: %q", first)
	}
	if code, out, _ := twinlet(t, s.args("plan")...); code != 0 {
		t.Fatalf("plan after apply: code %d\n%s", code, out)
	}

	// The files item changes: files rewrites it, then services records
	// the new fingerprint (no systemd runs here: nothing to restart).
	s.write(t, "base.yaml", policyDoc("enforce", strings.Replace(spec, "port 80", "port 8080", 1)))
	if code, out, errs = twinlet(t, s.args("apply", "--once")...); code != 0 {
		t.Fatalf("apply after the change: code %d\n%s%s", code, out, errs)
	}
	if r := record(); r == first || !strings.Contains(r, `"webConf": "sha256:`) {
		t.Fatalf("new fingerprint not recorded: %q -> %q", first, r)
	}

	// Disabled behind twinlet's back: plan shows it, apply heals it.
	if out, err := exec.Command("systemctl", "--root="+s.root, "disable", "web.service").CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if code, out, _ := twinlet(t, s.args("plan")...); code != 2 || !strings.Contains(out, "~ web: web.service disabled -> enabled") {
		t.Fatalf("plan after the drift: code %d\n%s", code, out)
	}
	if code, out, errs = twinlet(t, s.args("apply", "--once")...); code != 0 {
		t.Fatalf("apply after the drift: code %d\n%s%s", code, out, errs)
	}
	if _, err := os.Lstat(filepath.Join(s.root, "etc/systemd/system/multi-user.target.wants/web.service")); err != nil {
		t.Fatalf("web.service not enabled again: %v", err)
	}
}

// TestServicesCloudScope: from the twin, a drop-in (ExecStart= is root
// code execution) and the ssh unit are Forbidden by default, with their
// pointers; the allowed item converges; local policy may write drop-ins.
func TestServicesCloudScope(t *testing.T) {
	if _, err := exec.LookPath("systemctl"); err != nil {
		t.Skip("systemctl is not installed: run `make systemd-tools` (apt-get install systemd)")
	}
	s := newSandbox(t)
	unitDir := filepath.Join(s.root, "usr/lib/systemd/system")
	os.MkdirAll(unitDir, 0o755)
	for _, u := range []string{"web.service", "ssh.service"} {
		os.WriteFile(filepath.Join(unitDir, u), []byte("[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n"), 0o644)
	}
	s.write(t, "local.yaml", policyDoc("default", "  services:\n    dropIns:\n      local: { unit: web.service, content: \"[Service]\\nNice=5\\n\" }\n"))
	twin := filepath.Join(t.TempDir(), "twin.json")
	os.WriteFile(twin, []byte(`{"services":{"web":{"enabled":true},"ssh":{"masked":true},`+
		`"dropIns":{"evil":{"unit":"web.service","content":"[Service]\nExecStart=/bin/sh -c id\n"}}},"$version":3}`), 0o644)
	code, out, errs := twinlet(t, s.args("apply", "--once", "--twin-desired", twin, "--output", "json")...)
	if code == 0 {
		t.Fatalf("apply succeeded though the twin was out of scope:\n%s%s", out, errs)
	}
	for _, want := range []string{`"Forbidden"`, `"pointer": "/ssh"`, `"pointer": "/dropIns/evil"`} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %s:\n%s", want, out)
		}
	}
	if _, err := os.Lstat(filepath.Join(s.root, "etc/systemd/system/ssh.service")); err == nil {
		t.Error("the twin masked ssh.service")
	}
	if _, err := os.Lstat(filepath.Join(s.root, "etc/systemd/system/multi-user.target.wants/web.service")); err != nil {
		t.Errorf("the allowed twin item did not converge: %v", err)
	}
	if got := s.file("etc/systemd/system/web.service.d/evil.conf"); got != "<missing>" {
		t.Errorf("the twin wrote a drop-in: %q", got)
	}
	if got := s.file("etc/systemd/system/web.service.d/local.conf"); got != "[Service]\nNice=5\n" {
		t.Errorf("local drop-in: %q", got)
	}
}

// TestNTPCloudScope: cloud.ntp in twinlet.yaml limits the time servers
// the twin may name; one outside the allowlist is Forbidden at its index
// and nothing is written, while local policy is not limited.
func TestNTPCloudScope(t *testing.T) {
	s := newSandbox(t)
	twin := filepath.Join(t.TempDir(), "twin.json")
	os.WriteFile(twin, []byte(`{"ntp":{"servers":["ntp1.corp.example","time.evil.example"]},"$version":2}`), 0o644)
	cfg := filepath.Join(t.TempDir(), "twinlet.yaml")
	os.WriteFile(cfg, []byte("cloud:\n  ntp:\n    allow: [\"*.corp.example\"]\n"), 0o644)
	a := s.args("apply", "--once", "--twin-desired", twin, "--output", "json")
	a[2] = cfg // --config
	code, out, errs := twinlet(t, a...)
	if code == 0 || !strings.Contains(out, `"Forbidden"`) || !strings.Contains(out, `"pointer": "/servers/1"`) {
		t.Fatalf("apply: %d\n%s%s", code, out, errs)
	}
	if got := s.file("etc/systemd/timesyncd.conf.d/twinlet.conf"); got != "<missing>" {
		t.Fatalf("a forbidden twin wrote the drop-in: %q", got)
	}
	s.write(t, "ntp.yaml", policyDoc("enforce", "  ntp: { servers: [time.evil.example] }\n"))
	a = s.args("apply", "--once")
	a[2] = cfg
	if code, out, errs := twinlet(t, a...); code != 0 || !strings.Contains(s.file("etc/systemd/timesyncd.conf.d/twinlet.conf"), "NTP=time.evil.example\n") {
		t.Fatalf("local policy: %d\n%s%s", code, out, errs)
	}
}
