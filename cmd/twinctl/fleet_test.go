package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twinlet/twinlet/internal/fleet/fleetsim"
	"github.com/twinlet/twinlet/internal/hub"
	"github.com/twinlet/twinlet/internal/iothub"
	"github.com/twinlet/twinlet/internal/testutil"
)

// fleetEnv is a hub with n real agents (device client + reconciler with
// the files and timezone providers, each on its own temp root) in this
// process, and a fleet repository directory.
type fleetEnv struct {
	*env
	ids   []string
	fleet *fleetsim.Fleet
	repo  string
}

func newFleetEnv(t *testing.T, tags []map[string]any) *fleetEnv {
	e := &fleetEnv{env: newEnv(t), repo: t.TempDir()}
	var css []iothub.ConnectionString
	for i, tg := range tags {
		id := fmt.Sprintf("kiosk-%02d", i)
		cs, err := e.h.CreateDevice(id)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.h.UpdateTwin(id, "", hub.TwinPatch{Tags: tg}, false, ""); err != nil {
			t.Fatal(err)
		}
		e.ids = append(e.ids, id)
		css = append(css, cs)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	f, err := fleetsim.Start(ctx, css, fleetsim.Options{Dir: t.TempDir(), Addr: e.h.MQTTAddr(), CAPEM: e.h.CAPEM(),
		Sections: []string{"files", "timezone"}, Coalesce: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Stop)
	e.fleet = f
	return e
}

func (e *fleetEnv) write(name, content string) {
	e.t.Helper()
	p := filepath.Join(e.repo, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		e.t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		e.t.Fatal(err)
	}
}

func (e *fleetEnv) desired(id string) map[string]any {
	tw, err := e.h.Twin(id, "")
	if err != nil {
		e.t.Fatal(err)
	}
	return tw.Properties.Desired
}

func path(m map[string]any, keys ...string) any {
	var v any = m
	for _, k := range keys {
		mm, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = mm[k]
	}
	return v
}

func fleetConfig(name, target string, priority int, sections string) string {
	return fmt.Sprintf(`apiVersion: twinlet.dev/v1
kind: FleetConfig
metadata: {name: %s}
spec:
  targetCondition: %q
  priority: %d
  sections:
%s`, name, target, priority, sections)
}

const motd = `    files:
      motd: {path: /etc/motd, content: "%s\n", mode: "0644"}
`

// TestGitOps drives apply, diff, get and rollout status against real
// agents: priorities, a content change with no gap, tags that move a
// device between targets, prune, and a repository with an error that
// sends nothing.
func TestGitOps(t *testing.T) {
	tags := []map[string]any{}
	for i := 0; i < 6; i++ {
		site := "hamburg"
		if i < 3 {
			site = "berlin"
		}
		tags = append(tags, map[string]any{"fleet": "kiosks", "site": site})
	}
	e := newFleetEnv(t, tags)
	e.write("base.yaml", fleetConfig("base", "tags.fleet='kiosks'", 10, fmt.Sprintf(motd, "v1")+"    timezone: {name: Etc/UTC}\n"))
	e.write("sites/berlin.yaml", fleetConfig("site-berlin", "tags.fleet='kiosks' AND tags.site='berlin'", 20, "    timezone: {name: Europe/Berlin}\n"))

	// A bad file anywhere: nothing is sent.
	e.write("zz-bad.yaml", "apiVersion: twinlet.dev/v1\nkind: FleetConfig\nmetadata: {name: bad}\nspec:\n  targetCondition: '*'\n  sections:\n    timezone: {name: 7}\n")
	e.fails(1, "zz-bad.yaml:7:22: /spec/sections/timezone/name", "apply", "-f", e.repo)
	os.Remove(filepath.Join(e.repo, "zz-bad.yaml"))
	if out := e.ok("get", "configs"); strings.Contains(out, "base") {
		t.Fatalf("a failed apply sent something:\n%s", out)
	}

	// diff says 2, dry run sends nothing.
	r := e.run("", "diff", "-f", e.repo)
	if r.code != 2 || !strings.Contains(r.stdout, "+ configuration base--") || !strings.Contains(r.stdout, "+   motd:") {
		t.Fatalf("diff: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if out := e.ok("apply", "-f", e.repo, "--dry-run"); !strings.Contains(out, "dry run: nothing sent") {
		t.Fatalf("dry run:\n%s", out)
	}
	e.ok("apply", "-f", e.repo)
	if r := e.run("", "diff", "-f", e.repo); r.code != 0 {
		t.Fatalf("diff after apply: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if out := e.ok("apply", "-f", e.repo); !strings.Contains(out, "the hub matches") {
		t.Fatalf("second apply:\n%s", out)
	}

	// Every device converges; the site wins the timezone in Berlin.
	out := e.ok("rollout", "status", "base", "--watch", "--interval", "50ms")
	if !strings.Contains(out, "Ready 6, Failed 0, pending 0") {
		t.Fatalf("rollout status:\n%s", out)
	}
	e.ok("rollout", "status", "site-berlin", "--watch", "--interval", "50ms")
	for i, id := range e.ids {
		want := "Etc/UTC"
		if i < 3 {
			want = "Europe/Berlin"
		}
		if got := path(e.desired(id), "timezone", "name"); got != want {
			t.Errorf("%s timezone %v, want %s", id, got, want)
		}
		if got := path(e.desired(id), "files", "motd", "content"); got != "v1\n" {
			t.Errorf("%s motd %v", id, got)
		}
	}
	data, err := os.ReadFile(filepath.Join(e.fleet.Root(0), "etc/motd"))
	if err != nil || string(data) != "v1\n" {
		t.Errorf("device 0 /etc/motd: %q %v", data, err)
	}

	// get configs and devices.
	out = e.ok("get", "configs")
	if !strings.Contains(out, "site-berlin") || !strings.Contains(out, "PENDING") {
		t.Errorf("get configs:\n%s", out)
	}
	var rows []configRow
	if err := json.Unmarshal([]byte(e.ok("get", "configs", "-o", "json", "--target", "tags.site='hamburg'")), &rows); err != nil {
		t.Fatal(err)
	}
	if len(rows) != 1 || rows[0].Name != "base" || rows[0].Targeted != 6 || *rows[0].Ready != 6 {
		t.Errorf("get configs --target hamburg: %+v", rows)
	}
	out = e.ok("get", "devices", "--target", "tags.site='berlin'")
	if n := strings.Count(out, "kiosk-"); n != 3 || !strings.Contains(out, "Applied") {
		t.Errorf("get devices --target:\n%s", out)
	}

	// A content change: a new configuration, the old one deleted only
	// once the new one reached every device; no twin is ever without a
	// motd in between.
	var gaps atomic.Int32
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			for _, id := range e.ids {
				tw, err := e.h.Twin(id, "")
				if err == nil && path(tw.Properties.Desired, "files", "motd", "content") == nil {
					gaps.Add(1)
				}
			}
		}
	}()
	e.write("base.yaml", fleetConfig("base", "tags.fleet='kiosks'", 10, fmt.Sprintf(motd, "v2")+"    timezone: {name: Etc/UTC}\n"))
	r = e.run("", "diff", "-f", e.repo)
	if r.code != 2 || !strings.Contains(r.stdout, `-       content: |`) && !strings.Contains(r.stdout, "- ") {
		t.Errorf("diff of a content change: exit %d\n%s", r.code, r.stdout)
	}
	out = e.ok("apply", "-f", e.repo, "--interval", "50ms")
	close(stop)
	wg.Wait()
	if gaps.Load() > 0 {
		t.Errorf("%d twin reads without a motd during the content change", gaps.Load())
	}
	if !strings.Contains(out, "deleted configuration base--") || !strings.Contains(out, "replaced by base--") {
		t.Errorf("apply of a content change:\n%s", out)
	}
	e.ok("rollout", "status", "base", "--watch", "--interval", "50ms")
	testutil.Eventually(t, "v2 on every device", func() bool {
		for i := range e.ids {
			if b, _ := os.ReadFile(filepath.Join(e.fleet.Root(i), "etc/motd")); string(b) != "v2\n" {
				return false
			}
		}
		return true
	})

	// A device whose tags change (from a DeviceConfig) leaves the Berlin
	// target and gets the base's timezone; another enters it.
	e.write("devices/kiosk-00.yaml", "apiVersion: twinlet.dev/v1\nkind: DeviceConfig\nmetadata: {name: kiosk-00}\nspec:\n  tags: {site: hamburg}\n")
	e.write("devices/kiosk-05.yaml", "apiVersion: twinlet.dev/v1\nkind: DeviceConfig\nmetadata: {name: kiosk-05}\nspec:\n  tags: {site: berlin}\n")
	if r := e.run("", "diff", "-f", e.repo); r.code != 2 || !strings.Contains(r.stdout, `tags.site: "berlin" -> "hamburg"`) {
		t.Errorf("diff of tags: exit %d\n%s", r.code, r.stdout)
	}
	e.ok("apply", "-f", e.repo)
	testutil.Eventually(t, "kiosk-00 and kiosk-05 change timezone", func() bool {
		return path(e.desired("kiosk-00"), "timezone", "name") == "Etc/UTC" && path(e.desired("kiosk-05"), "timezone", "name") == "Europe/Berlin"
	})
	if r := e.run("", "diff", "-f", e.repo); r.code != 0 {
		t.Errorf("diff after tags: exit %d\n%s", r.code, r.stdout)
	}

	// Prune: the site leaves the repository.
	os.Remove(filepath.Join(e.repo, "sites/berlin.yaml"))
	if out := e.ok("apply", "-f", e.repo); !strings.Contains(out, "--prune deletes it") {
		t.Errorf("apply without prune:\n%s", out)
	}
	if out := e.ok("apply", "-f", e.repo, "--prune"); !strings.Contains(out, "deleted configuration site-berlin--") {
		t.Errorf("apply --prune:\n%s", out)
	}
	testutil.Eventually(t, "Berlin falls back to the base timezone", func() bool {
		return path(e.desired("kiosk-05"), "timezone", "name") == "Etc/UTC"
	})
}

// TestStagedRollout: a rollout halts at the canary stage on an injected
// failure, says why, and resumes from where it stopped once the device is
// fixed, widening to the rest of the fleet.
func TestStagedRollout(t *testing.T) {
	var tags []map[string]any
	for i := 0; i < 4; i++ {
		ring := "stable"
		if i < 2 {
			ring = "canary"
		}
		tags = append(tags, map[string]any{"fleet": "kiosks", "ring": ring})
	}
	e := newFleetEnv(t, tags)
	// The injected failure: on canary kiosk-01 a directory stands where the
	// file must go.
	blocker := filepath.Join(e.fleet.Root(1), "opt/app/app.conf")
	if err := os.MkdirAll(filepath.Join(blocker, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	e.write("app.yaml", `apiVersion: twinlet.dev/v1
kind: FleetConfig
metadata: {name: app}
spec:
  targetCondition: "tags.fleet='kiosks'"
  priority: 30
  sections:
    files:
      conf: {path: /opt/app/app.conf, content: "url=https://example.com\n"}
  rollout:
    maxFailed: 0
    stages:
      - {name: canary, target: "tags.ring='canary'"}
      - {name: everyone, target: "*", minReady: 100}
`)
	e.ok("apply", "-f", e.repo)
	r := e.run("", "rollout", "run", "app", "--interval", "50ms", "--timeout", "30s")
	if r.code != 3 || !strings.Contains(r.stdout, "halted app--") || !strings.Contains(r.stdout, "stage 1/2 canary: 1 of 2 devices failed, more than maxFailed 0") {
		t.Fatalf("rollout run: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	for _, id := range e.ids[2:] {
		if path(e.desired(id), "files") != nil {
			t.Errorf("%s got the content of a halted canary", id)
		}
	}
	out := e.ok("get", "configs")
	if !strings.Contains(out, "1/2 canary Halted") {
		t.Errorf("get configs while halted:\n%s", out)
	}
	if r := e.run("", "rollout", "status", "app"); r.code != 3 {
		t.Errorf("rollout status while failed: exit %d\n%s", r.code, r.stdout)
	}

	// Fix the device; the agent retries; the rollout resumes at the canary
	// stage and completes.
	if err := os.RemoveAll(blocker); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, "the fixed canary Ready", func() bool { return e.run("", "rollout", "status", "app").code == 0 })
	r = e.run("", "rollout", "run", "app", "--interval", "50ms", "--timeout", "60s")
	if r.code != 0 || !strings.Contains(r.stdout, "resuming app--") || !strings.Contains(r.stdout, "widening to stage 2/2 everyone") ||
		!strings.Contains(r.stdout, "complete: 4 of 4 devices Ready") {
		t.Fatalf("resumed rollout: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	for i := range e.ids {
		if b, _ := os.ReadFile(filepath.Join(e.fleet.Root(i), "opt/app/app.conf")); string(b) != "url=https://example.com\n" {
			t.Errorf("device %d: app.conf %q", i, b)
		}
	}
	if r := e.run("", "diff", "-f", e.repo); r.code != 0 {
		t.Errorf("diff after the rollout: exit %d\n%s", r.code, r.stdout)
	}
}

func TestFleetUsage(t *testing.T) {
	e := &env{t: t, vars: map[string]string{}}
	e.fails(2, "apply: -f DIR (the fleet repository) is required", "apply")
	e.fails(2, "diff: -f DIR (the fleet repository) is required", "diff")
	e.fails(2, "usage: twinctl rollout status NAME", "rollout", "status")
	e.fails(2, "rollout: missing subcommand", "rollout")
	e.fails(2, `unknown command "get frobs"`, "get", "frobs")
	e.fails(2, "--max-failed: threshold", "rollout", "status", "x", "--max-failed", "lots")
	// A repository error is exit 1 for diff too, before any hub is needed.
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "a.yaml"), []byte("kind: Nope\n"), 0o644)
	e.fails(1, `a.yaml:1:7: /kind: unknown kind "Nope"`, "diff", "-f", dir)
	e.fails(1, "no *.yaml files", "diff", "-f", t.TempDir())
}

func TestProgressBar(t *testing.T) {
	for _, tc := range []struct {
		p    progress
		want string
	}{
		{progress{Expected: 10, Applied: 10, Ready: 5}, "[#####.....]"},
		{progress{Expected: 10, Applied: 10, Ready: 9, Failed: 1}, "[#########x]"},
		{progress{Expected: 1000, Applied: 1000, Ready: 10, Failed: 1}, "[x.........]"},
		{progress{}, "[..........]"},
	} {
		if got := tc.p.Bar(10); got != tc.want {
			t.Errorf("%+v: %s, want %s", tc.p, got, tc.want)
		}
	}
}
