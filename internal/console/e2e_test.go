package console_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/twinlet/twinlet/internal/console"
	"github.com/twinlet/twinlet/internal/fleet"
	"github.com/twinlet/twinlet/internal/hub"
	"github.com/twinlet/twinlet/internal/iothub"
	"github.com/twinlet/twinlet/internal/testutil"
	"github.com/twinlet/twinlet/providers"
	_ "github.com/twinlet/twinlet/providers/standard"
)

// fleetEnv is twinhub, real `twinlet run` agents on sandbox roots, and a
// console server on loopback.
type fleetEnv struct {
	t     *testing.T
	h     *hub.Hub
	sc    *iothub.ServiceClient
	srv   *console.Server
	url   string
	token string
	roots map[string]string

	mu     sync.Mutex
	writes []string // the non-GET requests the console received, "PUT /api/…"
}

// written returns how many writes (requests other than GET and HEAD)
// reached the console so far.
func (e *fleetEnv) written() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.writes)
}

// writesSince returns the writes after the first n.
func (e *fleetEnv) writesSince(n int) []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.writes[n:]...)
}

const token = "test-token-0123456789abcdef"

func startFleet(t *testing.T, ids []string, tags func(id string) map[string]any) *fleetEnv {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "twinlet")
	if out, err := exec.Command("go", "build", "-o", bin, "../../cmd/twinlet").CombinedOutput(); err != nil {
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
	cs, err := iothub.ParseConnectionString(h.OwnerConnectionString())
	if err != nil {
		t.Fatal(err)
	}
	sc, err := iothub.NewServiceClient(cs, iothub.WithRootCAs(h.CertPool()), iothub.WithServiceAddr(h.HTTPSAddr()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sc.Close)
	e := &fleetEnv{t: t, h: h, sc: sc, token: token, roots: map[string]string{}}
	_, port, _ := net.SplitHostPort(h.MQTTAddr())
	var procs []*exec.Cmd
	var logs []*testutil.SyncBuffer
	t.Cleanup(func() {
		for _, p := range procs {
			p.Process.Signal(syscall.SIGTERM)
		}
		for i, p := range procs {
			if err := p.Wait(); err != nil && t.Failed() {
				t.Logf("twinlet %s: %v\n%s", ids[i], err, logs[i].String())
			}
		}
	})
	for _, id := range ids {
		dcs, err := h.CreateDevice(id)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := h.UpdateTwin(id, "", hub.TwinPatch{Tags: tags(id)}, false, ""); err != nil {
			t.Fatal(err)
		}
		d := filepath.Join(dir, id)
		e.roots[id] = filepath.Join(d, "root")
		for _, sub := range []string{"root/etc", "policy"} {
			os.MkdirAll(filepath.Join(d, sub), 0o755)
		}
		key := filepath.Join(d, "device.key")
		os.WriteFile(key, []byte(dcs.String()+"\n"), 0o600)
		cmd := exec.Command(bin, "run", "--config", "", "--root", e.roots[id], "--state-dir", filepath.Join(d, "state"),
			"--policy", filepath.Join(d, "policy"), "--key-file", key, "--ca-file", h.CAFile(), "--hub-port", port)
		var lb testutil.SyncBuffer
		cmd.Stdout, cmd.Stderr = &lb, &lb
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		procs = append(procs, cmd)
		logs = append(logs, &lb)
	}
	srv, err := console.New(console.Options{Client: sc, Token: token, Interval: 200 * time.Millisecond, Sections: console.KnownSections()})
	if err != nil {
		t.Fatal(err)
	}
	// Every write the page sends is recorded on its way in, so that a test
	// can tell "refused in the page" from "refused by the server".
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			e.mu.Lock()
			e.writes = append(e.writes, r.Method+" "+r.URL.Path)
			e.mu.Unlock()
		}
		srv.ServeHTTP(w, r)
	}))
	t.Cleanup(func() {
		srv.Close()
		ts.Close()
	})
	e.srv, e.url = srv, ts.URL
	return e
}

func (e *fleetEnv) twin(id string) *iothub.Twin {
	e.t.Helper()
	tw, err := e.sc.GetTwin(context.Background(), id)
	if err != nil {
		e.t.Fatal(err)
	}
	return tw
}

