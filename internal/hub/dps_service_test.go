package hub

import (
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
)

func TestDPSServiceEnrollments(t *testing.T) {
	h := startDPS(t, Options{})
	c := newDPSClient(t, h, h.DPSHostname(), nil)
	tok := serviceToken(h)
	sym := map[string]any{"type": "symmetricKey"}

	// create, then a stale etag is refused, the current one accepted
	r := c.do(http.MethodPut, "/enrollments/e1", tok, map[string]any{"registrationId": "e1", "attestation": sym})
	if r.status != 200 {
		t.Fatalf("create: %d %s", r.status, r.raw)
	}
	etag := r.body["etag"].(string)
	upd := map[string]any{"registrationId": "e1", "attestation": r.body["attestation"], "provisioningStatus": "disabled"}
	if r := c.do(http.MethodPut, "/enrollments/e1", tok, upd, "If-Match", `"stale"`); r.status != 412 {
		t.Fatalf("stale etag: %d %s", r.status, r.raw)
	}
	r2 := c.do(http.MethodPut, "/enrollments/e1", tok, upd, "If-Match", `"`+etag+`"`)
	if r2.status != 200 || r2.body["provisioningStatus"] != "disabled" || r2.body["etag"] == etag {
		t.Fatalf("update: %d %s", r2.status, r2.raw)
	}
	if r2.body["attestation"].(map[string]any)["symmetricKey"].(map[string]any)["primaryKey"] != r.body["attestation"].(map[string]any)["symmetricKey"].(map[string]any)["primaryKey"] {
		t.Error("update changed the given key")
	}
	if r := c.do(http.MethodPost, "/enrollments/e1/attestationmechanism", tok, nil); r.status != 200 || r.body["type"] != "symmetricKey" {
		t.Errorf("attestation mechanism: %d %s", r.status, r.raw)
	}
	// invalid enrollments say what is wrong
	for name, body := range map[string]map[string]any{
		"no attestation":   {"registrationId": "e2"},
		"bad key":          {"attestation": map[string]any{"type": "symmetricKey", "symmetricKey": map[string]any{"primaryKey": "short"}}},
		"bad policy":       {"attestation": sym, "allocationPolicy": "random"},
		"bad status":       {"attestation": sym, "provisioningStatus": "maybe"},
		"twin with a $key": {"attestation": sym, "initialTwin": map[string]any{"tags": map[string]any{"$x": 1}}},
	} {
		if r := c.do(http.MethodPut, "/enrollments/e2", tok, body); r.status != 400 || r.body["message"] == "" {
			t.Errorf("%s: %d %s", name, r.status, r.raw)
		}
	}
	// bulk create of ten, one of which exists
	var batch []map[string]any
	for i := 0; i < 10; i++ {
		batch = append(batch, map[string]any{"registrationId": fmt.Sprintf("b%d", i), "attestation": sym})
	}
	batch[9]["registrationId"] = "e1"
	b := c.do(http.MethodPost, "/enrollments", tok, map[string]any{"mode": "create", "enrollments": batch})
	if b.status != 200 || b.body["isSuccessful"] != false {
		t.Fatalf("bulk: %d %s", b.status, b.raw)
	}
	if errs := b.body["errors"].([]any); len(errs) != 1 || errs[0].(map[string]any)["registrationId"] != "e1" {
		t.Fatalf("bulk errors %v", errs)
	}
	// query in pages of 4 through the continuation token
	var all []string
	cont := ""
	pages := 0
	for {
		hdr := []string{"x-ms-max-item-count", "4"}
		if cont != "" {
			hdr = append(hdr, "x-ms-continuation", cont)
		}
		q := c.do(http.MethodPost, "/enrollments/query", tok, map[string]any{"query": "*"}, hdr...)
		if q.status != 200 || q.header.Get("x-ms-item-type") != "Enrollment" {
			t.Fatalf("query: %d %s", q.status, q.raw)
		}
		var items []map[string]any
		_ = json.Unmarshal(q.raw, &items)
		for _, it := range items {
			all = append(all, it["registrationId"].(string))
		}
		pages++
		if cont = q.header.Get("x-ms-continuation"); cont == "" {
			break
		}
	}
	if len(all) != 10 || pages != 3 {
		t.Fatalf("query returned %d items in %d pages: %v", len(all), pages, all)
	}
	// bulk delete, then delete with a stale etag, then delete
	del := c.do(http.MethodPost, "/enrollments", tok, map[string]any{"mode": "delete", "enrollments": batch[:9]})
	if del.body["isSuccessful"] != true {
		t.Fatalf("bulk delete: %s", del.raw)
	}
	if r := c.do(http.MethodDelete, "/enrollments/e1", tok, nil, "If-Match", "stale"); r.status != 412 {
		t.Errorf("delete stale: %d", r.status)
	}
	if r := c.do(http.MethodDelete, "/enrollments/e1", tok, nil); r.status != 204 {
		t.Errorf("delete: %d %s", r.status, r.raw)
	}
	if r := c.do(http.MethodGet, "/enrollments/e1", tok, nil); r.status != 404 {
		t.Errorf("deleted: %d %s", r.status, r.raw)
	}

	// groups: create, get, query, delete
	g := c.do(http.MethodPut, "/enrollmentGroups/g1", tok, map[string]any{"enrollmentGroupId": "g1", "attestation": sym})
	if g.status != 200 || g.body["attestation"].(map[string]any)["symmetricKey"].(map[string]any)["secondaryKey"] == "" {
		t.Fatalf("group: %d %s", g.status, g.raw)
	}
	if r := c.do(http.MethodPut, "/enrollmentGroups/g2", tok, map[string]any{"attestation": map[string]any{"type": "tpm", "tpm": map[string]any{"endorsementKey": "AAAA"}}}); r.status != 400 {
		t.Errorf("TPM group accepted: %d", r.status)
	}
	if q := c.do(http.MethodPost, "/enrollmentGroups/query", tok, map[string]any{"query": "*"}); q.status != 200 || q.header.Get("x-ms-item-type") != "EnrollmentGroup" {
		t.Errorf("group query: %d %s", q.status, q.raw)
	}
	if r := c.do(http.MethodDelete, "/enrollmentGroups/g1", tok, nil); r.status != 204 {
		t.Errorf("group delete: %d", r.status)
	}
	// unauthorized: no token, a device token, a hub token
	for name, auth := range map[string]string{"none": "", "device": deviceToken(t, h, "e1", "AAAAAAAAAAAAAAAAAAAAAA=="), "hub": h.OwnerConnectionString()} {
		if r := c.do(http.MethodGet, "/enrollments/e1", auth, nil); r.status != 401 {
			t.Errorf("%s token: %d", name, r.status)
		}
	}
	// the counters are served at /_twinhub/stats
	s := c.do(http.MethodGet, "/_twinhub/stats", tok, nil)
	if s.status != 200 || s.body["requests"].(map[string]any)["service"].(float64) < 10 {
		t.Errorf("stats: %d %s", s.status, s.raw)
	}
}

