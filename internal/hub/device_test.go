package hub

import (
	"context"
	"encoding/json"
	"errors"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/twinlet/twinlet/internal/iothub"
	"github.com/twinlet/twinlet/internal/testutil"
)

func TestDeviceTwinFlow(t *testing.T) {
	h := startHub(t, Options{})
	cs, err := h.CreateDevice("d1")
	if err != nil {
		t.Fatal(err)
	}
	d := mustDial(t, h, cs)
	testutil.Eventually(t, "connected", func() bool { return h.Connected("d1", "") })
	d.subscribe("$iothub/twin/res/#", "$iothub/twin/PATCH/properties/desired/#")

	tw := d.getTwin()
	if _, ok := tw["tags"]; ok {
		t.Fatal("device GET shows tags")
	}
	desired := tw["desired"].(map[string]any)
	if desired["$version"] != 1.0 {
		t.Fatalf("desired $version: %v", tw)
	}

	st, topic := d.patchReported(`{"a":1,"b":{"c":2,"d":"x"}}`)
	if st != "204" || !strings.HasSuffix(topic, "&$version=2") {
		t.Fatalf("patch: %s %s", st, topic)
	}
	st, topic = d.patchReported(`{"b":{"c":null,"e":true}}`)
	if st != "204" || !strings.HasSuffix(topic, "&$version=3") {
		t.Fatalf("patch: %s %s", st, topic)
	}
	rep := d.getTwin()["reported"].(map[string]any)
	b := rep["b"].(map[string]any)
	if rep["a"] != 1.0 || b["d"] != "x" || b["e"] != true || b["c"] != nil || rep["$version"] != 3.0 {
		t.Fatalf("reported after merge: %v", rep)
	}

	// Service side: full twin with metadata.
	s := newSvc(t, h, "iothubowner")
	r := s.do("GET", "/twins/d1", nil)
	if r.status != 200 {
		t.Fatalf("GET twin: %d %s", r.status, r.body)
	}
	var twin Twin
	r.json(t, &twin)
	if twin.DeviceID != "d1" || twin.ConnectionState != "Connected" || twin.Status != "enabled" || twin.Etag == "" || twin.DeviceEtag == "" {
		t.Fatalf("twin: %s", r.body)
	}
	meta := twin.Properties.Reported["$metadata"].(map[string]any)
	if _, ok := meta["$lastUpdated"].(string); !ok {
		t.Fatalf("reported $metadata: %v", meta)
	}
	if bm := meta["b"].(map[string]any); bm["$lastUpdated"] == nil || bm["e"] == nil || bm["c"] != nil {
		t.Fatalf("reported $metadata.b: %v", bm)
	}
	if r.header.Get("ETag") != `"`+twin.Etag+`"` {
		t.Fatalf("ETag header %q, twin etag %q", r.header.Get("ETag"), twin.Etag)
	}

	// A desired patch reaches the device with its $version.
	r = s.do("PATCH", "/twins/d1", `{"tags":{"env":"test"},"properties":{"desired":{"hostname":{"name":"k1"}}}}`)
	if r.status != 200 {
		t.Fatalf("PATCH twin: %d %s", r.status, r.body)
	}
	m := d.next("$iothub/twin/PATCH/properties/desired/")
	if m.Topic() != "$iothub/twin/PATCH/properties/desired/?$version=2" {
		t.Fatalf("notification topic %s", m.Topic())
	}
	var delta map[string]any
	_ = json.Unmarshal(m.Payload(), &delta)
	if delta["$version"] != 2.0 || delta["hostname"].(map[string]any)["name"] != "k1" {
		t.Fatalf("notification %s", m.Payload())
	}
	// Tags-only patches do not notify; a deletion does, with null.
	s.do("PATCH", "/twins/d1", `{"tags":{"env":"prod"}}`)
	s.do("PATCH", "/twins/d1", `{"properties":{"desired":{"hostname":null}}}`)
	m = d.next("$iothub/twin/PATCH/properties/desired/")
	if m.Topic() != "$iothub/twin/PATCH/properties/desired/?$version=3" || !strings.Contains(string(m.Payload()), `"hostname":null`) {
		t.Fatalf("deletion notification %s %s", m.Topic(), m.Payload())
	}
	// PUT replaces desired wholesale and sends it whole.
	s.do("PUT", "/twins/d1", `{"tags":{},"properties":{"desired":{"x":1}}}`)
	m = d.next("$iothub/twin/PATCH/properties/desired/")
	if m.Topic() != "$iothub/twin/PATCH/properties/desired/?$version=4" || string(m.Payload()) != `{"$version":4,"x":1}` {
		t.Fatalf("replace notification %s %s", m.Topic(), m.Payload())
	}
	got, _ := h.Twin("d1", "")
	if len(got.Tags) != 0 || got.Properties.Desired["x"] != 1.0 || got.Properties.Desired["$version"] != int64(4) {
		t.Fatalf("after PUT: %+v", got)
	}
}

