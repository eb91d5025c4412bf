package hub

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twinlet/twinlet/internal/testutil"
)

func TestQueryEndpoint(t *testing.T) {
	h := startHub(t, Options{})
	s := newSvc(t, h, "service")
	for i := 0; i < 7; i++ {
		id := fmt.Sprintf("q%d", i)
		h.CreateDevice(id)
		env := "test"
		if i%2 == 1 {
			env = "prod"
		}
		s.do("PATCH", "/twins/"+id, fmt.Sprintf(`{"tags":{"env":%q,"n":%d}}`, env, i))
	}
	h.CreateModule("q0", "twinlet")

	// Pagination: 4 test devices in pages of 3.
	var all []map[string]any
	cont := ""
	pages := 0
	for {
		hdr := []string{"x-ms-max-item-count", "3"}
		if cont != "" {
			hdr = append(hdr, "x-ms-continuation", cont)
		}
		r := s.do("POST", "/devices/query", `{"query":"SELECT * FROM devices WHERE tags.env = 'test'"}`, hdr...)
		if r.status != 200 || r.header.Get("x-ms-item-type") != "Twin" {
			t.Fatalf("query: %d %q %.300s", r.status, r.header.Get("x-ms-item-type"), r.body)
		}
		var page []map[string]any
		r.json(t, &page)
		all = append(all, page...)
		pages++
		if cont = r.header.Get("x-ms-continuation"); cont == "" {
			break
		}
	}
	if len(all) != 4 || pages != 2 || all[0]["deviceId"] != "q0" || all[3]["deviceId"] != "q6" {
		t.Fatalf("paged result: %d rows in %d pages", len(all), pages)
	}

	r := s.do("POST", "/devices/query", `{"query":"SELECT COUNT() AS n FROM devices WHERE tags.env = 'prod'"}`)
	if r.status != 200 || strings.TrimSpace(string(r.body)) != `[{"n":3}]` {
		t.Fatalf("count: %d %s", r.status, r.body)
	}
	r = s.do("POST", "/devices/query", `{"query":"SELECT deviceId, tags.n FROM devices WHERE tags.n >= 5"}`)
	var rows []map[string]any
	r.json(t, &rows)
	if r.header.Get("x-ms-item-type") != "Raw" || len(rows) != 2 || rows[0]["deviceId"] != "q5" {
		t.Fatalf("projection: %s %s", r.header.Get("x-ms-item-type"), r.body)
	}
	r = s.do("POST", "/devices/query", `{"query":"SELECT * FROM devices.modules WHERE moduleId = 'twinlet'"}`)
	r.json(t, &rows)
	if len(rows) != 1 || rows[0]["deviceId"] != "q0" {
		t.Fatalf("modules: %s", r.body)
	}
	r = s.do("POST", "/devices/query", `{"query":"SELECT * FROM devices WHERE"}`)
	if r.status != 400 || !strings.Contains(string(r.body), "query:") {
		t.Fatalf("syntax error: %d %s", r.status, r.body)
	}
	r = s.do("POST", "/devices/query", `{"query":"SELECT * FROM devices WHERE connectionState = 'Connected'"}`)
	r.json(t, &rows)
	if len(rows) != 0 {
		t.Fatalf("connected: %s", r.body)
	}
}

