package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/twinlet/twinlet/providers/packages/debtest"
)

// TestPackagesDriftThroughCLI drives the packages provider through the
// real CLI on a sandbox root with its own dpkg database and a local file
// repository: plan shows each step as a diff line, apply converges, a
// removal behind twinlet's back is planned and healed.
func TestPackagesDriftThroughCLI(t *testing.T) {
	debtest.Require(t)
	s := newSandbox(t)
	debtest.InitRoot(t, s.root)
	repo := debtest.NewRepo(t, debtest.Deb{Name: "libgreet", Version: "1.0-1"},
		debtest.Deb{Name: "hello", Version: "2.10-3", Depends: "libgreet (>= 1.0)"},
		debtest.Deb{Name: "bad", Version: "1.0", Postinst: "exit 3"})
	s.write(t, "pkgs.yaml", policyDoc("default", `  packages:
    sources:
      local: { uri: "`+repo.URI()+`", suite: ./, trusted: true }
    hello: { version: 2.10-3 }
`))
	code, out, errs := twinlet(t, s.args("plan")...)
	for _, want := range []string{"+ sources/local: /etc/apt/sources.list.d/twinlet-local.sources", "~ lists: package lists -> apt-get update", "+ hello: install hello 2.10-3"} {
		if !strings.Contains(out, want) {
			t.Fatalf("plan (exit %d) lacks %q:\n%s%s", code, want, out, errs)
		}
	}
	if code, out, errs = twinlet(t, s.args("apply")...); code != 0 {
		t.Fatalf("apply: %d\n%s%s", code, out, errs)
	}
	if got := debtest.Installed(t, s.root); got["hello"] != "2.10-3 install ok installed" || got["libgreet"] == "" {
		t.Fatalf("installed: %v", got)
	}
	debtest.Dpkg(t, s.root, "-r", "hello")
	code, out, errs = twinlet(t, s.args("plan")...)
	if !strings.Contains(out, "+ hello: install hello 2.10-3") || strings.Contains(out, "sources/local") || strings.Contains(out, "lists") {
		t.Fatalf("plan after tampering (exit %d):\n%s%s", code, out, errs)
	}
	if code, out, errs = twinlet(t, s.args("apply")...); code != 0 {
		t.Fatalf("apply: %d\n%s%s", code, out, errs)
	}
	if code, out, errs = twinlet(t, s.args("plan")...); code != 0 || strings.Contains(out, "hello:") {
		t.Fatalf("plan after converging (exit %d):\n%s%s", code, out, errs)
	}

	// dpkg's lock held by someone else: Waiting, not Failed, nothing done.
	pol := policyDoc("default", `  packages:
    sources:
      local: { uri: "`+repo.URI()+`", suite: ./, trusted: true }
    hello: { version: 2.10-3 }
    bad: {}
`)
	s.write(t, "pkgs.yaml", pol)
	lock, err := os.OpenFile(filepath.Join(s.root, "var/lib/dpkg/lock-frontend"), os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.FcntlFlock(lock.Fd(), syscall.F_SETLK, &syscall.Flock_t{Type: syscall.F_WRLCK}); err != nil {
		t.Fatal(err)
	}
	_, out, errs = twinlet(t, s.args("apply", "--output", "json")...)
	if st := packagesStatus(t, out); st.State != "Waiting" || st.Reason != "LockHeld" || !strings.Contains(st.Message, "lock") {
		t.Fatalf("apply with the lock held: %+v\n%s", st, errs)
	}
	lock.Close()
	// A failing postinst: Failed, with dpkg's message and the item.
	_, out, errs = twinlet(t, s.args("apply", "--output", "json")...)
	st := packagesStatus(t, out)
	if st.State != "Failed" || st.Reason != "ApplyFailed" || !strings.Contains(st.Message, "apply packages/bad") ||
		!strings.Contains(st.Message, "bad: installed bad package post-installation script subprocess returned error exit status 3") {
		t.Fatalf("apply of a failing postinst: %+v\n%s", st, errs)
	}
}

func packagesStatus(t *testing.T, out string) (st struct{ State, Reason, Message string }) {
	t.Helper()
	var doc map[string]map[string]json.RawMessage
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("output: %v\n%s", err, out)
	}
	if err := json.Unmarshal(doc["packages"]["__status"], &st); err != nil {
		t.Fatalf("packages.__status: %v\n%s", err, out)
	}
	return st
}

// The cloud scope of packages through the CLI and the agent config: the
// twin may install only what the allowlist names, and may not remove an
// essential package without privilege.
func TestPackagesCloudScope(t *testing.T) {
	debtest.Require(t)
	s := newSandbox(t)
	debtest.InitRoot(t, s.root)
	twin := filepath.Join(t.TempDir(), "twin.json")
	os.WriteFile(twin, []byte(`{"packages":{"curl":{},"hello":{},"base":{"name":"base-files","ensure":"absent","allowEssential":true}},"$version":2}`), 0o644)
	cfg := filepath.Join(t.TempDir(), "twinlet.yaml")
	os.WriteFile(cfg, []byte("cloud:\n  packages:\n    allow: [hello, base-*]\n"), 0o644)
	a := s.args("plan", "--twin-desired", twin, "--output", "json")
	a[2] = cfg // --config
	code, out, errs := twinlet(t, a...)
	if code != 1 || !strings.Contains(out, `"twin:/packages/curl/name"`) || !strings.Contains(out, `"twin:/packages/base/allowEssential"`) || strings.Contains(out, `/packages/hello`) {
		t.Fatalf("plan: %d\n%s%s", code, out, errs)
	}
}

// TestPackagesTimeoutFromConfig: timeouts.packages in twinlet.yaml bounds
// each call of the section: an install whose postinst does not finish is
// stopped at the deadline (the section fails, dpkg's lock is free), and
// once the script can finish the next apply configures the package.
func TestPackagesTimeoutFromConfig(t *testing.T) {
	debtest.Require(t)
	s := newSandbox(t)
	debtest.InitRoot(t, s.root)
	repo := debtest.NewRepo(t, debtest.Deb{Name: "slow", Version: "1.0",
		Postinst: `while [ ! -e "$DPKG_ROOT/tmp/go" ]; do sleep 0.05; done`})
	s.write(t, "pkgs.yaml", policyDoc("default", `  packages:
    sources:
      local: { uri: "`+repo.URI()+`", suite: ./, trusted: true }
    slow: {}
`))
	cfg := filepath.Join(t.TempDir(), "twinlet.yaml")
	os.WriteFile(cfg, []byte("timeouts:\n  packages: 3s\n"), 0o644)
	a := s.args("apply", "--once", "--output", "json")
	a[2] = cfg // --config
	code, out, errs := twinlet(t, a...)
	st := packagesStatus(t, out)
	if code == 0 || st.State != "Failed" || !strings.Contains(st.Message, "deadline exceeded") {
		t.Fatalf("apply with a hung postinst: %d %+v\n%s", code, st, errs)
	}
	if got := debtest.Installed(t, s.root)["slow"]; strings.HasSuffix(got, " installed") {
		t.Fatalf("slow: %q", got)
	}
	if err := os.WriteFile(filepath.Join(s.root, "tmp/go"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if code, out, errs := twinlet(t, a...); code != 0 {
		t.Fatalf("apply once the script can finish: %d\n%s%s", code, out, errs)
	}
	if got := debtest.Installed(t, s.root)["slow"]; got != "1.0 install ok installed" {
		t.Fatalf("slow: %q", got)
	}
}
