package main

import (
	"strings"
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
		debtest.Deb{Name: "hello", Version: "2.10-3", Depends: "libgreet (>= 1.0)"})
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
}