// TestTwinIsolation: reply topics are the same strings for every device;
// no device may see another's replies or notifications.
func TestTwinIsolation(t *testing.T) {
	h := startHub(t, Options{})
	cs1, _ := h.CreateDevice("d1")
	cs2, _ := h.CreateDevice("d2")
	d1, d2 := mustDial(t, h, cs1), mustDial(t, h, cs2)
	for _, d := range []*device{d1, d2} {
		d.subscribe("$iothub/twin/res/#", "$iothub/twin/PATCH/properties/desired/#", "$iothub/methods/POST/#")
	}
	if st, _ := d1.patchReported(`{"secret":"d1-only"}`); st != "204" {
		t.Fatal(st)
	}
	d1.getTwin()
	if _, err := h.UpdateTwin("d1", "", TwinPatch{Properties: &struct {
		Desired map[string]any `json:"desired,omitempty"`
	}{map[string]any{"k": "for-d1"}}}, false, ""); err != nil {
		t.Fatal(err)
	}
	d1.next("$iothub/twin/PATCH/properties/desired/")
	// d2 does its own round trip; everything before it would have arrived.
	if tw := d2.getTwin(); strings.Contains(mustJSON(tw), "d1-only") || strings.Contains(mustJSON(tw), "for-d1") {
		t.Fatalf("d2 sees d1's twin: %v", tw)
	}
	for len(d2.msgs) > 0 {
		m := <-d2.msgs
		if strings.Contains(string(m.Payload()), "d1") {
			t.Fatalf("d2 received %s %s", m.Topic(), m.Payload())
		}
		t.Fatalf("d2 received an unexpected message on %s", m.Topic())
	}
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func TestConnectAuth(t *testing.T) {
	h := startHub(t, Options{})
	cs, _ := h.CreateDevice("d1")
	cs2, _ := h.CreateDevice("d2")
	mcs, _ := h.CreateModule("d1", "twinlet")
	h.CreateDevice("off")
	h.SetDeviceStatus("off", false)
	offCS, _ := h.ConnectionString("off", "")
	devPolicy, _ := h.PolicyConnectionString("device")
	svcPolicy, _ := h.PolicyConnectionString("service")
	hour := time.Now().Add(time.Hour)
	res := iothub.DeviceResource(h.Hostname(), "d1", "")
	lowerSR := strings.ReplaceAll(url.QueryEscape(res), "%2F", "%2f")

	cases := []struct {
		name string
		cs   iothub.ConnectionString
		opts []dialOpt
		ok   bool
	}{
		{"device key", cs, nil, true},
		{"module key", mcs, nil, true},
		{"hub-scoped device token", cs, []dialOpt{withPassword(iothub.NewSASToken(h.Hostname(), cs.SharedAccessKey, "", hour))}, true},
		{"lower-case escapes", cs, []dialOpt{withPassword(lowerToken(lowerSR, cs.SharedAccessKey, hour))}, true},
		{"device policy", cs, []dialOpt{withPassword(iothub.NewSASToken(res, devPolicy.SharedAccessKey, "device", hour))}, true},
		{"username without ?", cs, []dialOpt{withUsername(h.Hostname() + "/d1/api-version=2020-09-30")}, true},
		{"username with SDK query", cs, []dialOpt{withUsername(h.Hostname() + "/d1/?api-version=2020-09-30&DeviceClientType=c%2F1.0&model-id=dtmi%3Ax%3By%3B1")}, true},
		{"service policy cannot connect", cs, []dialOpt{withPassword(iothub.NewSASToken(res, svcPolicy.SharedAccessKey, "service", hour))}, false},
		{"another device's key", cs, []dialOpt{withPassword(iothub.NewSASToken(res, cs2.SharedAccessKey, "", hour))}, false},
		{"another device's token", cs, []dialOpt{withPassword(mustToken(cs2, hour))}, false},
		{"expired", cs, []dialOpt{withPassword(mustToken(cs, time.Now().Add(-time.Second)))}, false},
		{"garbage password", cs, []dialOpt{withPassword("hello")}, false},
		{"no password", cs, []dialOpt{withPassword("")}, false},
		{"username names another device", cs, []dialOpt{withUsername(h.Hostname() + "/d2/?api-version=2021-04-12")}, false},
		{"unknown device", iothub.ConnectionString{HostName: h.Hostname(), DeviceID: "nobody", SharedAccessKey: cs.SharedAccessKey}, nil, false},
		{"disabled device", offCS, nil, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d, err := dial(t, h, c.cs, c.opts...)
			if c.ok {
				if err != nil {
					t.Fatalf("want connected, got %v", err)
				}
				d.c.Disconnect(0)
				return
			}
			if !errors.Is(err, packets.ErrorRefusedNotAuthorised) {
				t.Fatalf("want CONNACK 5 (not authorised), got %v", err)
			}
		})
	}
}

