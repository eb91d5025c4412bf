package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twinlet/twinlet/internal/hub"
	"github.com/twinlet/twinlet/internal/iothub/iothubtest"
	"sigs.k8s.io/yaml"
)

// env is a twinctl environment pointing at an embedded hub.
type env struct {
	t    *testing.T
	h    *hub.Hub
	vars map[string]string
}

func newEnv(t *testing.T) *env {
	h := iothubtest.StartHub(t)
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, h.CAPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	return &env{t: t, h: h, vars: map[string]string{
		"TWINCTL_HUB":      h.OwnerConnectionString(),
		"TWINCTL_CA":       ca,
		"TWINCTL_HUB_ADDR": h.HTTPSAddr(),
	}}
}

type result struct {
	code           int
	stdout, stderr string
}

func (e *env) run(stdin string, args ...string) result {
	e.t.Helper()
	return e.runCtx(context.Background(), stdin, &bytes.Buffer{}, args...)
}

func (e *env) runCtx(ctx context.Context, stdin string, stdout writer, args ...string) result {
	var stderr bytes.Buffer
	getenv := func(k string) string { return e.vars[k] }
	code := newCLI(strings.NewReader(stdin), stdout, &stderr, getenv).run(ctx, args)
	return result{code, stdout.String(), stderr.String()}
}

type writer interface {
	Write([]byte) (int, error)
	String() string
}

func (e *env) ok(args ...string) string {
	e.t.Helper()
	r := e.run("", args...)
	if r.code != 0 {
		e.t.Fatalf("twinctl %s: exit %d\nstderr: %s", strings.Join(args, " "), r.code, r.stderr)
	}
	return r.stdout
}

func (e *env) fails(code int, stderrHas string, args ...string) {
	e.t.Helper()
	r := e.run("", args...)
	if r.code != code || !strings.Contains(r.stderr, stderrHas) {
		e.t.Fatalf("twinctl %s: exit %d, stderr %q; want exit %d and %q", strings.Join(args, " "), r.code, r.stderr, code, stderrHas)
	}
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestUsage(t *testing.T) {
	e := &env{t: t, vars: map[string]string{}}
	e.fails(2, "missing command")
	e.fails(2, `unknown command "frobnicate"`, "frobnicate")
	e.fails(2, "devices: missing subcommand", "devices")
	e.fails(2, `unknown command "devices frob"`, "devices", "frob")
	e.fails(2, "usage: twinctl devices show DEVICE", "devices", "show")
	e.fails(2, "usage: twinctl invoke DEVICE METHOD", "invoke", "d1")
	e.fails(2, "devices list takes no arguments", "devices", "list", "extra")
	e.fails(2, "flag provided but not defined: -bogus", "devices", "list", "--bogus")
	e.fails(2, `--output: unknown format "xml"`, "-o", "xml", "devices", "list")
	e.fails(2, "no hub: set --hub or TWINCTL_HUB", "devices", "list")
	e.fails(2, "-f FILE (or -f - for standard input) is required", "twin", "patch", "d1")
	e.fails(2, "--payload: not valid JSON", "invoke", "d1", "m", "--payload", "{nope")
	e.fails(1, "--hub: invalid connection string: missing HostName", "--hub", "SharedAccessKeyName=x;SharedAccessKey=eA==", "devices", "list")
	e.fails(1, "need a shared access policy connection string", "--hub", "HostName=h;DeviceId=d;SharedAccessKey=eA==", "devices", "list")
	e.fails(1, "--ca /nonexistent/ca.pem: no such file or directory", "--hub", "HostName=h;SharedAccessKeyName=x;SharedAccessKey=eA==", "--ca", "/nonexistent/ca.pem", "devices", "list")
	notPEM := writeFile(t, "ca.pem", "hello")
	e.vars["TWINCTL_CA"] = notPEM
	e.fails(1, "TWINCTL_CA "+notPEM+": no PEM certificate found", "--hub", "HostName=h;SharedAccessKeyName=x;SharedAccessKey=eA==", "devices", "list")

	for _, args := range [][]string{{"help"}, {"-h"}, {"devices", "list", "--help"}} {
		r := e.run("", args...)
		if r.code != 0 || !strings.Contains(r.stdout, "Usage:") {
			t.Errorf("twinctl %v: exit %d, stdout %q", args, r.code, r.stdout)
		}
	}
}

func TestDevices(t *testing.T) {
	e := newEnv(t)
	out := e.ok("devices", "create", "kiosk-1")
	if !strings.Contains(out, "DEVICE") || !strings.Contains(out, "kiosk-1") || !strings.Contains(out, "enabled") {
		t.Errorf("create table:\n%s", out)
	}
	e.ok("devices", "create", "kiosk-2", "--status", "disabled", "--edge")
	e.fails(1, "409 Conflict (DeviceAlreadyExists)", "devices", "create", "kiosk-1")
	e.fails(2, "--status: want enabled or disabled", "devices", "create", "k3", "--status", "maybe")

	out = e.ok("devices", "list")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "DEVICE") || !strings.Contains(out, "kiosk-2") {
		t.Errorf("list table:\n%s", out)
	}

	// Flags after the positional argument, JSON and YAML.
	var d struct {
		DeviceID       string `json:"deviceId"`
		Status         string `json:"status"`
		Authentication struct {
			Type string `json:"type"`
		} `json:"authentication"`
		Capabilities struct {
			IoTEdge bool `json:"iotEdge"`
		} `json:"capabilities"`
	}
	if err := json.Unmarshal([]byte(e.ok("devices", "show", "kiosk-2", "-o", "json")), &d); err != nil {
		t.Fatal(err)
	}
	if d.DeviceID != "kiosk-2" || d.Status != "disabled" || d.Authentication.Type != "sas" || !d.Capabilities.IoTEdge {
		t.Errorf("show json: %+v", d)
	}
	var list []map[string]any
	if err := yaml.Unmarshal([]byte(e.ok("--output", "yaml", "devices", "list")), &list); err != nil || len(list) != 2 {
		t.Errorf("list yaml: %v, %v", list, err)
	}

	e.fails(1, "412 Precondition Failed", "devices", "delete", "kiosk-1", "--etag", "stale")
	if out := e.ok("devices", "delete", "kiosk-1"); out != "deleted device kiosk-1\n" {
		t.Errorf("delete: %q", out)
	}
	e.fails(1, "get device kiosk-1: GET /devices/kiosk-1: iothub: 404 Not Found (DeviceNotFound)", "devices", "show", "kiosk-1")
}

