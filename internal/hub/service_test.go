package hub

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/twinlet/twinlet/internal/testutil"
)

func TestRESTDevices(t *testing.T) {
	h := startHub(t, Options{})
	s := newSvc(t, h, "iothubowner")

	r := s.do("PUT", "/devices/d1", `{"deviceId":"d1"}`)
	if r.status != 200 {
		t.Fatalf("create: %d %s", r.status, r.body)
	}
	var dev Identity
	r.json(t, &dev)
	if dev.Authentication.Type != "sas" || dev.Authentication.SymmetricKey.PrimaryKey == "" || dev.Etag == "" ||
		dev.Status != "enabled" || dev.ConnectionState != "Disconnected" || dev.GenerationID == "" {
		t.Fatalf("created: %s", r.body)
	}
	if r := s.do("PUT", "/devices/d1", `{"deviceId":"d1"}`); r.status != 409 || r.errorCode() != "DeviceAlreadyExists" {
		t.Fatalf("duplicate: %d %s", r.status, r.body)
	}
	if r := s.do("PUT", "/devices/d1", `{"deviceId":"d1","status":"disabled"}`, "If-Match", `"stale"`); r.status != 412 || r.errorCode() != "PreconditionFailed" || !strings.Contains(string(r.body), `"errorCode":412001`) {
		t.Fatalf("stale etag: %d %s", r.status, r.body)
	}
	// The error envelope of the service.
	var env map[string]any
	r = s.do("GET", "/devices/nobody", nil)
	r.json(t, &env)
	if r.status != 404 || r.errorCode() != "DeviceNotFound" || !strings.HasPrefix(env["Message"].(string), "ErrorCode:DeviceNotFound;") ||
		!strings.HasPrefix(env["ExceptionMessage"].(string), "Tracking ID:") {
		t.Fatalf("not found: %d %s", r.status, r.body)
	}

	// Disabling through REST drops the live connection.
	cs, _ := h.ConnectionString("d1", "")
	d := mustDial(t, h, cs)
	testutil.Eventually(t, "connected", func() bool { return h.Connected("d1", "") })
	if r := s.do("GET", "/devices/d1", nil); !strings.Contains(string(r.body), `"connectionState":"Connected"`) {
		t.Fatalf("connectionState: %s", r.body)
	}
	r = s.do("PUT", "/devices/d1", `{"deviceId":"d1","status":"disabled"}`, "If-Match", `"`+dev.Etag+`"`)
	if r.status != 200 {
		t.Fatalf("disable: %d %s", r.status, r.body)
	}
	var upd Identity
	r.json(t, &upd)
	if upd.Etag == dev.Etag || upd.Authentication.SymmetricKey != dev.Authentication.SymmetricKey {
		t.Fatalf("update: etag must change, keys stay: %s", r.body)
	}
	select {
	case <-d.lost:
	case <-time.After(10 * time.Second):
		t.Fatal("disabled device still connected")
	}
	if _, err := dial(t, h, cs); err == nil {
		t.Fatal("disabled device connected")
	}

	// Modules.
	if r := s.do("PUT", "/devices/d1/modules/twinlet", `{"moduleId":"twinlet","managedBy":"twinlet"}`); r.status != 200 {
		t.Fatalf("module: %d %s", r.status, r.body)
	}
	if r := s.do("PUT", "/devices/d1/modules/twinlet", `{}`); r.errorCode() != "ModuleAlreadyExistsOnDevice" {
		t.Fatalf("module dup: %d %s", r.status, r.body)
	}
	if r := s.do("GET", "/devices/d1/modules/nope", nil); r.errorCode() != "ModuleNotFound" {
		t.Fatalf("module 404: %d %s", r.status, r.body)
	}
	if r := s.do("PUT", "/devices/ghost/modules/m", `{}`); r.errorCode() != "DeviceNotFound" {
		t.Fatalf("module on missing device: %d %s", r.status, r.body)
	}
	var mods []Identity
	s.do("GET", "/devices/d1/modules", nil).json(t, &mods)
	if len(mods) != 1 || mods[0].ModuleID != "twinlet" || mods[0].ManagedBy != "twinlet" {
		t.Fatalf("modules: %+v", mods)
	}
	var list []Identity
	s.do("GET", "/devices", nil).json(t, &list)
	if len(list) != 1 {
		t.Fatalf("devices: %+v", list)
	}

	// X.509 registration validates thumbprints.
	if r := s.do("PUT", "/devices/x", `{"authentication":{"type":"selfSigned","x509Thumbprint":{"primaryThumbprint":"zz"}}}`); r.status != 400 || r.errorCode() != "ArgumentInvalid" {
		t.Fatalf("bad thumbprint: %d %s", r.status, r.body)
	}
	if r := s.do("PUT", "/devices/bad%20id", `{}`); r.status != 400 {
		t.Fatalf("bad id: %d %s", r.status, r.body)
	}

	// Delete with If-Match: wrong etag 412, then * removes device and modules.
	if r := s.do("DELETE", "/devices/d1", nil, "If-Match", `"nope"`); r.status != 412 {
		t.Fatalf("delete stale: %d", r.status)
	}
	// azure-iothub sends the wildcard quoted: If-Match: "*".
	if r := s.do("DELETE", "/devices/d1", nil, "If-Match", `"*"`); r.status != 204 {
		t.Fatalf("delete: %d %s", r.status, r.body)
	}
	if _, err := h.Twin("d1", "twinlet"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("module twin survived its device: %v", err)
	}
}

