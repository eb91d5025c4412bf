package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestHubsFileExample(t *testing.T) {
	hubs, err := linkedHubs("", "../../examples/dps/hubs.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(hubs) != 3 || hubs[2].Hostname != "hub-us.localhost" || hubs[2].Weight != 7 || hubs[1].Latency != 10*time.Millisecond {
		t.Fatalf("hubs %+v", hubs)
	}
}

func TestHubsFlag(t *testing.T) {
	hubs, err := linkedHubs("a.localhost:1,b.localhost:2,c.localhost", "")
	if err != nil || len(hubs) != 3 || hubs[1].Weight != 2 || hubs[2].Weight != 0 {
		t.Fatalf("%+v %v", hubs, err)
	}
	for _, bad := range []string{"a:0", "a:x", ",b", "a:1001"} {
		if _, err := linkedHubs(bad, ""); err == nil {
			t.Errorf("--hubs %q accepted", bad)
		}
	}
	f := filepath.Join(t.TempDir(), "h.yaml")
	os.WriteFile(f, []byte("hubs:\n  - {hostname: a, wieght: 3}\n"), 0o600)
	if _, err := linkedHubs("", f); err == nil || !strings.Contains(err.Error(), "wieght") {
		t.Errorf("unknown field: %v", err)
	}
	if _, err := linkedHubs("a", f); err == nil {
		t.Error("both --hubs and --hubs-file accepted")
	}
}