func TestTwinPatchAndShow(t *testing.T) {
	e := newEnv(t)
	e.ok("devices", "create", "d1")

	patch := writeFile(t, "patch.yaml", `# desired state for d1
tags:
  env: prod
  site: ams
properties:
  desired:
    hostname:
      name: kiosk-1
    big: 4503599627370495
`)
	out := e.ok("twin", "patch", "d1", "-f", patch)
	if !strings.HasPrefix(out, "patched twin d1 (version ") {
		t.Errorf("patch: %q", out)
	}

	// JSON from standard input, with the short "desired" form and a null
	// that deletes.
	r := e.run(`{"desired": {"big": null, "ntp": {"servers": {"a": "pool.ntp.org"}}}, "tags": {"site": null}}`, "twin", "patch", "d1", "-f", "-", "-o", "json")
	if r.code != 0 {
		t.Fatalf("patch from stdin: %d %s", r.code, r.stderr)
	}
	var tw struct {
		Tags       map[string]any `json:"tags"`
		Properties struct {
			Desired map[string]any `json:"desired"`
		} `json:"properties"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &tw); err != nil {
		t.Fatal(err)
	}
	if tw.Tags["site"] != nil || tw.Tags["env"] != "prod" || tw.Properties.Desired["big"] != nil || tw.Properties.Desired["ntp"] == nil {
		t.Errorf("twin after stdin patch: tags %v desired %v", tw.Tags, tw.Properties.Desired)
	}

	out = e.ok("twin", "show", "d1")
	for _, want := range []string{"FIELD", "deviceId", "tags.env", "prod", "desired.hostname.name", "kiosk-1", "desired.ntp.servers.a", "desired.$version"} {
		if !strings.Contains(out, want) {
			t.Errorf("twin show lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "$metadata") {
		t.Errorf("twin show lists $metadata:\n%s", out)
	}

	// Module twin.
	if _, err := e.h.CreateModule("d1", "twinlet"); err != nil {
		t.Fatal(err)
	}
	r = e.run("desired: {a: 1}", "twin", "patch", "d1", "--module", "twinlet", "-f", "-")
	if r.code != 0 || !strings.Contains(r.stdout, "patched twin d1/twinlet") {
		t.Errorf("module patch: %d %q %q", r.code, r.stdout, r.stderr)
	}
	if out := e.ok("twin", "show", "d1", "--module", "twinlet"); !strings.Contains(out, "moduleId") || !strings.Contains(out, "desired.a") {
		t.Errorf("module twin show:\n%s", out)
	}

	e.fails(1, "412 Precondition Failed", "twin", "patch", "d1", "-f", patch, "--etag", "stale")
	e.fails(1, "get twin nope: GET /twins/nope: iothub: 404", "twin", "show", "nope")
}

func TestTwinPatchInputErrors(t *testing.T) {
	e := newEnv(t)
	cases := []struct {
		name, content, want string
	}{
		{"syntax.yaml", "tags:\n  env: prod\n bad: [\n", "syntax.yaml:2: did not find expected key"},
		{"tab.yaml", "tags:\n\tenv: prod\n", "tab.yaml:2: found character that cannot start any token"},
		{"json.json", "{\"tags\": {\"a\": 1,}}", "json.json:1: invalid JSON"},
		{"unknown.yaml", "tags: {}\nlabels:\n  a: b\n", `unknown.yaml:2: unknown key "labels"`},
		{"reported.yaml", "properties:\n  desired: {}\n  reported:\n    x: 1\n", "reported.yaml:3: properties.reported is written by the device"},
		{"twice.yaml", "desired: {a: 1}\nproperties:\n  desired: {b: 2}\n", "twice.yaml:3: desired properties given twice (also at line 1)"},
		{"key.yaml", "desired:\n  files:\n    my.file: {}\n", `key.yaml:3: desired.files: key "my.file": twin keys may not contain`},
		{"dup.yaml", "tags:\n  a: 1\n  a: 2\n", `dup.yaml:3: key "a" given twice (also at line 2)`},
		{"multi.json", "{\n  \"tags\": {\n    \"a\": 1,\n  }\n}", "multi.json:4: invalid JSON: invalid character '}'"},
		{"list.yaml", "- a\n", "list.yaml:1: expected a mapping"},
		{"empty.yaml", "", "empty.yaml: empty document"},
		{"scalar.yaml", "tags: prod\n", "scalar.yaml:1: tags: expected a mapping"},
	}
	dir := t.TempDir()
	for _, c := range cases {
		p := filepath.Join(dir, c.name)
		if err := os.WriteFile(p, []byte(c.content), 0o600); err != nil {
			t.Fatal(err)
		}
		if r := e.run("", "twin", "patch", "d1", "-f", p); r.code != 1 || !strings.Contains(r.stderr, p[:len(dir)+1]+c.want) {
			t.Errorf("%s: exit %d, stderr %q; want %q", c.name, r.code, r.stderr, c.want)
		}
	}
	e.fails(1, "-f /nonexistent.yaml: no such file or directory", "twin", "patch", "d1", "-f", "/nonexistent.yaml")
	r := e.run("tags: [", "twin", "patch", "d1", "-f", "-")
	if r.code != 1 || !strings.Contains(r.stderr, "<stdin>:1: ") {
		t.Errorf("stdin error: %d %q", r.code, r.stderr)
	}
}

func TestInvoke(t *testing.T) {
	e := newEnv(t)
	for _, id := range []string{"d1", "offline"} {
		if _, err := e.h.CreateDevice(id); err != nil {
			t.Fatal(err)
		}
	}
	iothubtest.Connect(t, e.h, "d1", "", func(method string, payload []byte) (int, []byte) {
		switch method {
		case "echo":
			return 200, payload
		case "fail":
			return 500, []byte(`{"error":"disk full"}`)
		}
		return 404, nil
	})

	out := e.ok("invoke", "d1", "echo", "--payload", `{"x": [1, 2]}`)
	if !strings.Contains(out, "STATUS") || !strings.Contains(out, "200") || !strings.Contains(out, `{"x":[1,2]}`) {
		t.Errorf("invoke table:\n%s", out)
	}
	var resp struct {
		Status  int             `json:"status"`
		Payload json.RawMessage `json:"payload"`
	}
	if err := json.Unmarshal([]byte(e.ok("invoke", "d1", "echo", "-o", "json", "--timeout", "10s")), &resp); err != nil || resp.Status != 200 {
		t.Errorf("invoke json: %+v %v", resp, err)
	}
	r := e.run("", "invoke", "d1", "fail")
	if r.code != 1 || !strings.Contains(r.stdout, "500") || !strings.Contains(r.stderr, "the device answered status 500") {
		t.Errorf("device error status: %d %q %q", r.code, r.stdout, r.stderr)
	}
	e.fails(1, "DeviceNotOnline", "invoke", "offline", "echo")
}

func TestQuery(t *testing.T) {
	e := newEnv(t)
	for _, id := range []string{"a1", "a2", "b1"} {
		e.ok("devices", "create", id)
		env := "prod"
		if id == "b1" {
			env = "test"
		}
		if r := e.run(`{"tags":{"env":"`+env+`"}}`, "twin", "patch", id, "-f", "-"); r.code != 0 {
			t.Fatal(r.stderr)
		}
	}
	out := e.ok("query", "SELECT * FROM devices WHERE tags.env = 'prod'", "--page-size", "1")
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 3 || !strings.HasPrefix(lines[0], "DEVICE") || !strings.Contains(out, "a2") || strings.Contains(out, "b1") {
		t.Errorf("query twins table:\n%s", out)
	}
	out = e.ok("query", "SELECT deviceId, tags.env AS env FROM devices")
	if !strings.HasPrefix(out, "deviceId") || !strings.Contains(out, "env") || !strings.Contains(out, "test") {
		t.Errorf("query projection table:\n%s", out)
	}
	var rows []map[string]any
	if err := json.Unmarshal([]byte(e.ok("query", "SELECT tags.env, COUNT() AS n FROM devices GROUP BY tags.env", "-o", "json")), &rows); err != nil {
		t.Fatal(err)
	}
	if len(rows) != 2 || rows[0]["env"] != "prod" || rows[0]["n"] != float64(2) {
		t.Errorf("group by: %v", rows)
	}
	if out := e.ok("query", "SELECT * FROM devices WHERE deviceId = 'none'"); out != "no results\n" {
		t.Errorf("empty query: %q", out)
	}
	e.fails(1, "400 Bad Request", "query", "SELECT * FROM devices WHERE")
}

// syncBuffer is a bytes.Buffer that tells waiters when it has grown.
type syncBuffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	changed chan struct{}
}

func newSyncBuffer() *syncBuffer { return &syncBuffer{changed: make(chan struct{})} }

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	close(b.changed)
	b.changed = make(chan struct{})
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// waitFor blocks until the buffer contains s, or fails after 10 s.
func (b *syncBuffer) waitFor(t *testing.T, s string) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		b.mu.Lock()
		has, ch := strings.Contains(b.buf.String(), s), b.changed
		b.mu.Unlock()
		if has {
			return
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("output never contained %q; got:\n%s", s, b.String())
		}
	}
}

func TestEvents(t *testing.T) {
	e := newEnv(t)
	for _, id := range []string{"d1", "d2"} {
		if _, err := e.h.CreateDevice(id); err != nil {
			t.Fatal(err)
		}
	}
	d1 := iothubtest.Connect(t, e.h, "d1", "", nil)
	d2 := iothubtest.Connect(t, e.h, "d2", "", nil)
	d1.Send([]byte(`{"temp": 21}`), map[string]string{"kind": "climate"})
	d2.Send([]byte("plain text"), nil)
	d1.Send([]byte{0xff, 0x00}, nil)

	out := e.ok("events")
	for _, want := range []string{"SEQ", "d1", `{"temp":21}`, "kind=climate", "plain text", "base64:/wA="} {
		if !strings.Contains(out, want) {
			t.Errorf("events table lacks %q:\n%s", want, out)
		}
	}
	var evs []map[string]any
	if err := json.Unmarshal([]byte(e.ok("events", "-o", "json", "--device", "d1")), &evs); err != nil {
		t.Fatal(err)
	}
	if len(evs) != 2 || evs[0]["deviceId"] != "d1" || evs[1]["bodyEncoding"] != "base64" {
		t.Errorf("events json: %v", evs)
	}
	if err := json.Unmarshal([]byte(e.ok("events", "-o", "json", "--since", "2")), &evs); err != nil || len(evs) != 1 {
		t.Errorf("events --since 2: %v %v", evs, err)
	}

	// --follow prints what is there, then each new event, until interrupted.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	buf := newSyncBuffer()
	done := make(chan result, 1)
	go func() { done <- e.runCtx(ctx, "", buf, "events", "--follow", "--since", "3", "-o", "json") }()
	d2.Send([]byte(`{"n":4}`), nil)
	buf.waitFor(t, `"seq":4`)
	d1.Send([]byte(`{"n":5}`), nil)
	buf.waitFor(t, `"seq":5`)
	cancel()
	r := <-done
	if r.code != 0 {
		t.Errorf("follow ended with %d: %s", r.code, r.stderr)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 || strings.Contains(buf.String(), `"seq":3`) {
		t.Errorf("follow printed:\n%s", buf.String())
	}
}
