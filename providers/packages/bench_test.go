package packages

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/twinlet/twinlet/providers"
	"github.com/twinlet/twinlet/providers/packages/debtest"
	"github.com/twinlet/twinlet/providers/providertest"
)

const benchPackages = 50

// benchRoot installs benchPackages small packages on a sandbox root (with
// one dpkg --install, to keep the setup quick) and returns the converged
// section that names them, and their names.
func benchRoot(b *testing.B) (*providers.Env, json.RawMessage, []string) {
	debtest.Require(b)
	env := providertest.NewEnv(b)
	debtest.InitRoot(b, env.Root)
	dir := b.TempDir()
	items := map[string]any{}
	var names, debs []string
	for i := range benchPackages {
		name := fmt.Sprintf("bench-%02d", i)
		debs = append(debs, debtest.Build(b, dir, debtest.Deb{Name: name, Version: "1.0-1"}))
		names = append(names, name)
		items[fmt.Sprintf("bench%02d", i)] = map[string]any{"name": name, "version": "1.0-1", "hold": i%2 == 0}
	}
	debtest.Dpkg(b, env.Root, append([]string{"--install"}, debs...)...)
	for i, name := range names {
		if err := newTools(env).setHold(b.Context(), name, i%2 == 0); err != nil {
			b.Fatal(err)
		}
	}
	raw, _ := json.Marshal(items)
	if changes := providertest.PlanOnly(b, New(), env, raw); len(changes) != 0 {
		b.Fatalf("not converged: %v", providertest.Lines(changes))
	}
	return env, raw, names
}

// BenchmarkObserveNoop compares, in one run, a no-op reconcile (Observe
// and Plan finding nothing to do) of 50 converged packages with the
// tool's own query of the same 50 packages (dpkg-query -W), and reports
// the ratio as observe/dpkg-query.
func BenchmarkObserveNoop(b *testing.B) {
	env, raw, names := benchRoot(b)
	p := New()
	spec := providertest.Decode(b, p, env, raw)
	query := append([]string{"--admindir=" + filepath.Join(env.Root, "var/lib/dpkg"), "-W", "-f", "${Package}\t${Version}\t${Status}\n"}, names...)
	var observe, dpkgQuery time.Duration
	b.ResetTimer()
	for b.Loop() {
		start := time.Now()
		obs, err := p.Observe(b.Context(), env, spec)
		if err != nil {
			b.Fatal(err)
		}
		if changes, err := p.Plan(spec, obs); err != nil || len(changes) != 0 {
			b.Fatal(err, changes)
		}
		mid := time.Now()
		if out, err := exec.Command("dpkg-query", query...).Output(); err != nil || len(out) == 0 {
			b.Fatal(err)
		}
		end := time.Now()
		observe += mid.Sub(start)
		dpkgQuery += end.Sub(mid)
	}
	b.ReportMetric(float64(observe.Microseconds())/float64(b.N), "observe-µs/op")
	b.ReportMetric(float64(dpkgQuery.Microseconds())/float64(b.N), "dpkg-query-µs/op")
	b.ReportMetric(float64(observe)/float64(dpkgQuery), "observe/dpkg-query")
}
