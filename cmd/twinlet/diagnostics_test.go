package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The diagnostics section through the CLI: plan shows a request as a diff
// line, collectors from the twin are Forbidden (local policy defines
// them), and apply without a cloud connection keeps the bundle and reports
// the upload failure.
func TestDiagnosticsPlanAndScope(t *testing.T) {
	s := newSandbox(t)
	os.MkdirAll(filepath.Join(s.root, "var/log/app"), 0o755)
	os.WriteFile(filepath.Join(s.root, "var/log/app/a.log"), []byte("a\n"), 0o644)
	s.write(t, "diag.yaml", policyDoc("default", "  diagnostics:\n    collectors:\n      logs: { files: { paths: [\"/var/log/app/*.log\"] } }\n"))
	twin := filepath.Join(t.TempDir(), "twin.json")
	os.WriteFile(twin, []byte(`{"diagnostics":{"requests":{"case42":{"uploadName":"support/case-42.tar.gz"}}},"$version":2}`), 0o644)
	code, out, errs := twinlet(t, s.args("plan", "--twin-desired", twin)...)
	if code != 2 || !strings.Contains(out, "+ requests/case42: collect 1 collector, upload as support/case-42.tar.gz") {
		t.Fatalf("plan: %d\n%s%s", code, out, errs)
	}

	evil := filepath.Join(t.TempDir(), "evil.json")
	os.WriteFile(evil, []byte(`{"diagnostics":{"collectors":{"x":{"command":{"argv":["/bin/sh","-c","id"]}}},"requests":{"r":{}}},"$version":3}`), 0o644)
	code, out, errs = twinlet(t, s.args("plan", "--twin-desired", evil)...)
	if code != 1 || !strings.Contains(out, "twin:/diagnostics/collectors") || !strings.Contains(out, "only local policy sets collectors") {
		t.Fatalf("plan with collectors from the twin: %d\n%s%s", code, out, errs)
	}

	code, out, errs = twinlet(t, s.args("apply", "--once", "--twin-desired", twin)...)
	if code != 1 || !strings.Contains(out, "no cloud connection to upload through") {
		t.Fatalf("apply offline: %d\n%s%s", code, out, errs)
	}
	if _, err := os.Stat(filepath.Join(s.state, "diagnostics", "pending", "case42.tar.gz")); err != nil {
		t.Fatalf("the bundle is not kept: %v", err)
	}
}