func TestRESTProtocolAndAuthorization(t *testing.T) {
	h := startHub(t, Options{})
	h.CreateDevice("d1")
	owner := newSvc(t, h, "iothubowner")
	if r := owner.do("GET", "/devices/d1?api-version=", nil); r.status != 400 || r.errorCode() != "InvalidProtocolVersion" {
		t.Fatalf("no api-version: %d %s", r.status, r.body)
	}
	cases := []struct {
		policy, method, path, body string
		want                       int
	}{
		{"", "GET", "/devices/d1", "", 401},
		{"registryRead", "GET", "/devices/d1", "", 200},
		{"registryRead", "PUT", "/devices/d2", `{}`, 401},
		{"registryReadWrite", "PUT", "/devices/d2", `{}`, 200},
		{"registryReadWrite", "PATCH", "/twins/d1", `{"tags":{"a":1}}`, 401},
		{"service", "GET", "/devices/d1", "", 401},
		{"service", "GET", "/twins/d1", "", 200},
		{"service", "PATCH", "/twins/d1", `{"tags":{"a":1}}`, 200},
		{"service", "POST", "/devices/query", `{"query":"SELECT * FROM devices"}`, 200},
		{"registryRead", "POST", "/devices/query", `{"query":"SELECT * FROM devices"}`, 200},
		{"device", "GET", "/twins/d1", "", 401},
		{"device", "GET", "/devices/d1", "", 401},
		{"service", "GET", "/_twinhub/faults", "", 401},
		{"iothubowner", "GET", "/_twinhub/faults", "", 200},
	}
	for _, c := range cases {
		var body any
		if c.body != "" {
			body = c.body
		}
		r := newSvc(t, h, c.policy).do(c.method, c.path, body)
		if r.status != c.want {
			t.Errorf("%s %s %s: %d, want %d: %.200s", c.policy, c.method, c.path, r.status, c.want, r.body)
		}
		if c.want == 401 && r.errorCode() != "IotHubUnauthorizedAccess" {
			t.Errorf("%s %s %s: errorcode %q", c.policy, c.method, c.path, r.errorCode())
		}
	}
	// An expired owner token is refused.
	cs, _ := h.PolicyConnectionString("iothubowner")
	tok, _ := cs.SASToken(time.Now().Add(-time.Minute))
	if r := owner.do("GET", "/devices/d1", nil, "Authorization", tok); r.status != 401 {
		t.Fatalf("expired token: %d", r.status)
	}
}

