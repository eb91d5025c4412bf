package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/twinlet/twinlet/internal/hub"
	"github.com/twinlet/twinlet/internal/testutil"
)

// TestFleetEndToEnd runs 20 real `twinlet run` processes, each on its own
// sandbox root, against twinhub, and drives them with twinctl from a fleet
// repository: they converge on a FleetConfig; a site configuration wins the
// timezone over the base by priority; devices whose tags change leave one
// target and enter another; a content change rolls over with no gap in any
// twin; a staged rollout halts on an injected failure and resumes.
func TestFleetEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds twinlet and runs 20 agents")
	}
	const n = 20
	dir := t.TempDir()
	bin := filepath.Join(dir, "twinlet")
	if out, err := exec.Command("go", "build", "-o", bin, "../twinlet").CombinedOutput(); err != nil {
		t.Fatalf("build twinlet: %v\n%s", err, out)
	}
	h, err := hub.New(hub.Options{Dir: filepath.Join(dir, "hub"), MQTTAddr: "127.0.0.1:0", HTTPSAddr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	e := &fleetEnv{env: &env{t: t, h: h, vars: map[string]string{
		"TWINCTL_HUB": h.OwnerConnectionString(), "TWINCTL_CA": h.CAFile(), "TWINCTL_HUB_ADDR": h.HTTPSAddr(),
	}}, repo: filepath.Join(dir, "repo")}
	_, port, _ := net.SplitHostPort(h.MQTTAddr())

	roots := make([]string, n)
	var procs []*exec.Cmd
	var logs []*testutil.SyncBuffer
	t.Cleanup(func() {
		for _, p := range procs {
			p.Process.Signal(syscall.SIGTERM)
		}
		for i, p := range procs {
			if err := p.Wait(); err != nil && t.Failed() {
				t.Logf("twinlet %d: %v\n%s", i, err, logs[i].String())
			}
		}
	})
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("kiosk-%02d", i)
		cs, err := h.CreateDevice(id)
		if err != nil {
			t.Fatal(err)
		}
		site, ring := "berlin", "stable"
		if i >= n/2 {
			site = "hamburg"
		}
		if i == 0 || i == 1 || i == n/2 {
			ring = "canary"
		}
		if _, err := h.UpdateTwin(id, "", hub.TwinPatch{Tags: map[string]any{"fleet": "kiosks", "site": site, "ring": ring}}, false, ""); err != nil {
			t.Fatal(err)
		}
		e.ids = append(e.ids, id)
		d := filepath.Join(dir, id)
		roots[i] = filepath.Join(d, "root")
		for _, sub := range []string{"root", "policy"} {
			os.MkdirAll(filepath.Join(d, sub), 0o755)
		}
		key := filepath.Join(d, "device.key")
		os.WriteFile(key, []byte(cs.String()+"\n"), 0o600)
		cmd := exec.Command(bin, "run", "--config", "", "--root", roots[i], "--state-dir", filepath.Join(d, "state"),
			"--policy", filepath.Join(d, "policy"), "--key-file", key, "--ca-file", h.CAFile(), "--hub-port", port)
		var lb testutil.SyncBuffer
		cmd.Stdout, cmd.Stderr = &lb, &lb
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		procs = append(procs, cmd)
		logs = append(logs, &lb)
	}
	onDisk := func(i int, name string) string {
		b, err := os.ReadFile(filepath.Join(roots[i], name))
		if err != nil {
			return "<missing>"
		}
		return string(b)
	}

	// Converge on a base and a site that outranks it for the timezone.
	e.write("base.yaml", fleetConfig("base", "tags.fleet='kiosks'", 10, fmt.Sprintf(motd, "v1")+"    timezone: {name: Etc/UTC}\n"))
	e.write("sites/berlin.yaml", fleetConfig("site-berlin", "tags.fleet='kiosks' AND tags.site='berlin'", 20, "    timezone: {name: Europe/Berlin}\n"))
	e.ok("apply", "-f", e.repo)
	if out := e.ok("rollout", "status", "base", "--watch", "--interval", "100ms"); !strings.Contains(out, fmt.Sprintf("Ready %d, Failed 0, pending 0", n)) {
		t.Fatalf("base:\n%s", out)
	}
	e.ok("rollout", "status", "site-berlin", "--watch", "--interval", "100ms")
	zone := func(i int) string {
		if i < n/2 {
			return "Europe/Berlin\n"
		}
		return "Etc/UTC\n"
	}
	testutil.Eventually(t, "every device on disk", func() bool {
		for i := range roots {
			if onDisk(i, "etc/motd") != "v1\n" || onDisk(i, "etc/timezone") != zone(i) {
				return false
			}
		}
		return true
	})

	// Tags change: kiosk-00 leaves Berlin, kiosk-19 enters it.
	e.write("devices/kiosk-00.yaml", "apiVersion: twinlet.dev/v1\nkind: DeviceConfig\nmetadata: {name: kiosk-00}\nspec:\n  tags: {site: hamburg}\n")
	e.write("devices/kiosk-19.yaml", "apiVersion: twinlet.dev/v1\nkind: DeviceConfig\nmetadata: {name: kiosk-19}\nspec:\n  tags: {site: berlin}\n")
	e.ok("apply", "-f", e.repo)
	testutil.Eventually(t, "the timezones follow the tags", func() bool {
		return onDisk(0, "etc/timezone") == "Etc/UTC\n" && onDisk(n-1, "etc/timezone") == "Europe/Berlin\n"
	})

	// A content change with no gap: every twin keeps a motd throughout.
	var gaps, reads atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			for _, id := range e.ids {
				select {
				case <-stop:
					return
				default:
				}
				tw, err := h.Twin(id, "")
				if err != nil {
					continue
				}
				reads.Add(1)
				if path(tw.Properties.Desired, "files", "motd", "content") == nil {
					gaps.Add(1)
				}
			}
		}
	}()
	e.write("base.yaml", fleetConfig("base", "tags.fleet='kiosks'", 10, fmt.Sprintf(motd, "v2")+"    timezone: {name: Etc/UTC}\n"))
	e.ok("apply", "-f", e.repo, "--interval", "100ms")
	e.ok("rollout", "status", "base", "--watch", "--interval", "100ms")
	close(stop)
	wg.Wait()
	if gaps.Load() > 0 || reads.Load() < n {
		t.Errorf("%d of %d twin reads had no motd during the content change", gaps.Load(), reads.Load())
	}
	testutil.Eventually(t, "v2 on every device", func() bool {
		for i := range roots {
			if onDisk(i, "etc/motd") != "v2\n" {
				return false
			}
		}
		return true
	})

	// A staged rollout halts on a failure injected into canary kiosk-01 (a
	// directory where its file must go) and resumes once it is fixed.
	blocker := filepath.Join(roots[1], "opt/app/app.conf")
	os.MkdirAll(filepath.Join(blocker, "sub"), 0o755)
	// The app's configuration outranks the base for the files section: it
	// carries the base's motd and its own file.
	e.write("app.yaml", `apiVersion: twinlet.dev/v1
kind: FleetConfig
metadata: {name: app}
spec:
  targetCondition: "tags.fleet='kiosks'"
  priority: 30
  sections:
    files:
      motd: {path: /etc/motd, content: "v2\n", mode: "0644"}
      conf: {path: /opt/app/app.conf, content: "url=https://example.com\n"}
  rollout:
    maxFailed: 0
    stages:
      - {name: canary, target: "tags.ring='canary'"}
      - {name: everyone, target: "*", minReady: 90}
`)
	e.ok("apply", "-f", e.repo, "--interval", "100ms")
	r := e.run("", "rollout", "run", "app", "--interval", "100ms", "--timeout", "30s")
	if r.code != 3 || !strings.Contains(r.stdout, "halted app--") || !strings.Contains(r.stdout, "1 of 3 devices failed") {
		t.Fatalf("rollout run: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if got := onDisk(5, "opt/app/app.conf"); got != "<missing>" {
		t.Errorf("a stable device got the halted rollout's file: %q", got)
	}
	os.RemoveAll(blocker)
	testutil.Eventually(t, "the fixed canary Ready", func() bool { return e.run("", "rollout", "status", "app").code == 0 })
	r = e.run("", "rollout", "run", "app", "--interval", "100ms", "--timeout", "30s")
	// The last stage passes at minReady 90: 18 of the 20 devices may be
	// Ready when the rollout completes (four runs side by side printed 19
	// of 20 in 4 of 16); the rest follow.
	var ready, applied int
	if _, after, ok := strings.Cut(r.stdout, "complete: "); ok {
		fmt.Sscanf(after, "%d of %d devices Ready", &ready, &applied)
	}
	if r.code != 0 || !strings.Contains(r.stdout, "resuming app--") || applied != n || ready*100 < 90*n {
		t.Fatalf("resumed rollout: exit %d, %d of %d Ready (want at least 90%% of %d)\n%s%s", r.code, ready, applied, n, r.stdout, r.stderr)
	}
	testutil.Eventually(t, "app.conf on every device, motd kept", func() bool {
		for i := range roots {
			if onDisk(i, "opt/app/app.conf") != "url=https://example.com\n" || onDisk(i, "etc/motd") != "v2\n" {
				return false
			}
		}
		return true
	})
	if r := e.run("", "diff", "-f", e.repo); r.code != 0 {
		t.Errorf("diff at the end: exit %d\n%s", r.code, r.stdout)
	}
}
