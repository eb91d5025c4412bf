package files

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/twinlet/twinlet/providers/providertest"
)

const benchFiles = 1000

// benchSection returns a section of benchFiles converged files of 1 KiB.
func benchSection() json.RawMessage {
	items := map[string]any{}
	for i := range benchFiles {
		items[fmt.Sprintf("f%04d", i)] = map[string]string{
			"path":    fmt.Sprintf("/etc/bench/d%02d/f%04d.conf", i%20, i),
			"content": fmt.Sprintf("%01024d", i),
			"mode":    "0640",
		}
	}
	b, _ := json.Marshal(items)
	return b
}

// BenchmarkObservePlanNoop measures the no-op path of a reconcile of
// 1,000 converged files: Observe and Plan, finding nothing to do.
func BenchmarkObservePlanNoop(b *testing.B) {
	p, env := New(), newEnv(b)
	raw := benchSection()
	providertest.Converge(b, p, env, raw)
	spec := providertest.Decode(b, p, env, raw)
	b.ResetTimer()
	for b.Loop() {
		obs, err := p.Observe(b.Context(), env, spec)
		if err != nil {
			b.Fatal(err)
		}
		changes, err := p.Plan(spec, obs)
		if err != nil || len(changes) != 0 {
			b.Fatal(err, changes)
		}
	}
}

// BenchmarkFloor measures what any no-op check of the same 1,000 files
// must do: stat, read and hash each one.
func BenchmarkFloor(b *testing.B) {
	p, env := New(), newEnv(b)
	providertest.Converge(b, p, env, benchSection())
	var paths []string
	for i := range benchFiles {
		paths = append(paths, filepath.Join(env.Root, fmt.Sprintf("/etc/bench/d%02d/f%04d.conf", i%20, i)))
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
			if _, err := io.CopyBuffer(h, struct{ io.Reader }{f}, buf); err != nil {
				b.Fatal(err)
			}
			f.Close()
			h.Sum(nil)
		}
	}
}
