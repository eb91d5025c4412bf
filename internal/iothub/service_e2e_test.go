package iothub_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/twinlet/twinlet/internal/iothub"
	"github.com/twinlet/twinlet/internal/iothub/iothubtest"
)

// These tests drive the service client against the embedded twinhub over
// real TLS on loopback.

func serviceError(t *testing.T, err error, status int, code string) *iothub.ServiceError {
	t.Helper()
	var se *iothub.ServiceError
	if !errors.As(err, &se) {
		t.Fatalf("err = %v, want *ServiceError %d %s", err, status, code)
	}
	if se.StatusCode != status || (code != "" && se.Code != code) {
		t.Fatalf("got %d %s (%v), want %d %s", se.StatusCode, se.Code, err, status, code)
	}
	return se
}

func TestServiceDevicesE2E(t *testing.T) {
	ctx := context.Background()
	h := iothubtest.StartHub(t)
	sc := iothubtest.ServiceClient(t, h, "iothubowner")

	d, err := sc.CreateDevice(ctx, iothub.Device{DeviceID: "dev-1"})
	if err != nil {
		t.Fatal(err)
	}
	if d.DeviceID != "dev-1" || d.ETag == "" || d.Status != "enabled" {
		t.Errorf("created %+v", d)
	}
	if d.Authentication == nil || d.Authentication.Type != "sas" || d.Authentication.SymmetricKey == nil {
		t.Fatalf("authentication %+v", d.Authentication)
	}
	if k, err := base64.StdEncoding.DecodeString(d.Authentication.SymmetricKey.PrimaryKey); err != nil || len(k) == 0 {
		t.Errorf("generated primary key %q: %v", d.Authentication.SymmetricKey.PrimaryKey, err)
	}

	_, err = sc.CreateDevice(ctx, iothub.Device{DeviceID: "dev-1"})
	serviceError(t, err, http.StatusConflict, "DeviceAlreadyExists")

	got, err := sc.GetDevice(ctx, "dev-1")
	if err != nil {
		t.Fatal(err)
	}
	if got.ETag != d.ETag || got.ConnectionState != "Disconnected" {
		t.Errorf("get: %+v", got)
	}

	// A stale etag is refused; the current one updates.
	stale := *got
	stale.ETag = "stale"
	stale.Status = "disabled"
	_, err = sc.UpdateDevice(ctx, stale)
	serviceError(t, err, http.StatusPreconditionFailed, "PreconditionFailed")
	got.Status = "disabled"
	upd, err := sc.UpdateDevice(ctx, *got)
	if err != nil {
		t.Fatal(err)
	}
	if upd.Status != "disabled" || upd.ETag == got.ETag {
		t.Errorf("update: status %s etag %s (was %s)", upd.Status, upd.ETag, got.ETag)
	}

	if _, err := sc.CreateDevice(ctx, iothub.Device{DeviceID: "dev.2%x@y", Capabilities: &iothub.Capabilities{IoTEdge: true}}); err != nil {
		t.Fatalf("create a device whose id needs escaping: %v", err)
	}
	list, err := sc.ListDevices(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, d := range list {
		ids = append(ids, d.DeviceID)
	}
	if strings.Join(ids, ",") != "dev.2%x@y,dev-1" && strings.Join(ids, ",") != "dev-1,dev.2%x@y" {
		t.Errorf("list = %q", ids)
	}
	if g, err := sc.GetDevice(ctx, "dev.2%x@y"); err != nil || g.Capabilities == nil || !g.Capabilities.IoTEdge {
		t.Errorf("get escaped id: %+v, %v", g, err)
	}

	err = sc.DeleteDevice(ctx, "dev-1", "stale")
	serviceError(t, err, http.StatusPreconditionFailed, "PreconditionFailed")
	if err := sc.DeleteDevice(ctx, "dev-1", upd.ETag); err != nil {
		t.Fatal(err)
	}
	_, err = sc.GetDevice(ctx, "dev-1")
	se := serviceError(t, err, http.StatusNotFound, "DeviceNotFound")
	if se.Message == "" {
		t.Error("DeviceNotFound without a message")
	}
	if !iothub.IsNotFound(err) {
		t.Error("IsNotFound = false")
	}
	if !strings.Contains(err.Error(), "get device dev-1: ") {
		t.Errorf("error does not say what failed: %v", err)
	}
}

func TestServiceModulesE2E(t *testing.T) {
	ctx := context.Background()
	h := iothubtest.StartHub(t)
	sc := iothubtest.ServiceClient(t, h, "iothubowner")

	if _, err := sc.CreateModule(ctx, iothub.Module{DeviceID: "nodev", ModuleID: "m"}); err == nil {
		t.Error("created a module on a missing device")
	} else {
		serviceError(t, err, http.StatusNotFound, "")
	}
	if _, err := sc.CreateDevice(ctx, iothub.Device{DeviceID: "d1"}); err != nil {
		t.Fatal(err)
	}
	m, err := sc.CreateModule(ctx, iothub.Module{DeviceID: "d1", ModuleID: "twinlet", ManagedBy: "ops"})
	if err != nil {
		t.Fatal(err)
	}
	if m.ModuleID != "twinlet" || m.DeviceID != "d1" || m.ETag == "" || m.Authentication == nil || m.Authentication.SymmetricKey.PrimaryKey == "" {
		t.Errorf("created %+v", m)
	}
	_, err = sc.CreateModule(ctx, iothub.Module{DeviceID: "d1", ModuleID: "twinlet"})
	serviceError(t, err, http.StatusConflict, "ModuleAlreadyExistsOnDevice")
	if _, err := sc.CreateModule(ctx, iothub.Module{DeviceID: "d1", ModuleID: "other"}); err != nil {
		t.Fatal(err)
	}
	ms, err := sc.ListModules(ctx, "d1")
	if err != nil || len(ms) != 2 {
		t.Fatalf("list modules: %d, %v", len(ms), err)
	}
	got, err := sc.GetModule(ctx, "d1", "twinlet")
	if err != nil || got.ManagedBy != "ops" {
		t.Fatalf("get module: %+v, %v", got, err)
	}
	got.ManagedBy = "twinlet"
	if _, err := sc.UpdateModule(ctx, *got); err != nil {
		t.Fatal(err)
	}
	if err := sc.DeleteModule(ctx, "d1", "twinlet", ""); err != nil {
		t.Fatal(err)
	}
	_, err = sc.GetModule(ctx, "d1", "twinlet")
	serviceError(t, err, http.StatusNotFound, "ModuleNotFound")
}

func TestServiceTwinsE2E(t *testing.T) {
	ctx := context.Background()
	h := iothubtest.StartHub(t)
	sc := iothubtest.ServiceClient(t, h, "iothubowner")
	if _, err := sc.CreateDevice(ctx, iothub.Device{DeviceID: "d1"}); err != nil {
		t.Fatal(err)
	}

	tw, err := sc.GetTwin(ctx, "d1")
	if err != nil {
		t.Fatal(err)
	}
	if tw.DeviceID != "d1" || tw.ETag == "" || tw.Properties.Desired["$version"] == nil {
		t.Fatalf("twin %+v", tw)
	}

	p1, err := sc.PatchTwin(ctx, "d1", iothub.TwinPatch{
		Tags:    map[string]any{"env": "prod", "site": "ams"},
		Desired: map[string]any{"hostname": map[string]any{"name": "kiosk-1"}, "old": 1},
	}, tw.ETag)
	if err != nil {
		t.Fatal(err)
	}
	if p1.Tags["env"] != "prod" || p1.ETag == tw.ETag {
		t.Errorf("patched twin tags %v etag %s", p1.Tags, p1.ETag)
	}

	// The old etag no longer matches.
	_, err = sc.PatchTwin(ctx, "d1", iothub.TwinPatch{Tags: map[string]any{"env": "test"}}, tw.ETag)
	serviceError(t, err, http.StatusPreconditionFailed, "PreconditionFailed")

	// null deletes; objects merge.
	p2, err := sc.PatchTwin(ctx, "d1", iothub.TwinPatch{Desired: map[string]any{"old": nil, "hostname": map[string]any{"domain": "lan"}}}, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := p2.Properties.Desired["old"]; ok {
		t.Error("null did not delete desired.old")
	}
	host, _ := p2.Properties.Desired["hostname"].(map[string]any)
	if host["name"] != "kiosk-1" || host["domain"] != "lan" {
		t.Errorf("desired.hostname = %v", host)
	}
	if v1, v2 := p1.Properties.Desired["$version"].(float64), p2.Properties.Desired["$version"].(float64); v2 <= v1 {
		t.Errorf("desired $version %v then %v", v1, v2)
	}

	// Replace drops what it does not name.
	r, err := sc.ReplaceTwin(ctx, "d1", iothub.TwinPatch{Tags: map[string]any{"only": true}, Desired: map[string]any{"x": 1}}, p2.ETag)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Tags) != 1 || r.Tags["only"] != true || r.Properties.Desired["hostname"] != nil || r.Properties.Desired["x"] != float64(1) {
		t.Errorf("replaced twin tags %v desired %v", r.Tags, r.Properties.Desired)
	}

	// The device's reported properties show in the service's twin.
	dev := iothubtest.Connect(t, h, "d1", "", nil)
	dev.Report([]byte(`{"hostname":{"__status":{"state":"Ready"}}}`))
	got, err := sc.GetTwin(ctx, "d1")
	if err != nil {
		t.Fatal(err)
	}
	rh, _ := got.Properties.Reported["hostname"].(map[string]any)
	st, _ := rh["__status"].(map[string]any)
	if st["state"] != "Ready" || got.ConnectionState != "Connected" {
		t.Errorf("reported %v, connection %s", got.Properties.Reported, got.ConnectionState)
	}

	// Module twins.
	if _, err := sc.CreateModule(ctx, iothub.Module{DeviceID: "d1", ModuleID: "twinlet"}); err != nil {
		t.Fatal(err)
	}
	mt, err := sc.PatchModuleTwin(ctx, "d1", "twinlet", iothub.TwinPatch{Desired: map[string]any{"a": "b"}}, "")
	if err != nil {
		t.Fatal(err)
	}
	if mt.ModuleID != "twinlet" || mt.Properties.Desired["a"] != "b" {
		t.Errorf("module twin %+v", mt)
	}
	mt2, err := sc.ReplaceModuleTwin(ctx, "d1", "twinlet", iothub.TwinPatch{Desired: map[string]any{}}, mt.ETag)
	if err != nil {
		t.Fatal(err)
	}
	if mt2.Properties.Desired["a"] != nil {
		t.Errorf("replace module twin kept %v", mt2.Properties.Desired)
	}
	if g, err := sc.GetModuleTwin(ctx, "d1", "twinlet"); err != nil || g.ModuleID != "twinlet" {
		t.Errorf("get module twin: %+v, %v", g, err)
	}
	_, err = sc.GetTwin(ctx, "nope")
	serviceError(t, err, http.StatusNotFound, "DeviceNotFound")

	// Twin limits are the hub's to enforce; the client reports them.
	_, err = sc.PatchTwin(ctx, "d1", iothub.TwinPatch{Desired: map[string]any{"bad.key": 1}}, "")
	serviceError(t, err, http.StatusBadRequest, "")
}

func TestServiceMethodsE2E(t *testing.T) {
	ctx := context.Background()
	h := iothubtest.StartHub(t)
	sc := iothubtest.ServiceClient(t, h, "iothubowner")
	for _, id := range []string{"d1", "offline", "slow"} {
		if _, err := sc.CreateDevice(ctx, iothub.Device{DeviceID: id}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := sc.CreateModule(ctx, iothub.Module{DeviceID: "d1", ModuleID: "twinlet"}); err != nil {
		t.Fatal(err)
	}
	iothubtest.Connect(t, h, "d1", "", func(method string, payload []byte) (int, []byte) {
		if method != "echo" {
			return 404, []byte(`{"error":"no such method"}`)
		}
		return 200, payload
	})
	iothubtest.Connect(t, h, "d1", "twinlet", func(method string, _ []byte) (int, []byte) {
		return 201, []byte(`{"module":"` + method + `"}`)
	})

	resp, err := sc.InvokeMethod(ctx, "d1", iothub.MethodRequest{MethodName: "echo", Payload: json.RawMessage(`{"n":1}`), ResponseTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if resp.Status != 200 || string(compact(t, resp.Payload)) != `{"n":1}` {
		t.Errorf("echo: %d %s", resp.Status, resp.Payload)
	}
	resp, err = sc.InvokeMethod(ctx, "d1", iothub.MethodRequest{MethodName: "nope"})
	if err != nil || resp.Status != 404 {
		t.Errorf("device's own 404: %+v, %v", resp, err)
	}
	resp, err = sc.InvokeModuleMethod(ctx, "d1", "twinlet", iothub.MethodRequest{MethodName: "ping"})
	if err != nil || resp.Status != 201 || string(compact(t, resp.Payload)) != `{"module":"ping"}` {
		t.Errorf("module method: %+v, %v", resp, err)
	}

	_, err = sc.InvokeMethod(ctx, "offline", iothub.MethodRequest{MethodName: "echo"})
	se := serviceError(t, err, http.StatusNotFound, "DeviceNotOnline")
	if se.ErrorCode != 0 && se.ErrorCode != 404103 {
		t.Errorf("numeric code %d", se.ErrorCode)
	}

	release := make(chan struct{})
	iothubtest.Connect(t, h, "slow", "", func(string, []byte) (int, []byte) {
		<-release
		return 200, nil
	})
	t.Cleanup(func() { close(release) })
	_, err = sc.InvokeMethod(ctx, "slow", iothub.MethodRequest{MethodName: "wait", ResponseTimeout: 5 * time.Second})
	serviceError(t, err, http.StatusGatewayTimeout, "")
}

func compact(t *testing.T, b []byte) []byte {
	t.Helper()
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("payload %q: %v", b, err)
	}
	out, _ := json.Marshal(v)
	return out
}

func TestServiceQueryE2E(t *testing.T) {
	ctx := context.Background()
	h := iothubtest.StartHub(t)
	sc := iothubtest.ServiceClient(t, h, "iothubowner")
	for i := range 7 {
		id := fmt.Sprintf("q%d", i)
		if _, err := sc.CreateDevice(ctx, iothub.Device{DeviceID: id}); err != nil {
			t.Fatal(err)
		}
		env := "test"
		if i%2 == 0 {
			env = "prod"
		}
		if _, err := sc.PatchTwin(ctx, id, iothub.TwinPatch{Tags: map[string]any{"env": env}}, ""); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := sc.CreateModule(ctx, iothub.Module{DeviceID: "q0", ModuleID: "twinlet"}); err != nil {
		t.Fatal(err)
	}

	// One page at a time: the continuation token walks the result.
	page, err := sc.QueryPage(ctx, "SELECT * FROM devices", 3, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Items) != 3 || page.Continuation == "" {
		t.Fatalf("first page: %d items, continuation %q", len(page.Items), page.Continuation)
	}
	if !strings.EqualFold(page.ItemType, "twin") {
		t.Errorf("x-ms-item-type = %q", page.ItemType)
	}

	// The iterator follows every page.
	var ids []string
	for row, err := range sc.Query(ctx, "SELECT deviceId FROM devices WHERE tags.env = 'prod'", 2) {
		if err != nil {
			t.Fatal(err)
		}
		var r struct {
			DeviceID string `json:"deviceId"`
		}
		if err := json.Unmarshal(row, &r); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, r.DeviceID)
	}
	if strings.Join(ids, ",") != "q0,q2,q4,q6" {
		t.Errorf("prod devices = %v", ids)
	}

	// Breaking out of the loop stops early without error.
	n := 0
	for _, err := range sc.Query(ctx, "SELECT * FROM devices", 1) {
		if err != nil {
			t.Fatal(err)
		}
		n++
		if n == 2 {
			break
		}
	}

	var count []map[string]any
	for row, err := range sc.Query(ctx, "SELECT COUNT() AS n FROM devices WHERE tags.env = 'test'", 0) {
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := json.Unmarshal(row, &m); err != nil {
			t.Fatal(err)
		}
		count = append(count, m)
	}
	if len(count) != 1 || count[0]["n"] != float64(3) {
		t.Errorf("count = %v", count)
	}

	var mods []string
	for row, err := range sc.Query(ctx, "SELECT * FROM devices.modules", 0) {
		if err != nil {
			t.Fatal(err)
		}
		var r struct{ DeviceID, ModuleID string }
		if err := json.Unmarshal(row, &r); err != nil {
			t.Fatal(err)
		}
		mods = append(mods, r.DeviceID+"/"+r.ModuleID)
	}
	if strings.Join(mods, ",") != "q0/twinlet" {
		t.Errorf("modules = %v", mods)
	}

	// A syntax error is a 400 that says where.
	for _, err := range sc.Query(ctx, "SELECT * FROM devices WHERE tags.env =", 0) {
		se := serviceError(t, err, http.StatusBadRequest, "")
		if !strings.Contains(se.Message, "column") {
			t.Errorf("syntax error message %q does not say where", se.Message)
		}
	}
}

func TestServiceAuthE2E(t *testing.T) {
	ctx := context.Background()
	h := iothubtest.StartHub(t)

	// registryRead can read but not write.
	ro := iothubtest.ServiceClient(t, h, "registryRead")
	if _, err := ro.ListDevices(ctx); err != nil {
		t.Fatalf("registryRead list: %v", err)
	}
	_, err := ro.CreateDevice(ctx, iothub.Device{DeviceID: "x"})
	serviceError(t, err, http.StatusUnauthorized, "")

	// A wrong key is refused, and no error repeats a key or a token.
	owner := iothubtest.Owner(t, h)
	bad := owner
	bad.SharedAccessKey = []byte("not the key at all, but 32 bytes")
	c, err := iothub.NewServiceClient(bad, iothub.WithRootCAs(h.CertPool()), iothub.WithServiceAddr(h.HTTPSAddr()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.GetDevice(ctx, "x")
	serviceError(t, err, http.StatusUnauthorized, "")
	for _, secret := range []string{base64.StdEncoding.EncodeToString(bad.SharedAccessKey), base64.StdEncoding.EncodeToString(owner.SharedAccessKey), "SharedAccessSignature", "sig="} {
		if strings.Contains(err.Error(), secret) {
			t.Errorf("error %q contains %q", err, secret)
		}
	}

	// TLS is always verified: without the hub's CA the call fails.
	untrusting, err := iothub.NewServiceClient(owner, iothub.WithServiceAddr(h.HTTPSAddr()))
	if err != nil {
		t.Fatal(err)
	}
	defer untrusting.Close()
	if _, err := untrusting.ListDevices(ctx); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("call without the hub's CA: %v, want a certificate error", err)
	}
}
