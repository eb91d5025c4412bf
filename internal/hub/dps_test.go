package hub

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/twinlet/twinlet/internal/iothub"
)

const dpsAPI = "2021-06-01"

func startDPS(t testing.TB, o Options) *Hub {
	t.Helper()
	if o.DPSHostname == "" {
		o.DPSHostname = "dps.localhost"
	}
	return startHub(t, o)
}

// dpsClient talks to the DPS host over the hub's real TLS listener, as a
// device or a back end would: SNI and Host name the DPS host.
type dpsClient struct {
	t    testing.TB
	h    *Hub
	hc   *http.Client
	host string
}

func newDPSClient(t testing.TB, h *Hub, host string, cert *tls.Certificate) *dpsClient {
	t.Helper()
	cfg := h.TLSConfig()
	cfg.ServerName = host
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	addr := h.HTTPSAddr()
	var d net.Dialer
	tr := &http.Transport{TLSClientConfig: cfg, Proxy: nil, DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return d.DialContext(ctx, network, addr)
	}}
	t.Cleanup(tr.CloseIdleConnections)
	return &dpsClient{t: t, h: h, hc: &http.Client{Transport: tr}, host: host}
}

type dpsResp struct {
	status int
	header http.Header
	body   map[string]any
	raw    []byte
}