func TestTelemetryAndC2D(t *testing.T) {
	h := startHub(t, Options{EventBuffer: 3})
	cs, _ := h.CreateDevice("d1")
	d := mustDial(t, h, cs)
	d.subscribe("devices/d1/messages/devicebound/#")
	d.publish("devices/d1/messages/events/", 1, []byte("one"))
	d.publish("devices/d1/messages/events/$.ct=application%2Fjson&$.ce=utf-8&k=v", 1, []byte(`{"t":2}`))
	testutil.Eventually(t, "two events", func() bool { return len(h.Events(0)) == 2 })
	ev := h.Events(1)
	if len(ev) != 1 || ev[0].Seq != 2 || ev[0].DeviceID != "d1" || ev[0].Properties["$.ct"] != "application/json" || ev[0].Properties["k"] != "v" || string(ev[0].Body) != `{"t":2}` {
		t.Fatalf("events: %+v", ev)
	}
	// The ring keeps the last three.
	for i := 0; i < 3; i++ {
		d.publish("devices/d1/messages/events/", 1, []byte(fmt.Sprint(i)))
	}
	testutil.Eventually(t, "five events", func() bool { ev := h.Events(0); return len(ev) == 3 && ev[2].Seq == 5 })

	// Admin endpoint long-poll.
	s := newSvc(t, h, "iothubowner")
	done := make(chan resp, 1)
	go func() { done <- s.do("GET", "/_twinhub/events?since=5&wait=10s", nil) }()
	d.publish("devices/d1/messages/events/", 1, []byte("six"))
	r := <-done
	var page struct {
		Events []Event `json:"events"`
		Last   uint64  `json:"last"`
	}
	r.json(t, &page)
	if r.status != 200 || len(page.Events) != 1 || string(page.Events[0].Body) != "six" || page.Last != 6 {
		t.Fatalf("long poll: %d %s", r.status, r.body)
	}

	// C2D, through the Go API and the admin endpoint.
	if err := h.SendC2D("d1", []byte("hello"), map[string]string{"k": "a b"}); err != nil {
		t.Fatal(err)
	}
	m := d.next("devices/d1/messages/devicebound/")
	if string(m.Payload()) != "hello" || !strings.Contains(m.Topic(), "%24.to=%2Fdevices%2Fd1%2Fmessages%2FdeviceBound") || !strings.Contains(m.Topic(), "k=a%20b") {
		t.Fatalf("c2d: %s %s", m.Topic(), m.Payload())
	}
	if r := s.do("POST", "/_twinhub/devices/d1/messages", `{"payload":"again"}`); r.status != 204 {
		t.Fatalf("admin c2d: %d %s", r.status, r.body)
	}
	if m := d.next("devices/d1/messages/devicebound/"); string(m.Payload()) != "again" {
		t.Fatalf("admin c2d payload %s", m.Payload())
	}
}

func TestFaults(t *testing.T) {
	h := startHub(t, Options{})
	cs, _ := h.CreateDevice("d1")
	cs2, _ := h.CreateDevice("d2")
	d := mustDial(t, h, cs)
	d.subscribe("$iothub/twin/res/#")
	if err := h.SetFaults(Faults{ThrottleReportedPatch: 0.5}); err != nil {
		t.Fatal(err)
	}
	var got []string
	for i := 0; i < 4; i++ {
		st, _ := d.patchReported(`{"i":1}`)
		got = append(got, st)
	}
	if strings.Join(got, ",") != "204,429,204,429" {
		t.Fatalf("throttled reported patches: %v", got)
	}
	if st, _, _ := d.twinRequest("$iothub/twin/GET/", nil); st != "200" {
		t.Fatalf("GET throttled by a patch fault: %s", st)
	}

	// Through the admin endpoint: throttle every REST call, then off.
	s := newSvc(t, h, "iothubowner")
	if r := s.do("PUT", "/_twinhub/faults", `{"throttleRest":1,"delay":"1ms"}`); r.status != 200 {
		t.Fatalf("set faults: %d %s", r.status, r.body)
	}
	if r := s.do("GET", "/twins/d1", nil); r.status != 429 || r.errorCode() != "ThrottlingException" {
		t.Fatalf("throttled REST: %d %s", r.status, r.body)
	}
	if r := s.do("PUT", "/_twinhub/faults", `{"throttleRest":2}`); r.status != 400 {
		t.Fatalf("invalid share: %d", r.status)
	}
	if r := s.do("PUT", "/_twinhub/faults", `{}`); r.status != 200 {
		t.Fatalf("clear faults: %d", r.status)
	}
	if r := s.do("GET", "/twins/d1", nil); r.status != 200 {
		t.Fatalf("after clearing: %d", r.status)
	}

	// Drop one identity, then all.
	d2 := mustDial(t, h, cs2)
	testutil.Eventually(t, "both connected", func() bool { return h.Connected("d1", "") && h.Connected("d2", "") })
	if r := s.do("POST", "/_twinhub/drop", `{"identities":["d2"]}`); !strings.Contains(string(r.body), `"dropped":1`) {
		t.Fatalf("drop d2: %s", r.body)
	}
	<-d2.lost
	if !h.Connected("d1", "") || h.Connected("d2", "") {
		t.Fatal("drop d2 dropped the wrong connections")
	}
	if n := h.DropConnections(); n != 1 {
		t.Fatalf("drop all: %d", n)
	}
	<-d.lost

	// Rejected connects.
	h.SetFaults(Faults{RejectConnects: 1})
	if _, err := dial(t, h, cs); err == nil {
		t.Fatal("connect not rejected")
	}
}

