package hub

import (
	"fmt"
	"testing"
	"time"
)

// admFleet is a hub with n devices (not connected: the evaluation does
// not depend on connections), tagged site = s0..s9 and ring = canary for
// one in ten.
func admFleet(b *testing.B, n int) *Hub {
	b.Helper()
	h := startHub(b, Options{})
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("d%05d", i)
		if _, err := h.CreateDevice(id); err != nil {
			b.Fatal(err)
		}
		ring := "main"
		if i%10 == 0 {
			ring = "canary"
		}
		if _, err := h.UpdateTwin(id, "", TwinPatch{Tags: map[string]any{"site": fmt.Sprintf("s%d", i%10), "ring": ring}}, false, ""); err != nil {
			b.Fatal(err)
		}
	}
	return h
}

func admWaitIdle(b *testing.B, h *Hub) {
	b.Helper()
	deadline := time.Now().Add(5 * time.Minute)
	for {
		if _, pending := h.ADMPasses(); !pending {
			return
		}
		if time.Now().After(deadline) {
			b.Fatal("configuration evaluation did not finish")
		}
		time.Sleep(time.Millisecond)
	}
}

// BenchmarkADMCreate10000 measures a configuration's creation up to the
// end of its evaluation over 10,000 twins (with 10 other configurations
// in place): every twin is evaluated, 1,000 get content.
func BenchmarkADMCreate10000(b *testing.B) {
	h := admFleet(b, 10000)
	for i := 0; i < 10; i++ {
		if _, err := h.PutConfiguration(Configuration{ID: fmt.Sprintf("site-%d", i), TargetCondition: fmt.Sprintf("tags.site = 's%d'", i), Priority: 5,
			Content: ConfigurationContent{DeviceContent: map[string]any{"properties.desired.ntp": map[string]any{"server": fmt.Sprint(i)}}}}, ""); err != nil {
			b.Fatal(err)
		}
	}
	admWaitIdle(b, h)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		id := fmt.Sprintf("canary-%d", i)
		if _, err := h.PutConfiguration(Configuration{ID: id, TargetCondition: "tags.ring = 'canary'", Priority: 10,
			Content: ConfigurationContent{DeviceContent: map[string]any{"properties.desired.ntp": map[string]any{"server": "canary"}}}}, ""); err != nil {
			b.Fatal(err)
		}
		admWaitIdle(b, h)
		b.StopTimer()
		if c, _ := h.GetConfiguration(id); c.SystemMetrics.Results["appliedCount"] != 1000 {
			b.Fatalf("applied %d, want 1000", c.SystemMetrics.Results["appliedCount"])
		}
		if err := h.DeleteConfiguration(id, ""); err != nil {
			b.Fatal(err)
		}
		admWaitIdle(b, h)
		b.StartTimer()
	}
}

// BenchmarkADMReportedPatch10000 measures a reported patch (Go API, no
// socket) and its evaluation with 10,000 twins and 20 configurations, 10
// of which target on a reported property: one twin is evaluated, not the
// fleet. Patches of a property no condition reads are not evaluated at
// all (the "untracked" case).
func BenchmarkADMReportedPatch10000(b *testing.B) {
	h := admFleet(b, 10000)
	for i := 0; i < 10; i++ {
		if _, err := h.PutConfiguration(Configuration{ID: fmt.Sprintf("site-%d", i), TargetCondition: fmt.Sprintf("tags.site = 's%d'", i), Priority: 5,
			Content: ConfigurationContent{DeviceContent: map[string]any{"properties.desired.ntp": map[string]any{"server": fmt.Sprint(i)}}}}, ""); err != nil {
			b.Fatal(err)
		}
		if _, err := h.PutConfiguration(Configuration{ID: fmt.Sprintf("arch-%d", i), TargetCondition: fmt.Sprintf("properties.reported.arch = 'a%d'", i), Priority: 6,
			Content: ConfigurationContent{DeviceContent: map[string]any{"properties.desired.pkgs": map[string]any{"p": i}}},
			Metrics: ConfigurationMetrics{Queries: map[string]string{"ready": "SELECT deviceId FROM devices WHERE properties.reported.pkgs.status = 'Ready'"}},
		}, ""); err != nil {
			b.Fatal(err)
		}
	}
	admWaitIdle(b, h)
	for _, tc := range []struct {
		name  string
		patch func(i int) map[string]any
	}{
		{"tracked", func(i int) map[string]any { return map[string]any{"arch": fmt.Sprintf("a%d", i%10)} }},
		{"untracked", func(i int) map[string]any { return map[string]any{"counter": float64(i)} }},
	} {
		b.Run(tc.name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				if _, err := h.patchReported(fmt.Sprintf("d%05d", i%10000), tc.patch(i)); err != nil {
					b.Fatal(err)
				}
				admWaitIdle(b, h)
			}
		})
	}
}
