package fleetsim_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/twinlet/twinlet/internal/fleet/fleetsim"
	"github.com/twinlet/twinlet/internal/hub"
	"github.com/twinlet/twinlet/internal/iothub"
	_ "github.com/twinlet/twinlet/providers/standard"
)

// BenchmarkApplyToReady measures, for a fleet of N simulated devices (real
// device clients and reconcilers with the files provider, each on its own
// root under a temp dir, all in this process, against an embedded hub on
// loopback), the time from `twinctl apply` of a FleetConfig for every
// device to `twinctl rollout status --watch` seeing every device Ready.
// Both are the real twinctl binary, built before the clock starts.
//
// N is TWINLET_FLEET_DEVICES (default 200, so that `make bench` stays
// short; the figures in the README are for 1000 and 10000). Connecting the
// fleet is not timed.
func BenchmarkApplyToReady(b *testing.B) {
	n := 200
	if v, err := strconv.Atoi(os.Getenv("TWINLET_FLEET_DEVICES")); err == nil && v > 0 {
		n = v
	}
	raiseFileLimit(b, 4*n+1024)
	dir := b.TempDir()
	bin := filepath.Join(dir, "twinctl")
	if out, err := exec.Command("go", "build", "-o", bin, "../../../cmd/twinctl").CombinedOutput(); err != nil {
		b.Fatalf("build twinctl: %v\n%s", err, out)
	}
	h, err := hub.New(hub.Options{MQTTAddr: "127.0.0.1:0", HTTPSAddr: "127.0.0.1:0"})
	if err != nil {
		b.Fatal(err)
	}
	if err := h.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { h.Close() })
	css := make([]iothub.ConnectionString, n)
	for i := range css {
		id := fmt.Sprintf("sim-%05d", i)
		if css[i], err = h.CreateDevice(id); err != nil {
			b.Fatal(err)
		}
		if _, err := h.UpdateTwin(id, "", hub.TwinPatch{Tags: map[string]any{"fleet": "sim"}}, false, ""); err != nil {
			b.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	connectStart := time.Now()
	f, err := fleetsim.Start(ctx, css, fleetsim.Options{Dir: filepath.Join(dir, "fleet"), Addr: h.MQTTAddr(), CAPEM: h.CAPEM(), Sections: []string{"files"}})
	if err != nil {
		b.Fatal(err)
	}
	defer f.Stop()
	connect := time.Since(connectStart)
	ca := filepath.Join(dir, "ca.pem")
	os.WriteFile(ca, h.CAPEM(), 0o600)
	env := append(os.Environ(), "TWINCTL_HUB="+h.OwnerConnectionString(), "TWINCTL_CA="+ca, "TWINCTL_HUB_ADDR="+h.HTTPSAddr())
	twinctl := func(args ...string) {
		cmd := exec.CommandContext(ctx, bin, args...)
		cmd.Env = env
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("twinctl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	repo := filepath.Join(dir, "repo")
	os.MkdirAll(repo, 0o755)
	var ms runtime.MemStats
	round := 0
	for b.Loop() {
		round++
		doc := fmt.Sprintf(`apiVersion: twinlet.dev/v1
kind: FleetConfig
metadata: {name: bench}
spec:
  targetCondition: "tags.fleet='sim'"
  sections:
    files:
      motd: {path: /etc/motd, content: "round %d\n"}
`, round)
		if err := os.WriteFile(filepath.Join(repo, "bench.yaml"), []byte(doc), 0o644); err != nil {
			b.Fatal(err)
		}
		twinctl("apply", "-f", repo, "--prune", "--interval", "100ms", "--wait", "10m")
		twinctl("rollout", "status", "bench", "--watch", "--interval", "100ms")
	}
	b.StopTimer()
	for i := 0; i < n; i += max(1, n/10) {
		if data, err := os.ReadFile(filepath.Join(f.Root(i), "etc/motd")); err != nil || string(data) != fmt.Sprintf("round %d\n", round) {
			b.Fatalf("device %d: /etc/motd %q %v", i, data, err)
		}
	}
	runtime.ReadMemStats(&ms)
	b.ReportMetric(float64(n), "devices")
	b.ReportMetric(connect.Seconds(), "connect-s")
	b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N)/1000, "apply-to-ready-s")
	b.ReportMetric(float64(ms.HeapInuse)/float64(n)/1024, "heap-KiB/device")
	b.ReportMetric(0, "ns/op")
}

// raiseFileLimit lifts the soft (and, as root, the hard) limit on open
// files: every simulated device holds a socket on each end.
func raiseFileLimit(b *testing.B, want int) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		b.Fatal(err)
	}
	if lim.Cur >= uint64(want) {
		return
	}
	lim.Cur = uint64(want)
	if lim.Max < lim.Cur {
		lim.Max = lim.Cur
	}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		b.Skipf("%d devices need %d open files: %v", want/4, want, err)
	}
}
