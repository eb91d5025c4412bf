package console_test

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twinlet/twinlet/internal/console"
	"github.com/twinlet/twinlet/internal/hub"
	"github.com/twinlet/twinlet/internal/iothub"
	"github.com/twinlet/twinlet/internal/testutil"
	"github.com/twinlet/twinlet/providers"
	"github.com/twinlet/twinlet/schemas"
)

// startConsole serves a console for a twinhub with one device (no agent)
// and returns its URL, the server, the service client and the hub.
func startConsole(t *testing.T, hosts func(addr string) []string) (string, *console.Server, *iothub.ServiceClient, *hub.Hub) {
	t.Helper()
	return startConsoleEvery(t, hosts, 50*time.Millisecond)
}

// startConsoleEvery is startConsole with the shared polls' interval.
func startConsoleEvery(t *testing.T, hosts func(addr string) []string, interval time.Duration) (string, *console.Server, *iothub.ServiceClient, *hub.Hub) {
	t.Helper()
	h, err := hub.New(hub.Options{Dir: filepath.Join(t.TempDir(), "hub"), MQTTAddr: "127.0.0.1:0", HTTPSAddr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	if _, err := h.CreateDevice("dev-1"); err != nil {
		t.Fatal(err)
	}
	cs, _ := iothub.ParseConnectionString(h.OwnerConnectionString())
	sc, err := iothub.NewServiceClient(cs, iothub.WithRootCAs(h.CertPool()), iothub.WithServiceAddr(h.HTTPSAddr()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sc.Close)
	ts := httptest.NewUnstartedServer(nil)
	var hs []string
	if hosts != nil {
		hs = hosts(ts.Listener.Addr().String())
	}
	srv, err := console.New(console.Options{Client: sc, Token: token, Hosts: hs, Interval: interval, Sections: console.KnownSections()})
	if err != nil {
		t.Fatal(err)
	}
	ts.Config.Handler = srv
	ts.Start()
	t.Cleanup(func() {
		srv.Close()
		ts.Close()
	})
	return ts.URL, srv, sc, h
}

type req struct {
	method, path, body string
	header             map[string]string
}

func do1(t *testing.T, base string, r req) (int, string, http.Header) {
	t.Helper()
	hr, err := http.NewRequest(r.method, base+r.path, strings.NewReader(r.body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range r.header {
		if k == "Host" {
			hr.Host = v
			continue
		}
		hr.Header.Set(k, v)
	}
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Do(hr)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

func csrfOf(t *testing.T, base string) string {
	t.Helper()
	code, body, _ := do1(t, base, req{method: "GET", path: "/", header: map[string]string{"Authorization": "Bearer " + token}})
	if code != 200 {
		t.Fatalf("index: %d", code)
	}
	_, rest, _ := strings.Cut(body, `name="csrf" content="`)
	v, _, _ := strings.Cut(rest, `"`)
	if len(v) < 16 {
		t.Fatalf("no CSRF token in the page")
	}
	return v
}

// TestSafety checks the guards every request passes: the token (as a
// cookie after a ?token= visit), the Host, the origin and CSRF header of
// writes, and that the hub's key never reaches the page.
func TestSafety(t *testing.T) {
	base, _, _, h := startConsole(t, func(addr string) []string { return []string{addr} })
	csrf := csrfOf(t, base)
	auth := "Bearer " + token
	writeHdr := func(extra map[string]string) map[string]string {
		m := map[string]string{"Authorization": auth, "X-Twinctl-Csrf": csrf, "Content-Type": "application/json"}
		for k, v := range extra {
			m[k] = v
		}
		return m
	}
	body := `{"payload": null}`
	for _, c := range []struct {
		name string
		r    req
		want int
	}{
		{"no token", req{method: "GET", path: "/api/info"}, 401},
		{"wrong token", req{method: "GET", path: "/api/info", header: map[string]string{"Authorization": "Bearer nope-nope-nope"}}, 401},
		{"wrong token in the URL", req{method: "GET", path: "/?token=nope"}, 401},
		{"token in the URL", req{method: "GET", path: "/?token=" + token}, 303},
		{"bearer", req{method: "GET", path: "/api/info", header: map[string]string{"Authorization": auth}}, 200},
		{"rebinding Host", req{method: "GET", path: "/api/info", header: map[string]string{"Authorization": auth, "Host": "evil.example:80"}}, 421},
		{"write without CSRF", req{method: "POST", path: "/api/devices/dev-1/methods/reconcile", body: body, header: map[string]string{"Authorization": auth, "Content-Type": "application/json"}}, 403},
		{"write with a wrong CSRF", req{method: "POST", path: "/api/devices/dev-1/methods/reconcile", body: body, header: writeHdr(map[string]string{"X-Twinctl-Csrf": "x"})}, 403},
		{"cross-origin write", req{method: "POST", path: "/api/devices/dev-1/methods/reconcile", body: body, header: writeHdr(map[string]string{"Origin": "http://evil.example"})}, 403},
		{"cross-site write", req{method: "POST", path: "/api/devices/dev-1/methods/reconcile", body: body, header: writeHdr(map[string]string{"Sec-Fetch-Site": "cross-site"})}, 403},
		{"form-encoded write", req{method: "POST", path: "/api/devices/dev-1/methods/reconcile", body: body, header: writeHdr(map[string]string{"Content-Type": "text/plain"})}, 403},
		{"a write reaches the hub (offline device)", req{method: "POST", path: "/api/devices/dev-1/methods/reconcile", body: body, header: writeHdr(nil)}, 404},
		{"not a method name", req{method: "POST", path: "/api/devices/dev-1/methods/" + url.PathEscape("a/../b"), body: body, header: writeHdr(nil)}, 400},
		{"no raw proxy", req{method: "GET", path: "/api/twins/dev-1", header: map[string]string{"Authorization": auth}}, 404},
	} {
		code, b, _ := do1(t, base, c.r)
		if code != c.want {
			t.Errorf("%s: %d, want %d: %s", c.name, code, c.want, b)
		}
	}

	// The ?token= visit sets an HttpOnly, SameSite cookie and drops the token from the address.
	_, _, hdr := do1(t, base, req{method: "GET", path: "/?token=" + token})
	ck := hdr.Get("Set-Cookie")
	if !strings.Contains(ck, "HttpOnly") || !strings.Contains(ck, "SameSite=Strict") || hdr.Get("Location") != "/" {
		t.Errorf("cookie %q, location %q", ck, hdr.Get("Location"))
	}
	name, val, _ := strings.Cut(strings.Split(ck, ";")[0], "=")
	if code, _, _ := do1(t, base, req{method: "GET", path: "/api/devices", header: map[string]string{"Cookie": name + "=" + val}}); code != 200 {
		t.Errorf("with the cookie: %d", code)
	}

	// Nothing the page can read carries the hub's key.
	cs, _ := iothub.ParseConnectionString(h.OwnerConnectionString())
	key := string(cs.SharedAccessKey)
	for _, p := range []string{"/", "/api/info", "/api/devices", "/api/devices/dev-1", "/api/configs", "/static/app.js"} {
		_, b, _ := do1(t, base, req{method: "GET", path: p, header: map[string]string{"Authorization": auth}})
		if strings.Contains(b, key) || strings.Contains(b, h.OwnerConnectionString()) || strings.Contains(b, "SharedAccessKey") {
			t.Errorf("%s carries the hub's key", p)
		}
	}
	// nor do the live updates
	for _, q := range []string{"topic=devices", "topic=device&id=dev-1", "topic=configs", "topic=device&id=nosuch"} {
		if ev := firstEvent(t, base, q); strings.Contains(ev, key) || strings.Contains(ev, "SharedAccessKey") || strings.Contains(ev, "sig=") {
			t.Errorf("%s carries the hub's key: %s", q, ev)
		}
	}
}

// firstEvent returns the first data line of /api/watch?query.
func firstEvent(t *testing.T, base, query string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r, _ := http.NewRequestWithContext(ctx, "GET", base+"/api/watch?"+query, nil)
	r.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(r)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	for {
		l, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("%s: %v", query, err)
		}
		if strings.HasPrefix(l, "data: ") {
			return l
		}
	}
}

// TestSectionWrite checks the server side of a section edit: the agent's
// schema (nothing sent when it fails), the desired version guard, and a
// section replaced exactly (keys it lost removed).
func TestSectionWrite(t *testing.T) {
	base, _, sc, _ := startConsole(t, nil)
	csrf := csrfOf(t, base)
	hdr := map[string]string{"Authorization": "Bearer " + token, "X-Twinctl-Csrf": csrf, "Content-Type": "application/json"}
	ctx := context.Background()
	tw, err := sc.PatchTwin(ctx, "dev-1", iothub.TwinPatch{Desired: map[string]any{"files": map[string]any{
		"a": map[string]any{"path": "/etc/a", "content": "a"}, "b": map[string]any{"path": "/etc/b", "content": "b"}}}}, "")
	if err != nil {
		t.Fatal(err)
	}
	v := tw.Properties.Desired["$version"].(float64)
	send := func(section, value string, version int) (int, string) {
		code, b, _ := do1(t, base, req{method: "PUT", path: "/api/devices/dev-1/sections/" + section, header: hdr,
			body: `{"value": ` + value + `, "etag": "` + tw.ETag + `", "desiredVersion": ` + strconv.Itoa(version) + `}`})
		return code, b
	}
	if code, b := send("hostname", `{"name": "Bad_Name"}`, int(v)); code != 422 || !strings.Contains(b, `"pointer":"/name"`) {
		t.Errorf("invalid hostname: %d %s", code, b)
	}
	if code, b := send("nosuch", `{}`, int(v)); code != 400 {
		t.Errorf("unknown section: %d %s", code, b)
	}
	if code, b := send("deviceInfo", `{}`, int(v)); code != 400 {
		t.Errorf("read-only section: %d %s", code, b)
	}
	if now, _ := sc.GetTwin(ctx, "dev-1"); now.Properties.Desired["$version"].(float64) != v {
		t.Fatalf("a refused write reached the hub")
	}
	if code, b := send("files", `{"a": {"path": "/etc/a", "content": "A"}}`, int(v)-1); code != 412 {
		t.Errorf("stale desired version: %d %s", code, b)
	}
	if code, b := send("files", `{"a": {"path": "/etc/a", "content": "A"}}`, int(v)); code != 200 {
		t.Fatalf("write: %d %s", code, b)
	}
	now, _ := sc.GetTwin(ctx, "dev-1")
	files := now.Properties.Desired["files"].(map[string]any)
	if _, ok := files["b"]; ok || files["a"].(map[string]any)["content"] != "A" {
		t.Errorf("files after the write: %v", files)
	}
}

// TestSharedPoll checks that pages watching the same view share one poll,
// which stops when the last one leaves.
func TestSharedPoll(t *testing.T) {
	base, srv, _, _ := startConsole(t, nil)
	open := func() (func(), *bufio.Reader) {
		ctx, cancel := context.WithCancel(context.Background())
		r, _ := http.NewRequestWithContext(ctx, "GET", base+"/api/watch?topic=devices&filter=", nil)
		r.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		return func() { cancel(); resp.Body.Close() }, bufio.NewReader(resp.Body)
	}
	readData := func(br *bufio.Reader) string {
		for {
			l, err := br.ReadString('\n')
			if err != nil {
				t.Fatal(err)
			}
			if strings.HasPrefix(l, "data: ") {
				return l
			}
		}
	}
	c1, r1 := open()
	c2, r2 := open()
	if l := readData(r1); !strings.Contains(l, `"id":"dev-1"`) {
		t.Errorf("first page got %s", l)
	}
	readData(r2)
	if n := srv.Polls(); n != 1 {
		t.Errorf("%d polls for two pages of one view", n)
	}
	c1()
	c2()
	testutil.Eventually(t, "the poll stops", func() bool { return srv.Polls() == 0 })
}

// TestPollCost counts what open pages cost the hub: with an interval
// longer than the test, ten pages of the devices table and ten of one
// device are two reads of the hub (a query and a twin), not twenty.
func TestPollCost(t *testing.T) {
	base, srv, _, _ := startConsoleEvery(t, nil, time.Hour)
	var closers []func()
	defer func() {
		for _, c := range closers {
			c()
		}
	}()
	for i := 0; i < 20; i++ {
		topic := "topic=devices&filter="
		if i%2 == 1 {
			topic = "topic=device&id=dev-1"
		}
		ctx, cancel := context.WithCancel(context.Background())
		r, _ := http.NewRequestWithContext(ctx, "GET", base+"/api/watch?"+topic, nil)
		r.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		closers = append(closers, func() { cancel(); resp.Body.Close() })
		br := bufio.NewReader(resp.Body)
		for {
			l, err := br.ReadString('\n')
			if err != nil {
				t.Fatal(err)
			}
			if strings.HasPrefix(l, "data: ") {
				if !strings.Contains(l, `"dev-1"`) {
					t.Errorf("page %d got %s", i, l)
				}
				break
			}
		}
	}
	if n := console.Fetches(srv); n != 2 {
		t.Errorf("20 pages of 2 views read the hub %d times, want 2", n)
	}
	if n := srv.Polls(); n != 2 {
		t.Errorf("%d polls for 2 views", n)
	}
}

// TestConfigurationWrites checks what the page may change on a
// configuration: content never, twinctl's own labels never, the rest
// with the etag it read.
func TestConfigurationWrites(t *testing.T) {
	base, _, sc, _ := startConsole(t, nil)
	csrf := csrfOf(t, base)
	hdr := map[string]string{"Authorization": "Bearer " + token, "X-Twinctl-Csrf": csrf, "Content-Type": "application/json"}
	ctx := context.Background()
	call := func(method, path, body string) (int, string) {
		code, b, _ := do1(t, base, req{method: method, path: path, body: body, header: hdr})
		return code, b
	}
	if code, b := call("POST", "/api/configs", `{"id": "tz", "targetCondition": "*", "priority": 1, "sections": {"timezone": {"name": "Nowhere/../x"}}}`); code != 422 || !strings.Contains(b, `"pointer":"/sections/timezone/name"`) {
		t.Errorf("invalid section: %d %s", code, b)
	}
	if code, b := call("POST", "/api/configs", `{"id": "tz", "targetCondition": "tags.x = ", "sections": {"timezone": {"name": "Etc/UTC"}}}`); code != 422 || !strings.Contains(b, "/targetCondition") {
		t.Errorf("invalid target: %d %s", code, b)
	}
	if code, b := call("POST", "/api/configs", `{"id": "tz", "targetCondition": "*", "labels": {"twinlet-managed-by": "twinctl"}, "sections": {"timezone": {"name": "Etc/UTC"}}}`); code != 400 {
		t.Errorf("a twinlet- label: %d %s", code, b)
	}
	if _, err := sc.GetConfiguration(ctx, "tz"); err == nil {
		t.Fatal("a refused configuration reached the hub")
	}
	if code, b := call("POST", "/api/configs", `{"id": "tz", "targetCondition": "*", "priority": 1, "labels": {"team": "a"}, "sections": {"timezone": {"name": "Etc/UTC"}}}`); code != 201 {
		t.Fatalf("create: %d %s", code, b)
	}
	cfg, err := sc.GetConfiguration(ctx, "tz")
	if err != nil {
		t.Fatal(err)
	}
	tz, _ := cfg.Content.DeviceContent["properties.desired.timezone"].(map[string]any)
	if meta, _ := tz["__meta"].(map[string]any); meta["deploymentId"] != "tz" {
		t.Errorf("content %v: no deploymentId", cfg.Content.DeviceContent)
	}
	// a label twinctl owns survives an edit from the page
	cfg.Labels["twinlet-rollout"] = "Complete"
	cfg, err = sc.UpdateConfiguration(ctx, *cfg)
	if err != nil {
		t.Fatal(err)
	}
	if code, b := call("PUT", "/api/configs/tz", `{"etag": "stale", "priority": 5, "labels": {}}`); code != 412 {
		t.Errorf("stale etag: %d %s", code, b)
	}
	if code, b := call("PUT", "/api/configs/tz", `{"etag": "`+cfg.ETag+`", "priority": 5, "labels": {}, "sections": {"timezone": {}}}`); code != 400 {
		t.Errorf("content change: %d %s", code, b)
	}
	if code, b := call("PUT", "/api/configs/tz", `{"etag": "`+cfg.ETag+`", "priority": 5, "targetCondition": "tags.site = 'x'", "labels": {"team": "b"}}`); code != 200 {
		t.Fatalf("update: %d %s", code, b)
	}
	cfg, _ = sc.GetConfiguration(ctx, "tz")
	if cfg.Priority != 5 || cfg.TargetCondition != "tags.site = 'x'" || cfg.Labels["team"] != "b" || cfg.Labels["twinlet-rollout"] != "Complete" {
		t.Errorf("after the update: %+v", cfg)
	}
	if code, _ := call("DELETE", "/api/configs/tz", ""); code != 400 {
		t.Errorf("delete without etag: %d", code)
	}
	if code, b := call("DELETE", "/api/configs/tz?etag="+url.QueryEscape(cfg.ETag), ""); code != 204 {
		t.Errorf("delete: %d %s", code, b)
	}
	if _, err := sc.GetConfiguration(ctx, "tz"); !iothub.IsNotFound(err) {
		t.Errorf("still there: %v", err)
	}
}

// TestSectionWriteETag checks the etag guard itself: a change of the twin
// between the console's read and its write (which the desired version
// check cannot see) makes the hub refuse the write, and the page gets a
// 412 while the other change stays.
func TestSectionWriteETag(t *testing.T) {
	base, srv, sc, _ := startConsole(t, nil)
	csrf := csrfOf(t, base)
	hdr := map[string]string{"Authorization": "Bearer " + token, "X-Twinctl-Csrf": csrf, "Content-Type": "application/json"}
	ctx := context.Background()
	tw, err := sc.PatchTwin(ctx, "dev-1", iothub.TwinPatch{Desired: map[string]any{"hostname": map[string]any{"name": "before"}}}, "")
	if err != nil {
		t.Fatal(err)
	}
	v := int(tw.Properties.Desired["$version"].(float64))
	console.SetBeforePatch(srv, func() {
		if _, err := sc.PatchTwin(ctx, "dev-1", iothub.TwinPatch{Desired: map[string]any{"timezone": map[string]any{"name": "Etc/UTC"}}}, ""); err != nil {
			t.Error(err)
		}
	})
	code, b, _ := do1(t, base, req{method: "PUT", path: "/api/devices/dev-1/sections/hostname", header: hdr,
		body: `{"value": {"name": "mine"}, "etag": "` + tw.ETag + `", "desiredVersion": ` + strconv.Itoa(v) + `}`})
	if code != 412 {
		t.Errorf("a write after a concurrent change: %d %s, want 412", code, b)
	}
	now, _ := sc.GetTwin(ctx, "dev-1")
	if h, _ := now.Properties.Desired["hostname"].(map[string]any); h["name"] != "before" {
		t.Errorf("hostname %v: the stale write went through", h)
	}
	if _, ok := now.Properties.Desired["timezone"]; !ok {
		t.Errorf("the other change was lost: %v", now.Properties.Desired)
	}
}

// TestEveryRequestNeedsTheToken sends each of the console's routes, and
// the page's files, without the token.
func TestEveryRequestNeedsTheToken(t *testing.T) {
	base, _, _, _ := startConsole(t, nil)
	csrf := csrfOf(t, base)
	write := map[string]string{"X-Twinctl-Csrf": csrf, "Content-Type": "application/json"}
	for _, r := range []req{
		{method: "GET", path: "/"},
		{method: "GET", path: "/static/app.js"},
		{method: "GET", path: "/static/schema.js"},
		{method: "GET", path: "/static/app.css"},
		{method: "GET", path: "/static/icon.svg"},
		{method: "GET", path: "/api/info"},
		{method: "GET", path: "/api/schemas/hostname"},
		{method: "GET", path: "/api/devices"},
		{method: "GET", path: "/api/devices/dev-1"},
		{method: "GET", path: "/api/configs"},
		{method: "GET", path: "/api/watch?topic=devices"},
		{method: "PUT", path: "/api/devices/dev-1/sections/hostname", body: `{"value": {"name": "x"}, "desiredVersion": 1}`, header: write},
		{method: "POST", path: "/api/devices/dev-1/methods/reconcile", body: `{}`, header: write},
		{method: "POST", path: "/api/configs", body: `{}`, header: write},
		{method: "PUT", path: "/api/configs/x", body: `{}`, header: write},
		{method: "DELETE", path: "/api/configs/x?etag=x", header: write},
		{method: "GET", path: "/api/nosuch"},
	} {
		if code, b, _ := do1(t, base, r); code != 401 {
			t.Errorf("%s %s without the token: %d %s", r.method, r.path, code, b)
		}
	}
}

// TestNothingFromElsewhere checks that the page refers to nothing
// outside the console (no font, script, style or image from another
// origin) and that its Content-Security-Policy allows only the console.
func TestNothingFromElsewhere(t *testing.T) {
	base, _, _, _ := startConsole(t, nil)
	ref := regexp.MustCompile(`(?i)(src|href|action)\s*=\s*["']?\s*(https?:)?//|url\(\s*["']?\s*(https?:)?//|@import|@font-face|\bfetch\(\s*["'](https?:)?//|EventSource\(\s*["'](https?:)?//`)
	for _, p := range []string{"/", "/static/app.js", "/static/schema.js", "/static/app.css", "/static/icon.svg"} {
		code, b, hdr := do1(t, base, req{method: "GET", path: p, header: map[string]string{"Authorization": "Bearer " + token}})
		if code != 200 {
			t.Fatalf("%s: %d", p, code)
		}
		if m := ref.FindString(b); m != "" {
			t.Errorf("%s refers to another origin: %q", p, m)
		}
		csp := hdr.Get("Content-Security-Policy")
		for _, d := range []string{"default-src 'self'", "script-src 'self'", "style-src 'self'", "connect-src 'self'", "img-src 'self' data:"} {
			if !strings.Contains(csp, d) {
				t.Errorf("%s: Content-Security-Policy %q lacks %s", p, csp, d)
			}
		}
	}
}

// TestSchemasAreTheAgents checks that the schema the page validates a
// section with is the one the agent validates it with (the provider's
// own, else the embedded schemas/<id>.json), for every writable section.
func TestSchemasAreTheAgents(t *testing.T) {
	base, _, _, _ := startConsole(t, nil)
	n := 0
	for _, info := range providers.All() {
		want := []byte(info.Schema)
		if len(want) == 0 {
			want, _ = schemas.Raw(info.ID)
		}
		code, b, _ := do1(t, base, req{method: "GET", path: "/api/schemas/" + info.ID, header: map[string]string{"Authorization": "Bearer " + token}})
		if info.ReadOnly && code == 404 {
			continue
		}
		if code != 200 || b != string(want) {
			t.Errorf("%s: %d, the schema served is not the agent's", info.ID, code)
		}
		n++
	}
	if n < 10 {
		t.Errorf("%d sections compared: are the standard providers registered?", n)
	}
}