func TestRESTTwinEtags(t *testing.T) {
	h := startHub(t, Options{})
	h.CreateDevice("d1")
	h.CreateModule("d1", "m")
	s := newSvc(t, h, "service")
	for _, base := range []string{"/twins/d1", "/twins/d1/modules/m"} {
		var tw Twin
		s.do("GET", base, nil).json(t, &tw)
		r := s.do("PATCH", base, `{"tags":{"env":"a"}}`, "If-Match", `"`+tw.Etag+`"`)
		if r.status != 200 {
			t.Fatalf("%s PATCH with etag: %d %s", base, r.status, r.body)
		}
		var after Twin
		r.json(t, &after)
		if after.Etag == tw.Etag || after.Version != tw.Version+1 || after.Tags["env"] != "a" {
			t.Fatalf("%s after PATCH: %s", base, r.body)
		}
		if r := s.do("PATCH", base, `{"tags":{"env":"b"}}`, "If-Match", `"`+tw.Etag+`"`); r.status != 412 || r.errorCode() != "PreconditionFailed" {
			t.Fatalf("%s stale PATCH: %d %s", base, r.status, r.body)
		}
		if r := s.do("PUT", base, `{"tags":{"x":1},"properties":{"desired":{"d":1}}}`, "If-Match", `"*"`); r.status != 200 {
			t.Fatalf("%s PUT: %d", base, r.status)
		}
		got := s.do("GET", base, nil)
		var final Twin
		got.json(t, &final)
		if final.Tags["env"] != nil || final.Tags["x"] != 1.0 || final.Properties.Desired["d"] != 1.0 || final.Properties.Desired["$version"] != 2.0 {
			t.Fatalf("%s after PUT: %s", base, got.body)
		}
		if base == "/twins/d1/modules/m" && final.ModuleID != "m" {
			t.Fatalf("module twin: %s", got.body)
		}
	}
	if r := s.do("PATCH", "/twins/d1", `not json`); r.status != 400 {
		t.Fatalf("bad json: %d", r.status)
	}
	if r := s.do("GET", "/twins/nobody", nil); r.status != 404 || r.errorCode() != "DeviceNotFound" {
		t.Fatalf("missing twin: %d %s", r.status, r.body)
	}
}

func TestDirectMethods(t *testing.T) {
	h := startHub(t, Options{})
	cs, _ := h.CreateDevice("d1")
	h.CreateDevice("d2")
	mcs, _ := h.CreateModule("d1", "m")
	s := newSvc(t, h, "service")

	if r := s.do("POST", "/twins/d1/methods", `{"methodName":"reboot","payload":{}}`); r.status != 404 || r.errorCode() != "DeviceNotOnline" || !strings.Contains(string(r.body), "404103") {
		t.Fatalf("offline: %d %s", r.status, r.body)
	}
	d := mustDial(t, h, cs)
	testutil.Eventually(t, "connected", func() bool { return h.Connected("d1", "") })
	if r := s.do("POST", "/twins/d1/methods", `{"methodName":"reboot"}`); r.status != 404 || r.errorCode() != "DeviceNotOnline" {
		t.Fatalf("not subscribed: %d %s", r.status, r.body)
	}
	d.subscribe("$iothub/methods/POST/#")

	// The device answers its own requests.
	go func() {
		m := d.next("$iothub/methods/POST/")
		if !strings.HasPrefix(m.Topic(), "$iothub/methods/POST/reboot/?$rid=") || string(m.Payload()) != `{"delay":5}` {
			d.publish("$iothub/methods/res/500/?$rid="+rid(m.Topic()), 1, []byte(`{"error":"unexpected request"}`))
			return
		}
		d.publish("$iothub/methods/res/201/?$rid="+rid(m.Topic()), 1, []byte(`{"ok":true}`))
	}()
	r := s.do("POST", "/twins/d1/methods", `{"methodName":"reboot","payload":{"delay":5},"responseTimeoutInSeconds":30}`)
	var res MethodResult
	r.json(t, &res)
	if r.status != 200 || res.Status != 201 || string(res.Payload) != `{"ok":true}` {
		t.Fatalf("invoke: %d %s", r.status, r.body)
	}

	// Modules have their own method endpoint.
	md := mustDial(t, h, mcs)
	md.subscribe("$iothub/methods/POST/#")
	go func() {
		m := md.next("$iothub/methods/POST/")
		md.publish("$iothub/methods/res/200/?$rid="+rid(m.Topic()), 1, nil)
	}()
	r = s.do("POST", "/twins/d1/modules/m/methods", `{"methodName":"ping"}`)
	r.json(t, &res)
	if r.status != 200 || res.Status != 200 || string(res.Payload) != "null" {
		t.Fatalf("module invoke: %d %s", r.status, r.body)
	}

	// Timeout: the Go API takes short timeouts; the REST API maps to 504.
	_, err := h.InvokeMethod(context.Background(), "d1", "", "silent", nil, 100*time.Millisecond, 0)
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("timeout: %v", err)
	}
	if ae := toAPIError(err); ae.status != 504 || ae.code != 504101 {
		t.Fatalf("timeout maps to %+v", ae)
	}
	if r := s.do("POST", "/twins/d1/methods", `{"methodName":"x","responseTimeoutInSeconds":1}`); r.status != 400 {
		t.Fatalf("timeout below 5 s: %d", r.status)
	}

	// connectTimeoutInSeconds waits for the device to come online.
	h.CreateDevice("late")
	lcs, _ := h.ConnectionString("late", "")
	done := make(chan MethodResult, 1)
	go func() {
		res, err := h.InvokeMethod(context.Background(), "late", "", "hello", json.RawMessage(`"hi"`), 10*time.Second, 10*time.Second)
		if err != nil {
			t.Error(err)
		}
		done <- res
	}()
	ld := mustDial(t, h, lcs)
	ld.subscribe("$iothub/methods/POST/#")
	m := ld.next("$iothub/methods/POST/hello/")
	ld.publish("$iothub/methods/res/200/?$rid="+rid(m.Topic()), 1, []byte(`"hello back"`))
	if res := <-done; res.Status != 200 || string(res.Payload) != `"hello back"` {
		t.Fatalf("late device: %+v", res)
	}
}

