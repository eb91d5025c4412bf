package reconciler

import (
	"bytes"
	"context"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"testing"
)

var update = flag.Bool("update", false, "rewrite golden files")

// TestRenderGolden pins the rendered plan and apply summary.
func TestRenderGolden(t *testing.T) {
	f := newFixture(t)
	f.policy(t, "base.yaml", basePolicy)
	f.policy(t, "lock.yaml", `apiVersion: twinlet.dev/v1
kind: DevicePolicy
metadata: { name: lock }
spec:
  mode: enforce
  later:
    x: bad-value
`)
	twin := filepath.Join(t.TempDir(), "twin.json")
	os.WriteFile(twin, []byte(`{"notes":{"color":"teal"},"$version":3}`), 0o644)
	os.MkdirAll(filepath.Join(f.root, "etc/notes"), 0o755)
	os.WriteFile(filepath.Join(f.root, "etc/notes/color"), []byte("red"), 0o644)
	r := f.new(t, func(o *Options) { o.TwinDesiredFile = twin })
	var out bytes.Buffer
	RenderPlan(&out, r.ReconcileAll(context.Background(), true))
	out.WriteString("---\n")
	RenderSummary(&out, r.ReconcileAll(context.Background(), false))
	got := regexp.MustCompile(`/tmp/\S+/`).ReplaceAll(out.Bytes(), []byte("TMP/"))
	golden := filepath.Join("testdata", "plan.golden")
	if *update {
		os.WriteFile(golden, got, 0o644)
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("rendered output differs from %s (run go test -update):\n%s", golden, got)
	}
}
