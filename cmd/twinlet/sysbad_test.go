package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/twinlet/twinlet/internal/accounts/accountstest"
	"github.com/twinlet/twinlet/providers/packages/debtest"
)

// TestSystemBadInputLocated is the list of bad input through the
// CLI, in one policy file on a root with a dpkg database, unit files and
// accounts: an unknown package, an invalid unit name, a uid collision
// and a shell that is not in <root>/etc/shells are each reported at
// file:line:col with the JSON pointer, and nothing changes on the root
// (dpkg's database, the accounts, the units' links).
func TestSystemBadInputLocated(t *testing.T) {
	debtest.Require(t)
	accountstest.Need(t)
	if _, err := exec.LookPath("systemctl"); err != nil {
		t.Skip("systemctl is not installed: run `make systemd-tools` (apt-get install systemd)")
	}
	s := newSandbox(t)
	debtest.InitRoot(t, s.root)
	accountstest.Populate(t, s.root)
	unitDir := filepath.Join(s.root, "usr/lib/systemd/system")
	if err := os.MkdirAll(unitDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(unitDir, "web.service"), []byte("[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	repo := debtest.NewRepo(t, debtest.Deb{Name: "hello", Version: "1.0"})
	src := "  packages:\n    sources:\n      local: { uri: \"" + repo.URI() + "\", suite: ./, trusted: true }\n    hello: {}\n"
	// First a good file, so that the lists are fresh and the unknown
	// package is refused by the plan itself.
	s.write(t, "sys.yaml", policyDoc("default", src))
	if code, out, errs := twinlet(t, s.args("apply", "--once")...); code != 0 {
		t.Fatalf("apply: %d\n%s%s", code, out, errs)
	}
	snapshot := func() string {
		var b strings.Builder
		for _, f := range []string{"var/lib/dpkg/status", "etc/passwd", "etc/group", "etc/shadow"} {
			b.WriteString(f + ":\n" + s.file(f))
		}
		filepath.Walk(filepath.Join(s.root, "etc/systemd"), func(p string, fi os.FileInfo, err error) error {
			if err == nil {
				b.WriteString(p + "\n")
			}
			return nil
		})
		return b.String()
	}
	before := snapshot()
	p := s.write(t, "sys.yaml", policyDoc("default", src+`    nosuch: {}
  services:
    web: { unit: web, enabled: true }
  users:
    alice: { uid: 1 }
    bob: { shell: /bin/zsh }
`))
	code, out, errs := twinlet(t, s.args("apply", "--once")...)
	t.Logf("apply:\n%s%s", out, errs)
	if code == 0 {
		t.Fatal("bad input applied")
	}
	for _, want := range []string{
		p + ":10:5: /packages/nosuch/name: ",
		p + ":12:18: /services/web/unit: ",
		p + ":14:19: /users/alice/uid: uid 1 belongs to user daemon on the device",
		p + ":15:19: /users/bob/shell: /bin/zsh is not a login shell listed in /etc/shells",
	} {
		if !strings.Contains(out+errs, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if after := snapshot(); after != before {
		t.Errorf("bad input changed the root:\n%s\n->\n%s", before, after)
	}
}