func TestPersistenceAndRestart(t *testing.T) {
	dir := t.TempDir()
	h1, err := New(Options{Dir: dir, MQTTAddr: "127.0.0.1:0", HTTPSAddr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	if err := h1.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	owner := h1.OwnerConnectionString()
	ca := h1.CAPEM()
	if h1.CAFile() != filepath.Join(dir, "ca.pem") {
		t.Fatalf("CA file %s", h1.CAFile())
	}
	cs, _ := h1.CreateDevice("d1")
	h1.CreateModule("d1", "twinlet")
	d := mustDial(t, h1, cs)
	d.subscribe("$iothub/twin/res/#")
	d.patchReported(`{"r":1}`)
	h1.UpdateTwin("d1", "", TwinPatch{Tags: map[string]any{"env": "x"}}, false, "")
	before, _ := h1.Twin("d1", "")
	mqttAddr, httpsAddr := h1.MQTTAddr(), h1.HTTPSAddr()
	if err := h1.Close(); err != nil {
		t.Fatal(err)
	}
	if entries, _ := os.ReadDir(filepath.Join(dir, "identities")); len(entries) != 2 {
		t.Fatalf("identity files: %v", entries)
	}

	// Same dir, same ports.
	h2, err := New(Options{Dir: dir, MQTTAddr: mqttAddr, HTTPSAddr: httpsAddr})
	if err != nil {
		t.Fatal(err)
	}
	if err := h2.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h2.Close() })
	if h2.OwnerConnectionString() != owner || string(h2.CAPEM()) != string(ca) {
		t.Fatal("restart changed the owner key or the CA")
	}
	after, err := h2.Twin("d1", "")
	if err != nil {
		t.Fatal(err)
	}
	if after.Etag != before.Etag || after.Version != before.Version || after.Tags["env"] != "x" ||
		after.Properties.Reported["r"] != 1.0 || after.Properties.Reported["$version"] != int64(2) || after.ConnectionState != "Disconnected" {
		t.Fatalf("twin after restart: %+v", after)
	}
	if _, err := h2.Twin("d1", "twinlet"); err != nil {
		t.Fatal(err)
	}
	// The old connection string still works, on the same address.
	d = mustDial(t, h2, cs)
	d.subscribe("$iothub/twin/res/#")
	if st, topic := d.patchReported(`{"r":2}`); st != "204" || !strings.HasSuffix(topic, "$version=3") {
		t.Fatalf("patch after restart: %s %s", st, topic)
	}
}

func selfSigned(t *testing.T, cn string) (tls.Certificate, string, string) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	s1, s256 := sha1.Sum(der), sha256.Sum256(der)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, hex.EncodeToString(s1[:]), strings.ToUpper(hex.EncodeToString(s256[:]))
}

func TestX509SelfSigned(t *testing.T) {
	h := startHub(t, Options{})
	cert, sha1hex, _ := selfSigned(t, "xdev")
	if err := h.CreateX509Device("xdev", sha1hex); err != nil {
		t.Fatal(err)
	}
	cs, _ := h.ConnectionString("xdev", "")
	if !cs.X509 {
		t.Fatalf("connection string %s", cs)
	}
	tlsWith := func(c tls.Certificate) dialOpt {
		cfg := h.TLSConfig()
		cfg.Certificates = []tls.Certificate{c}
		return withTLS(cfg)
	}
	d := mustDial(t, h, cs, tlsWith(cert))
	d.subscribe("$iothub/twin/res/#")
	d.getTwin()

	// SHA-256 thumbprints work too.
	cert2, _, sha256b := selfSigned(t, "xdev2")
	h.CreateX509Device("xdev2", sha256b)
	cs2, _ := h.ConnectionString("xdev2", "")
	mustDial(t, h, cs2, tlsWith(cert2))

	// Wrong CN, wrong thumbprint, no certificate: refused.
	other, _, _ := selfSigned(t, "someone-else")
	if _, err := dial(t, h, cs, tlsWith(other)); err == nil {
		t.Fatal("wrong certificate accepted")
	}
	wrongCN, wsha1, _ := selfSigned(t, "not-xdev")
	h.CreateX509Device("xdev3", wsha1)
	cs3, _ := h.ConnectionString("xdev3", "")
	if _, err := dial(t, h, cs3, tlsWith(wrongCN)); err == nil {
		t.Fatal("CN mismatch accepted")
	}
	if _, err := dial(t, h, cs); err == nil {
		t.Fatal("x509 device without certificate accepted")
	}
}
