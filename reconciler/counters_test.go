package reconciler

import (
	"encoding/json"
	"testing"
)

// Providers' summary counters are fields of __summary; one named like a
// fixed field cannot overwrite it.
func TestSummaryCounters(t *testing.T) {
	b, err := json.Marshal(Summary{State: StateReady, Ready: 3, Counters: map[string]int{"certificatesExpiring": 2, "ready": 99}})
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if m["certificatesExpiring"] != float64(2) || m["ready"] != float64(3) || m["state"] != StateReady {
		t.Fatalf("summary %s", b)
	}
	var back Summary
	if err := json.Unmarshal(b, &back); err != nil || back.Ready != 3 {
		t.Fatalf("round trip %+v, %v", back, err)
	}
}