// TestDirectMethodTimeoutREST checks the 504 of the REST API end to end; the
// service's minimum timeout is 5 s, so it runs in parallel.
func TestDirectMethodTimeoutREST(t *testing.T) {
	t.Parallel()
	h := startHub(t, Options{})
	cs, _ := h.CreateDevice("d1")
	d := mustDial(t, h, cs)
	d.subscribe("$iothub/methods/POST/#")
	r := newSvc(t, h, "service").do("POST", "/twins/d1/methods", `{"methodName":"silent","responseTimeoutInSeconds":5}`)
	if r.status != 504 || r.errorCode() != "GatewayTimeout" {
		t.Fatalf("timeout: %d %s", r.status, r.body)
	}
}

// TestRESTBulkAndTrailingSlash covers what azure-iothub's Registry needs:
// list at "/devices/" and the bulk registry operation at POST /devices.
func TestRESTBulkAndTrailingSlash(t *testing.T) {
	h := startHub(t, Options{})
	s := newSvc(t, h, "iothubowner")
	r := s.do("POST", "/devices", `[{"id":"b1","importMode":"create","authentication":{"type":"sas","symmetricKey":{"primaryKey":"","secondaryKey":""}}},
		{"id":"b2","importMode":"create"}]`)
	if r.status != 200 || !strings.Contains(string(r.body), `"isSuccessful":true`) {
		t.Fatalf("bulk create: %d %s", r.status, r.body)
	}
	for _, p := range []string{"/devices", "/devices/"} {
		var list []Identity
		r := s.do("GET", p, nil)
		r.json(t, &list)
		if r.status != 200 || len(list) != 2 {
			t.Fatalf("GET %s: %d %s", p, r.status, r.body)
		}
	}
	// One entry fails, the other still takes effect; the answer says which.
	r = s.do("POST", "/devices", `[{"id":"b1","importMode":"create"},{"id":"b3","importMode":"create"},
		{"id":"b2","importMode":"updateTwin","tags":{"site":"x"}}]`)
	var res struct {
		IsSuccessful bool
		Errors       []struct{ DeviceID, ErrorCode string }
	}
	r.json(t, &res)
	if r.status != 400 || res.IsSuccessful || len(res.Errors) != 1 || res.Errors[0].DeviceID != "b1" || res.Errors[0].ErrorCode != "DeviceAlreadyExists" {
		t.Fatalf("partial failure: %d %s", r.status, r.body)
	}
	if tw, err := h.Twin("b2", ""); err != nil || tw.Tags["site"] != "x" {
		t.Fatalf("updateTwin: %v %v", tw.Tags, err)
	}
	if r := s.do("POST", "/devices", `[{"id":"b1","importMode":"Delete"},{"id":"b2","importMode":"deleteIfMatchETag","eTag":"\"nope\""},{"id":"b3","importMode":"delete"}]`); r.status != 400 {
		t.Fatalf("delete: %d %s", r.status, r.body)
	}
	if _, err := h.Twin("b1", ""); !errors.Is(err, ErrNotFound) {
		t.Fatal("b1 not deleted")
	}
	if _, err := h.Twin("b2", ""); err != nil {
		t.Fatal("b2 deleted despite a stale eTag")
	}
	if r := s.do("POST", "/devices", `[]`); r.status != 400 {
		t.Fatalf("empty bulk: %d", r.status)
	}
	if r := s.do("POST", "/devices", `[{"id":"z","importMode":"explode"}]`); r.status != 400 || !strings.Contains(string(r.body), "importMode") {
		t.Fatalf("bad mode: %d %s", r.status, r.body)
	}
	if r := newSvc(t, h, "registryRead").do("POST", "/devices", `[{"id":"r","importMode":"create"}]`); r.status != 401 {
		t.Fatalf("bulk with read rights: %d", r.status)
	}
}