func TestDPSRegistrationRecords(t *testing.T) {
	h := startDPS(t, Options{DPSRetryAfter: -1})
	gk := groupKey(t, h, EnrollmentGroup{EnrollmentGroupID: "g", EnrollmentSpec: EnrollmentSpec{Attestation: Attestation{Type: AttestationSymmetricKey}}})
	c := newDPSClient(t, h, h.DPSHostname(), nil)
	for i := 0; i < 3; i++ {
		registerInGroup(t, c, h, gk, fmt.Sprintf("r%d", i))
	}
	tok := serviceToken(h)
	r := c.do(http.MethodGet, "/registrations/r1", tok, nil)
	if r.status != 200 || r.body["deviceId"] != "r1" {
		t.Fatalf("get: %d %s", r.status, r.raw)
	}
	if d := c.do(http.MethodDelete, "/registrations/r1", tok, nil, "If-Match", "nope"); d.status != 412 {
		t.Errorf("stale delete: %d", d.status)
	}
	if d := c.do(http.MethodDelete, "/registrations/r1", tok, nil); d.status != 204 {
		t.Errorf("delete: %d %s", d.status, d.raw)
	}
	q := c.do(http.MethodPost, "/registrations/g/query", tok, nil, "x-ms-max-item-count", "1")
	var items []map[string]any
	_ = json.Unmarshal(q.raw, &items)
	if q.status != 200 || len(items) != 1 || q.header.Get("x-ms-continuation") == "" {
		t.Fatalf("query: %d %s %v", q.status, q.raw, q.header)
	}
}

func TestDPSPersists(t *testing.T) {
	dir := t.TempDir()
	h, err := New(Options{Dir: dir, DPSHostname: "dps.localhost", MQTTAddr: "127.0.0.1:0", HTTPSAddr: "127.0.0.1:0", LinkedHubs: []LinkedHub{{Hostname: "localhost"}, {Hostname: "other.localhost"}}})
	if err != nil {
		t.Fatal(err)
	}
	scope, cs := h.IDScope(), h.DPSConnectionString().String()
	if _, err := h.PutEnrollment(Enrollment{RegistrationID: "p1", EnrollmentSpec: EnrollmentSpec{Attestation: Attestation{Type: AttestationSymmetricKey}}}, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := h.LinkedHub("other.localhost").CreateDevice("x"); err != nil {
		t.Fatal(err)
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	h2, err := New(Options{Dir: dir, DPSHostname: "dps.localhost", LinkedHubs: []LinkedHub{{Hostname: "localhost"}, {Hostname: "other.localhost"}}})
	if err != nil {
		t.Fatal(err)
	}
	defer h2.Close()
	if h2.IDScope() != scope || h2.DPSConnectionString().String() != cs {
		t.Error("scope or key changed across a restart")
	}
	if _, err := h2.dps.getEnrollment("p1"); err != nil {
		t.Error(err)
	}
	if _, err := h2.LinkedHub("other.localhost").getIdentity("x", ""); err != nil {
		t.Errorf("linked hub lost its registry: %v", err)
	}
}