func mustToken(cs iothub.ConnectionString, exp time.Time) string {
	tok, err := cs.SASToken(exp)
	if err != nil {
		panic(err)
	}
	return tok
}

// lowerToken signs over a lower-case-escaped sr, as the C# SDK does.
func lowerToken(rawSR string, key []byte, exp time.Time) string {
	se := strconv.FormatInt(exp.Unix(), 10)
	return "SharedAccessSignature sr=" + rawSR + "&sig=" + url.QueryEscape(signForTest(key, rawSR, se)) + "&se=" + se
}

func TestTokenExpiryDisconnects(t *testing.T) {
	h := startHub(t, Options{})
	cs, _ := h.CreateDevice("d1")
	d := mustDial(t, h, cs, withPassword(mustToken(cs, time.Now().Add(2*time.Second))))
	testutil.Eventually(t, "connected", func() bool { return h.Connected("d1", "") })
	select {
	case <-d.lost:
	case <-time.After(10 * time.Second):
		t.Fatal("connection not closed at token expiry")
	}
	if h.Connected("d1", "") {
		t.Fatal("hub still counts the device as connected")
	}
	// A fresh token connects again.
	mustDial(t, h, cs)
}

func TestSecondConnectionDropsFirst(t *testing.T) {
	h := startHub(t, Options{})
	cs, _ := h.CreateDevice("d1")
	first := mustDial(t, h, cs)
	second := mustDial(t, h, cs)
	select {
	case <-first.lost:
	case <-time.After(10 * time.Second):
		t.Fatal("first connection not dropped")
	}
	second.subscribe("$iothub/twin/res/#")
	second.getTwin()
	if !h.Connected("d1", "") {
		t.Fatal("second connection not registered")
	}
}

func TestTopicRules(t *testing.T) {
	h := startHub(t, Options{})
	cs, _ := h.CreateDevice("d1")
	d := mustDial(t, h, cs)
	got := d.subscribe("$iothub/twin/res/#", "devices/d2/messages/devicebound/#", "some/topic", "$iothub/twin/PATCH/properties/desired/#")
	if got[0] != 1 || got[1] != 0x80 || got[2] != 0x80 || got[3] != 1 {
		t.Fatalf("suback codes %v", got)
	}
	// QoS 2 is granted as 1.
	if got := d.subscribe("$iothub/methods/POST/#"); got[0] > 1 {
		t.Fatalf("granted %v", got)
	}
	got = d.subscribe("devices/d1/messages/devicebound/#")
	if got[0] != 1 {
		t.Fatalf("own devicebound: %v", got)
	}
	// Four subscriptions so far; a fifth distinct is allowed? There are only
	// four documented filters for a device, so fill with a re-subscribe.
	if got := d.subscribe("$iothub/twin/res/#"); got[0] != 1 {
		t.Fatalf("re-subscribe: %v", got)
	}

	t.Run("QoS 2 publish closes", func(t *testing.T) {
		d := mustDial(t, h, cs)
		d.c.Publish("devices/d1/messages/events/", 2, false, "x")
		select {
		case <-d.lost:
		case <-time.After(10 * time.Second):
			t.Fatal("not closed")
		}
	})
	t.Run("undocumented topic closes", func(t *testing.T) {
		d := mustDial(t, h, cs)
		d.c.Publish("devices/d2/messages/events/", 1, false, "x")
		select {
		case <-d.lost:
		case <-time.After(10 * time.Second):
			t.Fatal("not closed")
		}
	})
}

