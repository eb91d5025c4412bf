package agent

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/twinlet/twinlet/reconciler"
)

func TestMetricsExposition(t *testing.T) {
	m := NewMetrics(func() int { return 3 })
	res := &reconciler.SectionResult{ID: "hostname"}
	res.Status.State, res.Status.Reason = reconciler.StateReady, "Applied"
	m.ObserveSection(res, 3*time.Millisecond)
	m.methods.WithLabelValues(`we"ird\n`).Inc()
	m.reportLatency.Observe(0.002)
	m.setConnected(true)
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	b, _ := io.ReadAll(rec.Body)
	out := string(b)
	for _, want := range []string{
		"# TYPE twinlet_reconciles_total counter\n",
		`twinlet_reconciles_total{reason="Applied",section="hostname",state="Ready"} 1` + "\n",
		`twinlet_reconcile_duration_seconds_bucket{section="hostname",le="0.002"} 0` + "\n",
		`twinlet_reconcile_duration_seconds_bucket{section="hostname",le="0.008"} 1` + "\n",
		`twinlet_reconcile_duration_seconds_bucket{section="hostname",le="+Inf"} 1` + "\n",
		`twinlet_reconcile_duration_seconds_count{section="hostname"} 1` + "\n",
		`twinlet_section_failed{section="hostname"} 0` + "\n",
		`twinlet_direct_methods_total{method="we\"ird\\n"} 1` + "\n",
		"twinlet_hub_connected 1\n",
		`twinlet_reported_patch_seconds_bucket{le="0.004"} 1` + "\n",
		"twinlet_reported_patch_seconds_count 1\n",
		"twinlet_reported_patch_failures_total 0\n",
		"twinlet_reported_patches_queued 0\n",
		"twinlet_queue_depth 3\n",
		"process_resident_memory_bytes ",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in:\n%s", want, out)
		}
	}
}
