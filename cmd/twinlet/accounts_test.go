package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/twinlet/twinlet/internal/accounts/accountstest"
)

// TestAccountsPlanApply drives the groups and users providers through the
// CLI with the real shadow tools: plan shows each step as a diff line,
// apply converges, a user deleted behind twinlet's back with userdel
// --root is planned again, and a twin that carries a password hash or
// names root is refused by the cloud scope with the pointer.
func TestAccountsPlanApply(t *testing.T) {
	accountstest.Need(t)
	s := newSandbox(t)
	accountstest.Populate(t, s.root)
	s.write(t, "base.yaml", policyDoc("default", `  groups:
    docker: { gid: 2000, members: [alice] }
  users:
    alice: { uid: 1001, groups: [docker], shell: /bin/bash, passwordHash: "$6$salt$0123456789abcdefABCDEF./" }
`))
	code, out, errs := twinlet(t, s.args("plan")...)
	for _, want := range []string{"+ docker: group docker gid 2000 members (none)", "+ alice: user alice uid 1001 groups docker shell /bin/bash", "~ alice/passwordHash: no password -> the hash from local policy"} {
		if !strings.Contains(out, want) {
			t.Errorf("plan lacks %q", want)
		}
	}
	if code != 2 || strings.Contains(out+errs, "0123456789abcdef") {
		t.Fatalf("plan: code %d\n%s%s", code, out, errs)
	}
	if code, out, errs := twinlet(t, s.args("apply", "--once")...); code != 0 {
		t.Fatalf("apply: %d\n%s%s", code, out, errs)
	}
	// groups ran before alice existed: the watch (or the next pass)
	// adds her to docker.
	if code, out, errs := twinlet(t, s.args("apply", "--once")...); code != 0 {
		t.Fatalf("second apply: %d\n%s%s", code, out, errs)
	}
	if b, _ := os.ReadFile(filepath.Join(s.root, "etc/group")); !strings.Contains(string(b), "docker:x:2000:alice\n") {
		t.Fatalf("etc/group:\n%s", b)
	}
	if code, out, _ := twinlet(t, s.args("plan")...); code != 0 {
		t.Fatalf("plan after apply: %d\n%s", code, out)
	}
	if out, err := exec.Command("userdel", "--root", s.root, "alice").CombinedOutput(); err != nil {
		t.Fatalf("userdel: %v %s", err, out)
	}
	if code, out, _ := twinlet(t, s.args("plan")...); code != 2 || !strings.Contains(out, "+ alice: user alice uid 1001") {
		t.Fatalf("plan after userdel: %d\n%s", code, out)
	}

	twin := filepath.Join(t.TempDir(), "twin.json")
	os.WriteFile(twin, []byte(`{"users":{"bob":{"passwordHash":"$6$x$y"},"root":{"shell":"/bin/sh"}},"$version":2}`), 0o644)
	code, out, errs = twinlet(t, s.args("plan", "--twin-desired", twin, "--output", "json")...)
	if code != 1 || !strings.Contains(out, `"twin:/users/bob/passwordHash"`) || !strings.Contains(out, `"twin:/users/root"`) {
		t.Fatalf("twin plan: %d\n%s%s", code, out, errs)
	}
	if strings.Contains(out, "$6$x$y") {
		t.Fatalf("the twin's hash is echoed:\n%s", out)
	}
}
