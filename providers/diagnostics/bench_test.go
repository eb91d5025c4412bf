package diagnostics

import (
	"archive/tar"
	"compress/gzip"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/twinlet/twinlet/providers"
	"github.com/twinlet/twinlet/providers/providertest"
)

const benchFiles = 200

// benchRoot puts benchFiles files of 4 KiB under <root>/var/log/bench.
func benchRoot(b *testing.B) *providers.Env {
	env := providertest.NewEnv(b)
	dir := filepath.Join(env.Root, "var/log/bench")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	for i := range benchFiles {
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%04d.log", i)), []byte(fmt.Sprintf("%04096d", i)), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	return env
}

// BenchmarkBundle collects the files through the root's Dir (no link
// followed), hashing each entry and writing the manifest.
func BenchmarkBundle(b *testing.B) {
	env := benchRoot(b)
	spec := Spec{Collectors: []Collector{{Name: "logs", Files: []string{"/var/log/bench/*.log"}}}, MaxBundleSize: DefaultMaxBundleSize}
	out := filepath.Join(b.TempDir(), "b.tar.gz")
	b.ResetTimer()
	for b.Loop() {
		if _, err := writeBundle(b.Context(), env, spec, out); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBundleFloor is what any bundle of the same files must do: read
// each one and write it into a tar.gz.
func BenchmarkBundleFloor(b *testing.B) {
	env := benchRoot(b)
	dir := filepath.Join(env.Root, "var/log/bench")
	out := filepath.Join(b.TempDir(), "b.tar.gz")
	b.ResetTimer()
	for b.Loop() {
		f, err := os.Create(out)
		if err != nil {
			b.Fatal(err)
		}
		zw := gzip.NewWriter(f)
		tw := tar.NewWriter(zw)
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			data, err := os.ReadFile(filepath.Join(dir, e.Name()))
			if err != nil {
				b.Fatal(err)
			}
			tw.WriteHeader(&tar.Header{Name: e.Name(), Mode: 0o600, Size: int64(len(data))})
			tw.Write(data)
		}
		tw.Close()
		zw.Close()
		f.Sync()
		f.Close()
	}
}
