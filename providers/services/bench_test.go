package services

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"testing"
	"time"

	"github.com/twinlet/twinlet/providers/providertest"
)

const benchUnits = 20

// BenchmarkObserveNoop measures a no-op Observe and Plan of 20 converged
// services on a sandbox root (systemctl --root list-unit-files, once for
// all of them), against the tool's own query of the same units in the
// same run: `systemctl --root is-enabled` with the 20 units. It reports
// the ratio as observe/is-enabled (measured alternately, so that both
// see the same machine load).
func BenchmarkObserveNoop(b *testing.B) {
	var units []string
	for i := range benchUnits {
		units = append(units, fmt.Sprintf("bench%02d.service", i))
	}
	env := newRoot(b, units...)
	items := map[string]any{}
	for i, u := range units {
		items[fmt.Sprintf("s%02d", i)] = map[string]any{"unit": u, "enabled": i%2 == 0}
	}
	raw, _ := json.Marshal(items)
	p := New()
	providertest.Converge(b, p, env, raw)
	spec := providertest.Decode(b, p, env, raw)
	args := append([]string{"--root=" + env.Root, "is-enabled", "--"}, units...)
	var observe, tool time.Duration
	b.ResetTimer()
	for b.Loop() {
		t0 := time.Now()
		obs, err := p.Observe(b.Context(), env, spec)
		if err != nil {
			b.Fatal(err)
		}
		if changes, err := p.Plan(spec, obs); err != nil || len(changes) != 0 {
			b.Fatal(err, changes)
		}
		t1 := time.Now()
		// is-enabled exits 1 when a unit is disabled: only its output counts.
		if out, _ := exec.CommandContext(b.Context(), "systemctl", args...).Output(); len(out) == 0 {
			b.Fatal("systemctl is-enabled printed nothing")
		}
		observe, tool = observe+t1.Sub(t0), tool+time.Since(t1)
	}
	b.ReportMetric(float64(observe.Microseconds())/float64(b.N), "observe-µs/op")
	b.ReportMetric(float64(tool.Microseconds())/float64(b.N), "is-enabled-µs/op")
	b.ReportMetric(float64(observe)/float64(tool), "observe/is-enabled")
}