func (e *fleetEnv) onDisk(id, name string) string {
	b, err := os.ReadFile(filepath.Join(e.roots[id], name))
	if err != nil {
		return "<missing>"
	}
	return string(b)
}

func desiredVersion(tw *iothub.Twin) int64 {
	v, _ := tw.Properties.Desired["$version"].(float64)
	return int64(v)
}

// shoot saves a screenshot of the viewport into $TWINLET_SCREENSHOTS
// (make screenshots), when set.
func shoot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	dir := os.Getenv("TWINLET_SCREENSHOTS")
	if dir == "" {
		return
	}
	png := get(t, ctx, "screenshot "+name, chromedp.CaptureScreenshot())
	if err := os.WriteFile(filepath.Join(dir, name), png, 0o644); err != nil {
		t.Fatal(err)
	}
}

func poll(expr string) chromedp.Action[chromedp.Void] {
	return chromedp.Poll[chromedp.Void](expr, chromedp.WithPollingTimeout(40*time.Second))
}

func js(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// samePage waits until the configurations page shows the progress of
// configuration id that fleet.Status (twinctl rollout status) computes,
// settled with at least ready devices Ready.
func samePage(t *testing.T, ctx context.Context, e *fleetEnv, id string, ready int64) {
	t.Helper()
	bg := context.Background()
	testutil.Eventually(t, id+": the page's rollout numbers equal fleet.Status", func() bool {
		c, err := e.sc.GetConfiguration(bg, id)
		if err != nil {
			return false
		}
		p, err := fleet.Status(bg, e.sc, c)
		if err != nil || !p.Settled() || p.Ready < ready {
			return false
		}
		want := fmt.Sprintf("targeted %d of %dapplied %dReady %dFailed %dpending %d", p.Targeted, p.Expected, p.Applied, p.Ready, p.Failed, p.Pending)
		c2, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		got, err := chromedp.Run(c2, chromedp.TextContent("#config-"+id+" .counts"))
		return err == nil && got == want
	})
}

// TestConsoleEndToEnd drives the console in headless Chromium against
// twinhub and three real agents: the devices table and its filter, a
// device's hostname changed in the page until the agent's Ready appears
// without a reload, an invalid value refused in the page with its
// pointer and nothing sent, a stale etag shown as a conflict, direct
// methods with the plan as a diff, and a staged rollout's progress with
// the numbers of `twinctl rollout status`.
func TestConsoleEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds twinlet, runs three agents and Chromium")
	}
	ctx, pe := browserWithErrors(t, 1280, 800)
	// The 412 and 422 answers the test provokes are logged as failed
	// requests; nothing else may go wrong in the page.
	defer noPageErrors(t, pe, "status of 412", "status of 422")
	ids := []string{"kiosk-01", "kiosk-02", "kiosk-03"}
	e := startFleet(t, ids, func(id string) map[string]any {
		ring := "stable"
		if id == "kiosk-01" {
			ring = "canary"
		}
		return map[string]any{"fleet": "kiosks", "site": "berlin", "ring": ring}
	})
	bg := context.Background()
	if _, err := e.sc.PatchTwin(bg, "kiosk-01", iothub.TwinPatch{Desired: map[string]any{"hostname": map[string]any{"name": "kiosk-01"}}}, ""); err != nil {
		t.Fatal(err)
	}

	// The devices table, live: every agent's Ready arrives without a reload.
	do(t, ctx, "open the console", chromedp.EmulateViewport(1280, 800), chromedp.Navigate(e.url+"/?token="+token),
		chromedp.WaitVisible(`tr[data-device="kiosk-03"]`),
		chromedp.Evaluate[chromedp.Void]("window.__sameDocument = true"),
		poll(`[...document.querySelectorAll('tbody tr')].filter(r => r.cells[2].textContent === 'Ready').length === 3`),
		// every column: connection, no failed section, both versions, last activity
		poll(`[...document.querySelectorAll('tbody tr')].every(r => r.cells[1].textContent === 'Connected' && r.cells[3].textContent === '' &&
			parseInt(r.cells[4].textContent) > 0 && parseInt(r.cells[5].textContent) > 0 && r.cells[6].textContent.trim() !== '')`),
		poll(`document.documentElement.scrollWidth <= 1280`))
	shoot(t, ctx, "devices.png")
	// A live update keeps the keyboard's place: the focused row's link
	// stays focused when its row changes.
	do(t, ctx, "focus a row", chromedp.Focus(`#dev-kiosk-02`))
	if _, err := e.sc.PatchTwin(bg, "kiosk-02", iothub.TwinPatch{Desired: map[string]any{"timezone": map[string]any{"name": "Etc/UTC"}}}, ""); err != nil {
		t.Fatal(err)
	}
	v2 := desiredVersion(e.twin("kiosk-02"))
	do(t, ctx, "the row changes, the focus stays",
		poll(fmt.Sprintf(`document.querySelector('tr[data-device="kiosk-02"]').cells[4].textContent === '%d'`, v2)),
		poll(`document.activeElement && document.activeElement.id === 'dev-kiosk-02'`))
	// Paging with the hub's continuation tokens, two rows a page.
	do(t, ctx, "paging", chromedp.Navigate(e.url+"/#/devices?size=2"),
		poll(`document.querySelectorAll('tbody tr[data-device]').length === 2 && !document.querySelector('.pager button:last-child').disabled`),
		activate(`.pager button:last-child`),
		poll(`document.querySelectorAll('tbody tr[data-device]').length === 1 && !!document.querySelector('tr[data-device="kiosk-03"]')`),
		activate(`.pager button:first-child`),
		poll(`document.querySelectorAll('tbody tr[data-device]').length === 2`))
	// The filter, with the keyboard: typed, then Enter.
	// A filter the hub refuses shows the hub's error.
	do(t, ctx, "a refused filter", chromedp.Focus(`#filter`), chromedp.SendKeys(`#filter`, "tags.ring = \r"),
		poll(`!!document.querySelector('main .notice.error') && document.querySelector('main .notice.error').textContent.trim() !== ''`),
		chromedp.Evaluate[chromedp.Void](`document.getElementById('filter').value = ''`))
	do(t, ctx, "filter", chromedp.Focus(`#filter`), chromedp.SendKeys(`#filter`, "tags.ring = 'canary'\r"),
		poll(`document.querySelectorAll('tbody tr').length === 1 && !!document.querySelector('tr[data-device="kiosk-01"]')`))
	do(t, ctx, "open the device", activate(`tr[data-device="kiosk-01"] a`), chromedp.WaitVisible(`#section-hostname`),
		poll(`document.querySelector('#section-hostname .section-head .badge').textContent === 'Ready'`))

	// Change the hostname in the page's form.
	do(t, ctx, "edit hostname", activate(`#section-hostname button.edit`), chromedp.WaitVisible(`#f-hostname-name`),
		chromedp.SetValue(`#f-hostname-name`, "kiosk-renamed"), activate(`#section-hostname .edit-form button.primary`))
	testutil.Eventually(t, "the new hostname in the twin", func() bool {
		n, _ := e.twin("kiosk-01").Properties.Desired["hostname"].(map[string]any)
		return n["name"] == "kiosk-renamed"
	})
	v := desiredVersion(e.twin("kiosk-01"))
	do(t, ctx, "the agent's Ready for the new version, without a reload",
		poll(fmt.Sprintf(`[...document.querySelectorAll('#section-hostname .history li')].some(li => li.textContent.includes('Ready') && li.textContent.includes('desired v%d'))`, v)),
		poll(`document.querySelector('#section-hostname pre.reported').textContent.includes('kiosk-renamed')`),
		poll(`document.querySelector('#section-hostname pre.desired').textContent.includes('kiosk-renamed')`),
		poll(`window.__sameDocument === true`),
		// a history: the state the page first saw (an older desired
		// version) and the transitions since
		poll(fmt.Sprintf(`(() => { const l = [...document.querySelectorAll('#section-hostname .history li')];
			return l.length >= 2 && !l[0].textContent.includes('desired v%d') })()`, v)),
		// desired and reported side by side at 1280 pixels
		poll(`(() => { const d = document.querySelector('#section-hostname pre.desired').getBoundingClientRect(),
			r = document.querySelector('#section-hostname pre.reported').getBoundingClientRect();
			return Math.abs(d.top - r.top) < 1 && d.right <= r.left })()`),
		chromedp.WaitNotPresent(`#section-hostname .edit-form`),
		poll(`document.documentElement.scrollWidth <= 1280`),
		chromedp.Evaluate[chromedp.Void]("window.scrollTo(0, 0)"))
	if got := e.onDisk("kiosk-01", "etc/hostname"); got != "kiosk-renamed\n" {
		t.Errorf("etc/hostname = %q", got)
	}

	// An invalid value is refused in the page, with its pointer; nothing is sent.
	before := e.twin("kiosk-01")
	sent := e.written()
	do(t, ctx, "invalid hostname", activate(`#section-hostname button.edit`), chromedp.WaitVisible(`#f-hostname-name`),
		chromedp.SetValue(`#f-hostname-name`, "Bad_Name!"), activate(`#section-hostname .edit-form button.primary`),
		chromedp.WaitVisible(`#section-hostname .problems`))
	problems := get(t, ctx, "problems", chromedp.TextContent(`#section-hostname .problems`))
	if !strings.Contains(problems, "/name") {
		t.Errorf("problems shown: %q, want the pointer /name", problems)
	}
	if msg := get(t, ctx, "refusal", chromedp.TextContent(`#section-hostname .result`)); !strings.Contains(msg, "Not sent") {
		t.Errorf("refusal shown as %q, want the page's own (Not sent)", msg)
	}
	// the JSON editor refuses the same, with the same pointer
	do(t, ctx, "invalid JSON edit", activate(`#section-hostname .tabs button:nth-child(2)`),
		chromedp.SetValue(`#json-hostname`, `{"name": "ok", "colour": "red"}`), activate(`#section-hostname .edit-form button.primary`),
		poll(`document.querySelector('#section-hostname .problems').textContent.includes('/colour')`))
	if after := e.twin("kiosk-01"); desiredVersion(after) != desiredVersion(before) {
		t.Errorf("an invalid edit reached the hub: desired v%d → v%d", desiredVersion(before), desiredVersion(after))
	}
	// Refused in the page: not one request left it.
	if w := e.writesSince(sent); len(w) > 0 {
		t.Errorf("the page sent invalid edits: %v", w)
	}
	do(t, ctx, "cancel", activate(`#section-hostname .edit-form button.cancel`),
		chromedp.WaitNotPresent(`#section-hostname .edit-form`))

	// A stale etag: someone else changes the twin while the page edits.
	do(t, ctx, "start editing", activate(`#section-hostname button.edit`), chromedp.WaitVisible(`#f-hostname-name`),
		chromedp.SetValue(`#f-hostname-name`, "kiosk-third"))
	if _, err := e.sc.PatchTwin(bg, "kiosk-01", iothub.TwinPatch{Desired: map[string]any{"timezone": map[string]any{"name": "Etc/UTC"}}}, ""); err != nil {
		t.Fatal(err)
	}
	do(t, ctx, "conflict", poll(`document.querySelector('#section-hostname .edit-form').textContent.includes('desired properties changed since you started')`),
		activate(`#section-hostname .edit-form button.primary`), chromedp.WaitVisible(`#section-hostname button.reload`))
	msg := get(t, ctx, "conflict text", chromedp.TextContent(`#section-hostname .result`))
	if !strings.Contains(msg, "Conflict") || !strings.Contains(msg, "412") {
		t.Errorf("conflict shown as %q", msg)
	}
	if n, _ := e.twin("kiosk-01").Properties.Desired["hostname"].(map[string]any); n["name"] != "kiosk-renamed" {
		t.Errorf("a stale edit was written: %v", n)
	}
	do(t, ctx, "reload and save", activate(`#section-hostname button.reload`),
		poll(`document.querySelector('#section-hostname .result').textContent.includes('Reloaded at desired version')`),
		chromedp.SetValue(`#f-hostname-name`, "kiosk-third"), activate(`#section-hostname .edit-form button.primary`),
		poll(`document.querySelector('#section-hostname pre.reported').textContent.includes('kiosk-third')`),
		chromedp.WaitNotPresent(`#section-hostname .edit-form`))

	// With the keyboard and the JSON editor: Enter on Edit opens the
	// editor with the focus in it, the JSON is set, Enter on the save
	// button sends it, and the agent's Ready for it arrives.
	do(t, ctx, "edit timezone with the keyboard", chromedp.WaitVisible(`#edit-timezone`), chromedp.SendKeys(`#edit-timezone`, "\r"),
		chromedp.WaitVisible(`#f-timezone-name`),
		poll(`!!document.activeElement && !!document.activeElement.closest('#section-timezone .edit-form')`),
		activate(`#section-timezone .tabs button:nth-child(2)`), chromedp.SetValue(`#json-timezone`, `{"name": "Europe/Berlin"}`),
		chromedp.SendKeys(`#section-timezone .edit-form button.primary`, "\r"),
		chromedp.WaitNotPresent(`#section-timezone .edit-form`))
	testutil.Eventually(t, "the JSON edit in the twin", func() bool {
		n, _ := e.twin("kiosk-01").Properties.Desired["timezone"].(map[string]any)
		return n["name"] == "Europe/Berlin"
	})
	vtz := desiredVersion(e.twin("kiosk-01"))
	do(t, ctx, "the agent's Ready for the JSON edit",
		poll(fmt.Sprintf(`[...document.querySelectorAll('#section-timezone .history li')].some(li => li.textContent.includes('Ready') && li.textContent.includes('desired v%d'))`, vtz)))
	testutil.Eventually(t, "etc/timezone", func() bool { return e.onDisk("kiosk-01", "etc/timezone") == "Europe/Berlin\n" })

	// Direct methods: reconcile, the plan as a diff, the status, a
	// provider's method (its payload checked in the page first).
	do(t, ctx, "reconcile", activate(`#m-reconcile`),
		poll(`document.querySelector('#methods .answer h3') && document.querySelector('#methods .answer h3').textContent === 'reconcile → status 200'`))
	do(t, ctx, "getPlan", activate(`#m-getPlan`), chromedp.WaitVisible(`#plan-diff`))
	do(t, ctx, "getStatus", activate(`#m-getStatus`), chromedp.WaitVisible(`.method-answer`),
		poll(`document.querySelector('.method-answer').textContent.includes('"summary"')`))
	sent = e.written()
	do(t, ctx, "a provider method's payload refused in the page", chromedp.SetValue(`#method-name`, "commands.get"),
		chromedp.SetValue(`#method-payload`, `{"commandId": ""}`), activate(`#m-invoke`),
		poll(`!!document.querySelector('#methods .answer .problems') && document.querySelector('#methods .answer .problems').textContent.includes('/commandId')`))
	if w := e.writesSince(sent); len(w) > 0 {
		t.Errorf("the page sent a payload its schema refuses: %v", w)
	}
	do(t, ctx, "a provider method", chromedp.SetValue(`#method-payload`, `{"commandId": "never-ran"}`), activate(`#m-invoke`),
		poll(`!!document.querySelector('#methods .answer h3') && document.querySelector('#methods .answer h3').textContent.startsWith('commands.get → status ')`),
		poll(`document.querySelector('#methods .method-answer').textContent.includes('never-ran')`))
	if w := e.writesSince(sent); len(w) != 1 || w[0] != "POST /api/devices/kiosk-01/methods/commands.get" {
		t.Errorf("the method call sent %v", w)
	}

	// A section the agent refuses shows its __errors with their pointers
	// (a file the twin may not write: the cloud scope says Forbidden).
	if _, err := e.sc.PatchTwin(bg, "kiosk-01", iothub.TwinPatch{Desired: map[string]any{"files": map[string]any{
		"motd": map[string]any{"path": "/etc/motd", "content": "hello\n"},
		"sudo": map[string]any{"path": "/etc/sudoers.d/kiosk", "content": "ALL ALL=(ALL) NOPASSWD: ALL\n"}}}}, ""); err != nil {
		t.Fatal(err)
	}
	do(t, ctx, "the agent's errors", chromedp.WaitVisible(`#section-files`),
		poll(`!!document.querySelector('#section-files .errors') && document.querySelector('#section-files .errors').textContent.includes('/sudo/path')`),
		poll(`document.querySelector('#section-files .section-head .badge').textContent === 'Failed'`),
		poll(`document.querySelector('#summary-state').textContent.includes('failed: files')`),
		chromedp.Evaluate[chromedp.Void]("window.scrollTo(0, 0)"))
	shoot(t, ctx, "device.png")
	// The dry run shows the refused item with its pointer, as a diff line.
	do(t, ctx, "getPlan with a refusal", activate(`#m-getPlan`),
		poll(`!!document.querySelector('#plan-diff') && document.querySelector('#plan-diff').textContent.includes('/sudo/path')`),
		chromedp.Evaluate[chromedp.Void]("window.scrollTo(0, 0)"))
	// The devices table names the failed section.
	do(t, ctx, "failed sections in the table", chromedp.Navigate(e.url+"/#/devices"),
		poll(`(() => { const r = document.querySelector('tr[data-device="kiosk-01"]');
			return !!r && r.cells[2].textContent === 'Failed' && r.cells[3].textContent.includes('files') })()`),
		chromedp.Navigate(e.url+"/#/device/kiosk-01"), chromedp.WaitVisible(`#section-files`))
	if _, err := e.sc.PatchTwin(bg, "kiosk-01", iothub.TwinPatch{Desired: map[string]any{"files": nil}}, ""); err != nil {
		t.Fatal(err)
	}

	// The device page on a phone.
	do(t, ctx, "phone", chromedp.EmulateViewport(390, 844, chromedp.EmulateScale(2), chromedp.EmulateMobile),
		chromedp.Evaluate[chromedp.Void]("window.scrollTo(0, 0)"),
		poll(`document.documentElement.scrollWidth <= 390`))
	shoot(t, ctx, "device-phone.png")
	do(t, ctx, "desktop", chromedp.EmulateViewport(1280, 800))

	// A staged rollout: canary first, then everyone.
	repo, err := fleet.Parse("app.yaml", []byte(`apiVersion: twinlet.dev/v1
kind: FleetConfig
metadata: {name: motd}
spec:
  targetCondition: "tags.fleet='kiosks'"
  priority: 10
  sections:
    files:
      motd: {path: /etc/motd, content: "welcome\n", mode: "0644"}
  rollout:
    maxFailed: 0
    stages:
      - {name: canary, target: "tags.ring='canary'"}
      - {name: everyone, target: "*", minReady: 90}
`), func(id string) bool { _, ok := providers.Lookup(id); return ok })
	if err != nil {
		t.Fatal(err)
	}
	cfg := repo.Configs[0].Render(0)
	if _, err := e.sc.CreateConfiguration(bg, *cfg); err != nil {
		t.Fatal(err)
	}
	sel := "#config-" + cfg.ID
	do(t, ctx, "configurations", chromedp.Navigate(e.url+"/#/configs"), chromedp.WaitVisible(sel+" .stages"))
	// The page shows what `twinctl rollout status` computes, live.
	samePage(t, ctx, e, cfg.ID, 1)
	testutil.Eventually(t, "the canary's motd", func() bool { return e.onDisk("kiosk-01", "etc/motd") == "welcome\n" })

	// Edit what the service lets change: the priority.
	do(t, ctx, "edit the configuration", activate(sel+" .section-head button"), chromedp.WaitVisible("#p-"+cfg.ID),
		chromedp.SetValue("#p-"+cfg.ID, "42"), activate(sel+" .edit-form button.primary"),
		chromedp.WaitNotPresent(sel+" .edit-form"))
	testutil.Eventually(t, "priority 42 on the hub", func() bool {
		c, err := e.sc.GetConfiguration(bg, cfg.ID)
		return err == nil && c.Priority == 42 && c.Labels[fleet.LabelRollout] == cfg.Labels[fleet.LabelRollout]
	})

	// Create a configuration in the page: an invalid section is refused
	// with its pointer, then a valid one is created.
	sent = e.written()
	do(t, ctx, "new configuration", chromedp.Navigate(e.url+"/#/configs/new"), chromedp.WaitVisible("#new-id"),
		chromedp.SetValue("#new-id", "tz-berlin"), chromedp.SetValue("#new-target", "tags.site = 'berlin'"),
		chromedp.SetValue("#new-sections", `{"timezone": {"name": "Europe/../../etc"}}`),
		activate(`form.edit-form button.primary`),
		poll(`document.querySelector('form.edit-form .problems') && document.querySelector('form.edit-form .problems').textContent.includes('/timezone/name')`))
	if _, err := e.sc.GetConfiguration(bg, "tz-berlin"); !iothub.IsNotFound(err) {
		t.Errorf("an invalid configuration reached the hub: %v", err)
	}
	if w := e.writesSince(sent); len(w) > 0 {
		t.Errorf("the page sent an invalid configuration: %v", w)
	}
	do(t, ctx, "valid configuration", chromedp.SetValue("#new-sections", `{"timezone": {"name": "Europe/Berlin"}}`),
		activate(`form.edit-form button.primary`), chromedp.WaitVisible("#config-tz-berlin"))
	testutil.Eventually(t, "the new configuration reaches the devices", func() bool {
		return e.onDisk("kiosk-02", "etc/timezone") == "Europe/Berlin\n"
	})
	samePage(t, ctx, e, "tz-berlin", 2)

	// The rollout widens to everyone (as `twinctl rollout run` does) and a
	// device fails it: a directory where its motd must go.
	os.MkdirAll(filepath.Join(e.roots["kiosk-03"], "etc/motd/sub"), 0o755)
	c, err := e.sc.GetConfiguration(bg, cfg.ID)
	if err != nil {
		t.Fatal(err)
	}
	c.Labels[fleet.LabelStage] = "1"
	c.TargetCondition = fleet.StageTarget(fleet.BaseTarget(c), repo.Configs[0].Rollout.Stages, 1)
	if _, err := e.sc.UpdateConfiguration(bg, *c); err != nil {
		t.Fatal(err)
	}
	do(t, ctx, "the rollout's second stage", chromedp.Navigate(e.url+"/#/configs"), chromedp.WaitVisible(sel+" .stages"))
	samePage(t, ctx, e, cfg.ID, 2)
	if got := get(t, ctx, "stages", chromedp.TextContent(sel+" .stages")); !strings.Contains(got, "done") || !strings.Contains(got, "2/3 Ready") {
		t.Errorf("stages shown: %q", got)
	}
	if w := get(t, ctx, "width", chromedp.Evaluate[int](`document.documentElement.scrollWidth`)); w > 1280 {
		t.Errorf("the configurations are %d pixels wide at 1280", w)
	}
	if n := get(t, ctx, "bars", chromedp.Evaluate[int](`document.querySelectorAll('`+sel+` .stages .bar').length`)); n != 2 {
		t.Errorf("%d bars for two stages", n)
	}
	do(t, ctx, "over maxFailed", poll(`document.querySelector('`+sel+` .notice.error').textContent.includes('maxFailed 0')`),
		// the numbers came as live updates: the page was never reloaded
		poll(`window.__sameDocument === true`))
	shoot(t, ctx, "rollout.png")

	// The failed device's plan, as a diff: the change it cannot make, its
	// before as a - line and its after as a + line.
	do(t, ctx, "getPlan of a pending change", chromedp.Navigate(e.url+"/#/device/kiosk-03"), chromedp.WaitVisible(`#section-files`),
		activate(`#m-getPlan`), chromedp.WaitVisible(`#plan-diff`),
		poll(`(() => { const d = document.querySelector('#plan-diff'), has = (c, s) => [...d.querySelectorAll(c)].some(l => l.textContent.includes(s));
			return has('.chg', 'motd') && has('.del', 'directory') && has('.add', 'sha256:') })()`))
	// Everything the page loaded came from the console itself.
	if other := get(t, ctx, "resources", chromedp.Evaluate[[]string](`performance.getEntries().map(e => e.name).filter(n => /^[a-z]+:/.test(n) && !n.startsWith(location.origin + '/'))`)); len(other) > 0 {
		t.Errorf("the page loaded from elsewhere: %v", other)
	}
}
