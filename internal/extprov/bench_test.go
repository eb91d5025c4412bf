package extprov

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/twinlet/twinlet/examples/providers/sensor-calibration/sensor"
	"github.com/twinlet/twinlet/providers"
	"github.com/twinlet/twinlet/reconciler"
)

// converged returns a reconciler of one provider whose section (from a
// local policy) has already converged.
func converged(b *testing.B, info providers.Info, spec string) *reconciler.Reconciler {
	b.Helper()
	root, stateDir, policyDir := b.TempDir(), b.TempDir(), b.TempDir()
	doc := "apiVersion: twinlet.dev/v1\nkind: DevicePolicy\nmetadata: {name: b}\nspec:\n  mode: enforce\n  " + info.ID + ": " + spec + "\n"
	if err := os.WriteFile(filepath.Join(policyDir, "b.yaml"), []byte(doc), 0o644); err != nil {
		b.Fatal(err)
	}
	r, err := reconciler.New(reconciler.Options{Root: root, StateDir: stateDir, PolicyDir: policyDir, Providers: []providers.Info{info}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(r.Close)
	if rep := r.ReconcileAll(context.Background(), false); !rep.AllReady() {
		b.Fatalf("not converged: %s", rep.Document)
	}
	return r
}

// BenchmarkNoopReconcileExternal measures the cost of the process
// boundary: a no-op reconcile of the sensorCalibration section with the
// Go example's logic built in and the same logic as an external provider
// (the example's binary, through the protocol), interleaved in one run.
// It reports both and their ratio (x-builtin: external / built in); the
// Python example's no-op reconcile is reported against the same built-in
// baseline.
func BenchmarkNoopReconcileExternal(b *testing.B) {
	dir := b.TempDir()
	manifest(b, dir, "sensor.yaml", "sensorCalibration", goExample(b))
	h := load(b, testOpts(b), dir)
	spec := "{offset: 0.5, gain: 2}"
	builtIn := converged(b, sensor.Info(), spec)
	external := converged(b, one(b, h, "sensorCalibration"), spec)
	var py *reconciler.Reconciler
	if _, err := os.Stat("/usr/bin/python3"); err == nil {
		pdir := b.TempDir()
		manifest(b, pdir, "vendor.yaml", "vendorIni", pythonExample(b))
		ph := load(b, testOpts(b), pdir)
		py = converged(b, one(b, ph, "vendorIni"), `{sensor: {path: /etc/vendor/s.ini, settings: {calibration: {offset: "0.5", gain: "2"}}}}`)
	}
	ctx := context.Background()
	var tb, te, tp time.Duration
	for b.Loop() {
		t0 := time.Now()
		builtIn.ReconcileAll(ctx, false)
		t1 := time.Now()
		external.ReconcileAll(ctx, false)
		t2 := time.Now()
		tb += t1.Sub(t0)
		te += t2.Sub(t1)
		if py != nil {
			py.ReconcileAll(ctx, false)
			tp += time.Since(t2)
		}
	}
	n := float64(b.N)
	b.ReportMetric(float64(tb.Nanoseconds())/n, "builtin-ns/op")
	b.ReportMetric(float64(te.Nanoseconds())/n, "go-external-ns/op")
	b.ReportMetric(float64(te)/float64(tb), "go-x-builtin")
	if py != nil {
		b.ReportMetric(float64(tp.Nanoseconds())/n, "python-external-ns/op")
		b.ReportMetric(float64(tp)/float64(tb), "python-x-builtin")
	}
}