func (c *dpsClient) do(method, path, auth string, body any, hdr ...string) dpsResp {
	c.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	sep := "?"
	if strings.Contains(path, "?") {
		sep = "&"
	}
	req, err := http.NewRequest(method, "https://"+c.host+path+sep+"api-version="+dpsAPI, rd)
	if err != nil {
		c.t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json; charset=utf-8")
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	r := dpsResp{status: resp.StatusCode, header: resp.Header, raw: raw}
	_ = json.Unmarshal(raw, &r.body)
	return r
}

// serviceToken is a provisioningserviceowner token for the DPS.
func serviceToken(h *Hub) string {
	cs := h.DPSConnectionString()
	return iothub.NewSASToken(cs.HostName, cs.SharedAccessKey, DPSServicePolicy, time.Now().Add(time.Hour))
}

// deviceToken is a registration token signed with a base64 key.
func deviceToken(t testing.TB, h *Hub, regID, key string) string {
	t.Helper()
	k, err := base64.StdEncoding.DecodeString(key)
	if err != nil {
		t.Fatal(err)
	}
	return iothub.NewSASToken(h.IDScope()+"/registrations/"+regID, k, "registration", time.Now().Add(time.Hour))
}

// register runs the device flow to its end and returns the final status.
func (c *dpsClient) register(regID, auth string, body map[string]any) dpsResp {
	c.t.Helper()
	if body == nil {
		body = map[string]any{"registrationId": regID}
	}
	base := "/" + c.h.IDScope() + "/registrations/" + url.PathEscape(regID)
	r := c.do(http.MethodPut, base+"/register", auth, body)
	if r.status != http.StatusAccepted {
		return r
	}
	if r.header.Get("Retry-After") == "" {
		c.t.Errorf("202 without Retry-After")
	}
	op, _ := r.body["operationId"].(string)
	if op == "" || r.body["status"] != RegAssigning {
		c.t.Fatalf("202 body %s", r.raw)
	}
	for i := 0; i < 10; i++ {
		r = c.do(http.MethodGet, base+"/operations/"+url.PathEscape(op), auth, nil)
		if r.status != http.StatusAccepted {
			return r
		}
	}
	c.t.Fatalf("still assigning after 10 polls")
	return r
}

func regState(t testing.TB, r dpsResp) map[string]any {
	t.Helper()
	rs, ok := r.body["registrationState"].(map[string]any)
	if !ok {
		t.Fatalf("no registrationState in %d %s", r.status, r.raw)
	}
	return rs
}

func TestDPSSymmetricIndividual(t *testing.T) {
	h := startDPS(t, Options{DPSRetryAfter: -1, DPSAssigningPolls: 1})
	svc := newDPSClient(t, h, h.DPSHostname(), nil)
	tok := serviceToken(h)
	r := svc.do(http.MethodPut, "/enrollments/Dev-1", tok, map[string]any{
		"registrationId": "Dev-1", "deviceId": "kiosk-1",
		"attestation": map[string]any{"type": "symmetricKey"},
		"initialTwin": map[string]any{"tags": map[string]any{"site": "lab"}, "properties": map[string]any{"desired": map[string]any{"hostname": map[string]any{"name": "k1"}}}},
	})
	if r.status != 200 {
		t.Fatalf("put enrollment: %d %s", r.status, r.raw)
	}
	key := r.body["attestation"].(map[string]any)["symmetricKey"].(map[string]any)["primaryKey"].(string)
	if b, _ := base64.StdEncoding.DecodeString(key); len(b) != 64 {
		t.Fatalf("generated key has %d bytes", len(b))
	}
	if r.header.Get("ETag") == "" || r.body["etag"] == "" {
		t.Errorf("no etag: %v", r.header)
	}

	dev := newDPSClient(t, h, h.DPSHostname(), nil)
	res := dev.register("Dev-1", deviceToken(t, h, "Dev-1", key), nil)
	if res.status != 200 {
		t.Fatalf("register: %d %s", res.status, res.raw)
	}
	rs := regState(t, res)
	if rs["status"] != RegAssigned || rs["assignedHub"] != h.Hostname() || rs["deviceId"] != "kiosk-1" || rs["substatus"] != "initialAssignment" {
		t.Fatalf("registration state %v", rs)
	}
	// The device exists in the hub with the enrollment's key and the
	// initial twin, and connects with that key.
	cs, err := h.ConnectionString("kiosk-1", "")
	if err != nil {
		t.Fatal(err)
	}
	if base64.StdEncoding.EncodeToString(cs.SharedAccessKey) != key {
		t.Errorf("hub key is not the enrollment's")
	}
	tw, _ := h.Twin("kiosk-1", "")
	if tw.Tags["site"] != "lab" || tw.Properties.Desired["hostname"] == nil {
		t.Errorf("initial twin not applied: %v %v", tw.Tags, tw.Properties.Desired)
	}
	d := mustDial(t, h, cs)
	d.c.Disconnect(0)

	// The service sees the registration record.
	g := svc.do(http.MethodGet, "/registrations/dev-1", tok, nil)
	if g.status != 200 || g.body["assignedHub"] != h.Hostname() {
		t.Fatalf("get registration: %d %s", g.status, g.raw)
	}
	e := svc.do(http.MethodGet, "/enrollments/dev-1", tok, nil)
	if e.status != 200 || e.body["registrationState"] == nil {
		t.Fatalf("enrollment without registration state: %s", e.raw)
	}
	// Status lookup with the same credentials.
	l := dev.do(http.MethodPost, "/"+h.IDScope()+"/registrations/Dev-1", deviceToken(t, h, "Dev-1", key), map[string]any{"registrationId": "Dev-1"})
	if l.status != 200 || l.body["status"] != RegAssigned {
		t.Fatalf("status lookup: %d %s", l.status, l.raw)
	}
	st := h.DPSStats()
	if st.Requests["register"] != 1 || st.Requests["operationStatus"] != 2 || st.ByRegistration["dev-1"] != 4 {
		t.Errorf("stats %+v", st)
	}
}

func TestDPSSymmetricGroup(t *testing.T) {
	h := startDPS(t, Options{DPSRetryAfter: -1})
	g, err := h.PutEnrollmentGroup(EnrollmentGroup{EnrollmentGroupID: "fleet", EnrollmentSpec: EnrollmentSpec{
		Attestation: Attestation{Type: AttestationSymmetricKey},
		InitialTwin: &InitialTwin{Tags: map[string]any{"fleet": "a"}},
	}}, "")
	if err != nil {
		t.Fatal(err)
	}
	dk, err := DeriveDeviceKey(g.Attestation.SymmetricKey.PrimaryKey, "sensor-7")
	if err != nil {
		t.Fatal(err)
	}
	dev := newDPSClient(t, h, h.DPSHostname(), nil)
	res := dev.register("sensor-7", deviceToken(t, h, "sensor-7", dk), nil)
	if res.status != 200 {
		t.Fatalf("register: %d %s", res.status, res.raw)
	}
	rs := regState(t, res)
	if rs["deviceId"] != "sensor-7" || rs["symmetricKey"].(map[string]any)["enrollmentGroupId"] != "fleet" {
		t.Fatalf("state %v", rs)
	}
	cs, err := h.ConnectionString("sensor-7", "")
	if err != nil || base64.StdEncoding.EncodeToString(cs.SharedAccessKey) != dk {
		t.Fatalf("hub key is not the derived key: %v", err)
	}
	if tw, _ := h.Twin("sensor-7", ""); tw.Tags["fleet"] != "a" {
		t.Errorf("initial twin: %v", tw.Tags)
	}
	// The group's registrations are queryable.
	svc := newDPSClient(t, h, h.DPSHostname(), nil)
	q := svc.do(http.MethodPost, "/registrations/fleet/query", serviceToken(h), map[string]any{"query": "*"})
	var items []map[string]any
	_ = json.Unmarshal(q.raw, &items)
	if q.status != 200 || len(items) != 1 || items[0]["registrationId"] != "sensor-7" {
		t.Fatalf("query: %d %s", q.status, q.raw)
	}
}

func TestDPSErrors(t *testing.T) {
	h := startDPS(t, Options{DPSRetryAfter: -1})
	e, err := h.PutEnrollment(Enrollment{RegistrationID: "off", EnrollmentSpec: EnrollmentSpec{
		Attestation: Attestation{Type: AttestationSymmetricKey}, ProvisioningStatus: "disabled",
	}}, "")
	if err != nil {
		t.Fatal(err)
	}
	good, err := h.PutEnrollment(Enrollment{RegistrationID: "good", EnrollmentSpec: EnrollmentSpec{Attestation: Attestation{Type: AttestationSymmetricKey}}}, "")
	if err != nil {
		t.Fatal(err)
	}
	dev := newDPSClient(t, h, h.DPSHostname(), nil)
	wrong := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32))

	cases := []struct {
		name, regID, auth string
		status, code      int
		finalStatus       string
	}{
		{"wrong key", "good", deviceToken(t, h, "good", wrong), 401, dpsUnauthorized, ""},
		{"unknown registration", "nobody", deviceToken(t, h, "nobody", wrong), 401, dpsUnauthorized, ""},
		{"no token", "good", "", 401, dpsUnauthorized, ""},
		{"token for another registration", "good", deviceToken(t, h, "off", good.Attestation.SymmetricKey.PrimaryKey), 401, dpsUnauthorized, ""},
		{"policy token", "good", "SharedAccessSignature sr=x&sig=eA%3d%3d&se=99999999999&skn=provisioningserviceowner", 401, dpsUnauthorized, ""},
		{"bad registration id", "bad*id", deviceToken(t, h, "bad*id", wrong), 400, dpsBadRequest, ""},
		{"disabled enrollment", "off", deviceToken(t, h, "off", e.Attestation.SymmetricKey.PrimaryKey), 200, 0, RegDisabled},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := dev.register(tc.regID, tc.auth, nil)
			if r.status != tc.status {
				t.Fatalf("status %d, want %d: %s", r.status, tc.status, r.raw)
			}
			if tc.code != 0 {
				if n, _ := r.body["errorCode"].(float64); int(n) != tc.code || r.body["trackingId"] == "" || r.body["message"] == "" || r.body["timestampUtc"] == nil {
					t.Fatalf("error body %s", r.raw)
				}
				if r.header.Get("x-ms-error-code") != fmt.Sprint(tc.code) {
					t.Errorf("x-ms-error-code %q", r.header.Get("x-ms-error-code"))
				}
			}
			if tc.finalStatus != "" {
				if r.body["status"] != tc.finalStatus || regState(t, r)["errorMessage"] == "" {
					t.Fatalf("final %s", r.raw)
				}
			}
		})
	}
	if _, err := h.getIdentity("off", ""); err == nil {
		t.Errorf("a disabled enrollment created a device")
	}
	// wrong scope, missing api-version
	r := dev.do(http.MethodPut, "/0neWRONG/registrations/good/register", deviceToken(t, h, "good", good.Attestation.SymmetricKey.PrimaryKey), map[string]any{})
	if r.status != 404 {
		t.Errorf("wrong scope: %d %s", r.status, r.raw)
	}
	st := h.DPSStats()
	if st.Errors[dpsUnauthorized] != 5 {
		t.Errorf("401002 count %d: %+v", st.Errors[dpsUnauthorized], st)
	}
}
