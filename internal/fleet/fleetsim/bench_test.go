package fleetsim_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
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
// fleet is not timed. Above 4000 devices (or with
// TWINLET_FLEET_HUB_PROCESS set) twinhub runs as its own process, and its
// resident memory per connected device is reported too.
func BenchmarkApplyToReady(b *testing.B) {
	n := 200
	if v, err := strconv.Atoi(os.Getenv("TWINLET_FLEET_DEVICES")); err == nil && v > 0 {
		n = v
	}
	// Each device holds a socket on each end. Past a few thousand devices
	// one process would need more open files than the limit allows, so
	// twinhub runs as its own process (the real binary) on the registry
	// this process creates in its directory.
	separate := n > 4000 || os.Getenv("TWINLET_FLEET_HUB_PROCESS") != ""
	// A simulated device holds its socket and root handle for its life,
	// and while it reconciles a few more for a moment (a duplicate of the
	// root, the temporary file, the directory it fsyncs, its state file):
	// when a FleetConfig reaches every device at once, all of them do at
	// once. A real device is one process with all of that to itself; the
	// simulator asks for the same room per device (as root it may raise
	// the hard limit up to fs.nr_open).
	perDevice := 8
	if !separate {
		perDevice++ // and the hub's end of the socket
	}
	raiseFileLimit(b, perDevice*n+1024, 3*n/2+1024)
	dir := b.TempDir()
	bin := filepath.Join(dir, "twinctl")
	if out, err := exec.Command("go", "build", "-o", dir+"/", "../../../cmd/twinctl", "../../../cmd/twinhub").CombinedOutput(); err != nil {
		b.Fatalf("build: %v\n%s", err, out)
	}
	hubDir := filepath.Join(dir, "hub")
	if !separate {
		hubDir = ""
	}
	h, err := hub.New(hub.Options{Dir: hubDir, MQTTAddr: "127.0.0.1:0", HTTPSAddr: "127.0.0.1:0"})
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
	mqttAddr, httpsAddr, owner, caPEM := h.MQTTAddr(), h.HTTPSAddr(), h.OwnerConnectionString(), h.CAPEM()
	var hubProc *exec.Cmd
	// TWINLET_FLEET_HUB_PROFILE=FILE (with twinhub as its own process)
	// starts it with --pprof, writes its heap profile to FILE at the end
	// and reports its heap, stacks and goroutines per device.
	hubProfile, pprofAddr := os.Getenv("TWINLET_FLEET_HUB_PROFILE"), ""
	if separate {
		if err := h.Close(); err != nil {
			b.Fatal(err)
		}
		mqttAddr, httpsAddr = freeAddr(b), freeAddr(b)
		args := []string{"serve", "--dir", hubDir, "--mqtt-addr", mqttAddr, "--https-addr", httpsAddr}
		if hubProfile != "" {
			pprofAddr = freeAddr(b)
			args = append(args, "--pprof", pprofAddr)
		}
		hubProc = exec.Command(filepath.Join(dir, "twinhub"), args...)
		hubProc.Stdout, hubProc.Stderr = io.Discard, io.Discard
		// TWINLET_FLEET_HUB_GOGC sets GOGC for twinhub alone (it runs
		// with 25 unless GOGC is set), to compare collector settings.
		if v := os.Getenv("TWINLET_FLEET_HUB_GOGC"); v != "" {
			hubProc.Env = append(os.Environ(), "GOGC="+v)
		}
		if err := hubProc.Start(); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { hubProc.Process.Signal(syscall.SIGTERM); hubProc.Wait() })
		deadline := time.Now().Add(time.Minute)
		for {
			c, err := net.Dial("tcp", httpsAddr)
			if err == nil {
				c.Close()
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("twinhub did not listen on %s", httpsAddr)
			}
			time.Sleep(50 * time.Millisecond) // waiting for a child process to listen: nothing to poll but the port
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	connectStart := time.Now()
	// Warnings and errors of the devices go to a file, shown on failure.
	logPath := filepath.Join(dir, "fleet.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		b.Fatal(err)
	}
	defer logFile.Close()
	logger := slog.New(slog.NewTextHandler(logFile, &slog.HandlerOptions{Level: slog.LevelWarn}))
	f, err := fleetsim.Start(ctx, css, fleetsim.Options{Dir: filepath.Join(dir, "fleet"), Addr: mqttAddr, CAPEM: caPEM, Sections: []string{"files"}, Logger: logger})
	if err != nil {
		b.Fatal(err)
	}
	defer f.Stop()
	connect := time.Since(connectStart)
	idleFDs := openFDs(b)
	ca := filepath.Join(dir, "ca.pem")
	os.WriteFile(ca, caPEM, 0o600)
	env := append(os.Environ(), "TWINCTL_HUB="+owner, "TWINCTL_CA="+ca, "TWINCTL_HUB_ADDR="+httpsAddr)
	twinctl := func(args ...string) {
		cmd := exec.CommandContext(ctx, bin, args...)
		cmd.Env = env
		if out, err := cmd.CombinedOutput(); err != nil {
			log, _ := os.ReadFile(logPath)
			if len(log) > 4096 {
				log = log[:4096]
			}
			b.Fatalf("twinctl %s: %v\n%s\nthe devices logged:\n%s", strings.Join(args, " "), err, lastLines(out, 20), log)
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
	if hubProc != nil {
		b.ReportMetric(float64(rssKiB(b, hubProc.Process.Pid))/float64(n), "hub-rss-KiB/device")
		b.ReportMetric(float64(rssKiB(b, os.Getpid()))/float64(n), "sim-rss-KiB/device")
		b.ReportMetric(cpuSeconds(b, hubProc.Process.Pid), "hub-cpu-s")
		if pprofAddr != "" {
			reportHubProfile(b, pprofAddr, hubProfile, n)
		}
	}
	b.ReportMetric(float64(idleFDs)/float64(n), "fds/device")
	b.ReportMetric(0, "ns/op")
}

// lastLines returns the last n lines of out.
func lastLines(out []byte, n int) []byte {
	lines := strings.SplitAfter(string(out), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return []byte(strings.Join(lines, ""))
}

// openFDs counts this process's open file descriptors.
func openFDs(b *testing.B) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		b.Fatal(err)
	}
	return len(ents)
}

// reportHubProfile saves twinhub's heap profile to file and reports, per
// device, the heap in use, the goroutine stacks and the goroutines of the
// twinhub process (from the MemStats that /debug/pprof/heap?debug=1 ends
// with, and the goroutine profile's total).
func reportHubProfile(b *testing.B, addr, file string, n int) {
	get := func(path string) []byte {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			b.Fatal(err)
		}
		defer resp.Body.Close()
		data, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != http.StatusOK {
			b.Fatalf("GET %s: %s %v", path, resp.Status, err)
		}
		return data
	}
	if err := os.WriteFile(file, get("/debug/pprof/heap?gc=1"), 0o644); err != nil {
		b.Fatal(err)
	}
	stats := map[string]float64{}
	for _, l := range strings.Split(string(get("/debug/pprof/heap?debug=1")), "\n") {
		if k, v, ok := strings.Cut(strings.TrimPrefix(l, "# "), " = "); ok {
			v, _, _ = strings.Cut(v, " ") // Stack = inuse / sys
			if f, err := strconv.ParseFloat(v, 64); err == nil {
				stats[k] = f
			}
		}
	}
	b.ReportMetric(stats["HeapInuse"]/float64(n)/1024, "hub-heap-KiB/device")
	b.ReportMetric(stats["Stack"]/float64(n)/1024, "hub-stack-KiB/device")
	b.ReportMetric((stats["HeapIdle"]-stats["HeapReleased"])/float64(n)/1024, "hub-idle-KiB/device")
	first, _, _ := strings.Cut(string(get("/debug/pprof/goroutine?debug=1")), "\n")
	if total, err := strconv.Atoi(strings.TrimPrefix(first, "goroutine profile: total ")); err == nil {
		b.ReportMetric(float64(total)/float64(n), "hub-goroutines/device")
	}
}

// cpuSeconds reads the user and system CPU time a process has used so
// far from /proc (clock ticks of 1/100 s, as on Linux).
func cpuSeconds(b *testing.B, pid int) float64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// The fields after the command name, which is in parentheses.
	_, rest, _ := strings.Cut(string(data), ") ")
	f := strings.Fields(rest)
	if len(f) < 13 {
		b.Fatalf("/proc/%d/stat: %q", pid, data)
	}
	utime, _ := strconv.Atoi(f[11])
	stime, _ := strconv.Atoi(f[12])
	return float64(utime+stime) / 100
}

// rssKiB reads a process's resident set size from /proc.
func rssKiB(b *testing.B, pid int) int {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			return n
		}
	}
	return 0
}

func freeAddr(b *testing.B) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// raiseFileLimit lifts the soft limit on open files to want, raising the
// hard limit too when the process may (CAP_SYS_RESOURCE). Where it may
// not, it takes the hard limit when that still leaves need (the sockets
// and handles every device holds for its life), and skips otherwise.
func raiseFileLimit(b *testing.B, want, need int) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		b.Fatal(err)
	}
	if lim.Cur >= uint64(want) {
		return
	}
	try := lim
	try.Cur = uint64(want)
	if try.Max < try.Cur {
		try.Max = try.Cur
	}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &try); err == nil {
		return
	}
	if lim.Max < uint64(need) {
		b.Skipf("the fleet needs at least %d open files; the hard limit is %d", need, lim.Max)
	}
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		b.Fatal(err)
	}
	b.Logf("open files limited to %d (wanted %d)", lim.Cur, want)
}