// TestRESTBulkRules covers the documented rules of the bulk registry
// operation beyond the happy path: "update" never creates, a device is
// named at most once, at most 100 per call; and the module list answers
// at ".../modules/" as well.
func TestRESTBulkRules(t *testing.T) {
	h := startHub(t, Options{})
	s := newSvc(t, h, "iothubowner")
	// update: "If the device does not exist, an error is written."
	r := s.do("POST", "/devices", `[{"id":"ghost","importMode":"update","status":"disabled"}]`)
	if r.status != 400 || !strings.Contains(string(r.body), `"errorCode":"DeviceNotFound"`) {
		t.Fatalf("update of a missing device: %d %s", r.status, r.body)
	}
	if _, err := h.Twin("ghost", ""); !errors.Is(err, ErrNotFound) {
		t.Fatal("bulk update created a missing device")
	}
	// update of an existing device ignores its etag and keeps its keys.
	cs, _ := h.CreateDevice("u1")
	if r := s.do("POST", "/devices", `[{"id":"u1","importMode":"update","status":"disabled"}]`); r.status != 200 {
		t.Fatalf("update: %d %s", r.status, r.body)
	}
	id, err := h.getIdentity("u1", "")
	if err != nil || id.Status != "disabled" || id.Authentication.SymmetricKey.PrimaryKey != base64.StdEncoding.EncodeToString(cs.SharedAccessKey) {
		t.Fatalf("after update: %+v %v", id, err)
	}
	// A device named twice is refused as a whole, before anything applies.
	r = s.do("POST", "/devices", `[{"id":"dup","importMode":"create"},{"id":"u2","importMode":"create"},{"id":"dup","importMode":"delete"}]`)
	if r.status != 400 || r.errorCode() != "ArgumentInvalid" {
		t.Fatalf("duplicate id: %d %s", r.status, r.body)
	}
	for _, d := range []string{"dup", "u2"} {
		if _, err := h.Twin(d, ""); !errors.Is(err, ErrNotFound) {
			t.Fatalf("%s created by a refused call", d)
		}
	}
	// At most 100 devices per call.
	var b strings.Builder
	b.WriteString("[")
	for i := range maxBulk + 1 {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, `{"id":"n%d","importMode":"create"}`, i)
	}
	b.WriteString("]")
	if r := s.do("POST", "/devices", b.String()); r.status != 400 || r.errorCode() != "ArgumentInvalid" {
		t.Fatalf("101 devices: %d %s", r.status, r.body)
	}
	if _, err := h.Twin("n0", ""); !errors.Is(err, ErrNotFound) {
		t.Fatal("n0 created by a refused call")
	}
	// The module list, with and without the trailing slash.
	if r := s.do("PUT", "/devices/u1/modules/m1", `{}`); r.status != 200 {
		t.Fatalf("module: %d %s", r.status, r.body)
	}
	for _, p := range []string{"/devices/u1/modules", "/devices/u1/modules/"} {
		var list []Identity
		r := s.do("GET", p, nil)
		r.json(t, &list)
		if r.status != 200 || len(list) != 1 || list[0].ModuleID != "m1" {
			t.Fatalf("GET %s: %d %s", p, r.status, r.body)
		}
	}
}
