package files

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/twinlet/twinlet/providers"
	"github.com/twinlet/twinlet/providers/providertest"
)

const benchFiles = 1000

// benchSection returns a section of benchFiles files of 1 KiB and puts
// them on env's root (without fsync, to keep the setup quick), so that
// the section is converged.
func benchSection(b *testing.B, env *providers.Env) json.RawMessage {
	items := map[string]any{}
	for i := range benchFiles {
		p, content := fmt.Sprintf("/etc/bench/d%02d/f%04d.conf", i%20, i), fmt.Sprintf("%01024d", i)
		items[fmt.Sprintf("f%04d", i)] = map[string]string{"path": p, "content": content, "mode": "0640"}
		put(b, env, p, content, 0o640)
	}
	raw, _ := json.Marshal(items)
	if changes := providertest.PlanOnly(b, New(), env, raw); len(changes) != 0 {
		b.Fatalf("not converged: %d changes", len(changes))
	}
	return raw
}

// BenchmarkObservePlanNoop measures the no-op path of a reconcile of
// 1,000 converged files: Observe and Plan, finding nothing to do.
func BenchmarkObservePlanNoop(b *testing.B) {
	p, env := New(), newEnv(b)
	raw := benchSection(b, env)
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
	env := newEnv(b)
	benchSection(b, env)
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