func TestSubscriptionLimit(t *testing.T) {
	h := startHub(t, Options{})
	cs, _ := h.CreateDevice("d1")
	d := mustDial(t, h, cs)
	got := d.subscribe("$iothub/twin/res/#", "$iothub/twin/PATCH/properties/desired/#", "$iothub/methods/POST/a/#",
		"devices/d1/messages/devicebound/#", "$iothub/methods/POST/b/#")
	if string(got) != "\x01\x01\x01\x01\x01" {
		t.Fatalf("suback codes %v", got)
	}
	if got := d.subscribe("$iothub/methods/POST/c/#"); got[0] != 0x80 {
		t.Fatalf("sixth: %v", got)
	}
	// Subscribing again to a held filter is fine; a sixth is not.
	if got := d.subscribe("$iothub/twin/res/#"); got[0] != 1 {
		t.Fatalf("re-subscribe: %v", got)
	}
	if got := d.subscribe("$iothub/methods/POST/#"); got[0] != 0x80 {
		t.Fatalf("sixth: %v", got)
	}
	d.c.Unsubscribe("$iothub/methods/POST/b/#").Wait()
	if got := d.subscribe("$iothub/methods/POST/#"); got[0] != 1 {
		t.Fatalf("after unsubscribe: %v", got)
	}
	// Per-method subscriptions receive their method.
	go func() {
		m := d.next("$iothub/methods/POST/a/")
		d.publish("$iothub/methods/res/200/?$rid="+rid(m.Topic()), 1, []byte(`1`))
	}()
	res, err := h.InvokeMethod(context.Background(), "d1", "", "a", nil, 10*time.Second, 0)
	if err != nil || res.Status != 200 {
		t.Fatalf("per-method subscription: %+v %v", res, err)
	}
}

func TestTwinLimits(t *testing.T) {
	h := startHub(t, Options{})
	cs, _ := h.CreateDevice("d1")
	d := mustDial(t, h, cs)
	d.subscribe("$iothub/twin/res/#")
	// The section root plus ten nested objects is the deepest allowed.
	deep := strings.Repeat(`{"a":`, 12) + "1" + strings.Repeat("}", 12)
	ok10 := strings.Repeat(`{"a":`, 11) + "1" + strings.Repeat("}", 11)
	big := map[string]string{}
	for i := 0; i < 40; i++ {
		big["k"+strconv.Itoa(i)] = strings.Repeat("x", 1000)
	}
	bigJSON, _ := json.Marshal(big)
	cases := []struct {
		name, patch, want string
	}{
		{"depth 10", ok10, "204"},
		{"depth 11", deep, "400"},
		{"4 KB string", `{"s":"` + strings.Repeat("x", 4096) + `"}`, "204"},
		{"string over 4 KB", `{"s":"` + strings.Repeat("x", 4097) + `"}`, "400"},
		{"dot in key", `{"a.b":1}`, "400"},
		{"dollar in key", `{"a":{"$b":1}}`, "400"},
		{"space in key", `{"a b":1}`, "400"},
		{"over 32 KB", string(bigJSON), "400"},
		{"not JSON", `{`, "400"},
		{"not an object", `[1]`, "400"},
		{"integer out of range", `{"n":4503599627370496}`, "400"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if st, _ := d.patchReported(c.patch); st != c.want {
				t.Fatalf("status %s, want %s", st, c.want)
			}
		})
	}
	// The section total counts: 30 KB in two patches is fine, a third 8 KB
	// is not.
	chunk := func(p string) string {
		m := map[string]string{}
		for i := 0; i < 15; i++ {
			m[p+strconv.Itoa(i)] = strings.Repeat("y", 1000)
		}
		b, _ := json.Marshal(m)
		return string(b)
	}
	d.patchReported(`{"s":null,"a":null}`)
	if st, _ := d.patchReported(chunk("p")); st != "204" {
		t.Fatal(st)
	}
	if st, _ := d.patchReported(chunk("q")); st != "204" {
		t.Fatal(st)
	}
	if st, _ := d.patchReported(chunk("r")); st != "400" {
		t.Fatalf("section over 32 KB in total: %s", st)
	}
	// Desired over REST: 400 ArgumentInvalid.
	s := newSvc(t, h, "iothubowner")
	r := s.do("PATCH", "/twins/d1", `{"properties":{"desired":`+deep+`}}`)
	if r.status != 400 || r.errorCode() != "ArgumentInvalid" {
		t.Fatalf("deep desired: %d %.300s", r.status, r.body)
	}
}
