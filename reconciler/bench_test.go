package reconciler_test

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	_ "github.com/twinlet/twinlet/providers/files"
	"github.com/twinlet/twinlet/reconciler"
)

const benchFiles = 1000

func benchPolicy(b *testing.B, dir string) {
	var sb strings.Builder
	sb.WriteString("apiVersion: twinlet.dev/v1\nkind: DevicePolicy\nmetadata: { name: bench }\nspec:\n  files:\n")
	for i := 0; i < benchFiles; i++ {
		fmt.Fprintf(&sb, "    f%04d: { path: /srv/bench/d%02d/f%04d.conf, content: \"key%d = value %d\\nsome more configuration text for file %d\\n\", mode: \"0644\" }\n", i, i%32, i, i, i, i)
	}
	if err := os.WriteFile(filepath.Join(dir, "bench.yaml"), []byte(sb.String()), 0o644); err != nil {
		b.Fatal(err)
	}
}

func benchReconciler(b *testing.B, root, stateDir, policyDir string) *reconciler.Reconciler {
	r, err := reconciler.New(reconciler.Options{Root: root, StateDir: stateDir, PolicyDir: policyDir,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	return r
}

// BenchmarkNoopReconcile1000Files is a full pass over 1,000 converged
// files: merge, validate, decode, observe, plan, report (nothing to write).
func BenchmarkNoopReconcile1000Files(b *testing.B) {
	root, stateDir, policyDir := b.TempDir(), b.TempDir(), b.TempDir()
	benchPolicy(b, policyDir)
	r := benchReconciler(b, root, stateDir, policyDir)
	if rep := r.ReconcileAll(context.Background(), false); !rep.AllReady() {
		b.Fatalf("first apply: %+v", rep.Summary)
	}
	b.ResetTimer()
	for b.Loop() {
		rep := r.ReconcileAll(context.Background(), false)
		if rep.Pending() != 0 {
			b.Fatal("not a no-op")
		}
	}
}

// BenchmarkFirstApply1000Files applies 1,000 files to an empty root.
func BenchmarkFirstApply1000Files(b *testing.B) {
	policyDir := b.TempDir()
	benchPolicy(b, policyDir)
	for b.Loop() {
		b.StopTimer()
		root, stateDir := b.TempDir(), b.TempDir()
		r := benchReconciler(b, root, stateDir, policyDir)
		b.StartTimer()
		if rep := r.ReconcileAll(context.Background(), false); !rep.AllReady() {
			b.Fatalf("apply: %+v", rep.Summary)
		}
	}
}

// BenchmarkFloor1000Files is the least any observer must do: stat, read
// and hash the same 1,000 files. The no-op reconcile is measured against it.
func BenchmarkFloor1000Files(b *testing.B) {
	root, stateDir, policyDir := b.TempDir(), b.TempDir(), b.TempDir()
	benchPolicy(b, policyDir)
	benchReconciler(b, root, stateDir, policyDir).ReconcileAll(context.Background(), false)
	var paths []string
	for i := 0; i < benchFiles; i++ {
		paths = append(paths, filepath.Join(root, fmt.Sprintf("srv/bench/d%02d/f%04d.conf", i%32, i)))
	}
	buf := make([]byte, 64<<10)
	b.ResetTimer()
	for b.Loop() {
		for _, p := range paths {
			if _, err := os.Stat(p); err != nil {
				b.Fatal(err)
			}
			f, err := os.Open(p)
			if err != nil {
				b.Fatal(err)
			}
			h := sha256.New()
			io.CopyBuffer(h, struct{ io.Reader }{f}, buf)
			f.Close()
			_ = h.Sum(nil)
		}
	}
}
