package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twinlet/twinlet/internal/hub"
	"github.com/twinlet/twinlet/internal/iothub"
)

// newDPSEnv is a twinctl environment pointing at an embedded hub with a DPS.
func newDPSEnv(t *testing.T) *env {
	h, err := hub.New(hub.Options{MQTTAddr: "127.0.0.1:0", HTTPSAddr: "127.0.0.1:0", DPSHostname: "dps.localhost", DPSRetryAfter: -1})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, h.CAPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	return &env{t: t, h: h, vars: map[string]string{
		"TWINCTL_DPS":      h.DPSConnectionString().String(),
		"TWINCTL_CA":       ca,
		"TWINCTL_DPS_ADDR": h.HTTPSAddr(),
	}}
}

// registerDevice registers a symmetric-key device the way a device does
// (PUT …/register, then poll), over the hub's TLS listener.
func registerDevice(t *testing.T, h *hub.Hub, regID, key string) {
	t.Helper()
	k, _ := base64.StdEncoding.DecodeString(key)
	tok := iothub.NewSASToken(h.IDScope()+"/registrations/"+regID, k, "registration", time.Now().Add(time.Hour))
	cfg := h.DPSTLSConfig()
	var d net.Dialer
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg, DialContext: func(ctx context.Context, n, _ string) (net.Conn, error) {
		return d.DialContext(ctx, n, h.HTTPSAddr())
	}}}
	defer hc.CloseIdleConnections()
	req, _ := http.NewRequest(http.MethodPut, "https://"+h.DPSHostname()+"/"+h.IDScope()+"/registrations/"+regID+"/register?api-version=2021-06-01",
		strings.NewReader(`{"registrationId":"`+regID+`"}`))
	req.Header.Set("Authorization", tok)
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 202 {
		t.Fatalf("register %s: %d", regID, resp.StatusCode)
	}
	if _, err := h.Registration(regID); err != nil {
		t.Fatal(err)
	}
}

func TestEnrollExamplesAreValid(t *testing.T) {
	data, err := os.ReadFile("../../examples/dps/enrollments.yaml")
	if err != nil {
		t.Fatal(err)
	}
	docs, err := readEnrollments("../../examples/dps/enrollments.yaml", data, os.ReadFile)
	if err != nil {
		t.Fatal(err)
	}
	if len(docs) != 4 {
		t.Fatalf("%d documents", len(docs))
	}
}

func TestEnrollApplyListShowDelete(t *testing.T) {
	e := newDPSEnv(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "ca.pem"), mustRead(t, "../../examples/dps/fleet-ca.pem"), 0o600); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "enroll.yaml")
	writeAt(t, file, `apiVersion: twinlet.dev/v1
kind: Enrollment
metadata: {name: kiosk-1}
spec:
  deviceId: kiosk-one
  attestation: {type: symmetricKey}
  initialTwin: {tags: {site: lab}}
---
apiVersion: twinlet.dev/v1
kind: EnrollmentGroup
metadata: {name: fleet}
spec:
  attestation: {type: symmetricKey}
---
apiVersion: twinlet.dev/v1
kind: EnrollmentGroup
metadata: {name: cams}
spec:
  attestation:
    type: x509
    x509: {signingCertificates: {primary: {certificateFile: ca.pem}}}
`)
	r := e.run("", "enroll", "-f", file)
	if r.code != 0 {
		t.Fatalf("enroll: %d %s", r.code, r.stderr)
	}
	for _, want := range []string{"Enrollment       kiosk-1  created", "EnrollmentGroup  fleet    created", "cams"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("enroll output lacks %q:\n%s", want, r.stdout)
		}
	}
	if strings.Contains(r.stdout, "==") {
		t.Errorf("enroll printed a key:\n%s", r.stdout)
	}
	// applying again updates and rotates no key
	k1 := enrollmentKey(t, e, "kiosk-1", false)
	if r := e.run("", "enroll", "-f", file); r.code != 0 || !strings.Contains(r.stdout, "updated") {
		t.Fatalf("enroll again: %d %s %s", r.code, r.stdout, r.stderr)
	}
	if k2 := enrollmentKey(t, e, "kiosk-1", false); k2 != k1 {
		t.Error("applying the file again changed the generated key")
	}

	// list
	r = e.run("", "enrollments", "list")
	if r.code != 0 || !strings.Contains(r.stdout, "kiosk-1") || !strings.Contains(r.stdout, "fleet") || !strings.Contains(r.stdout, "x509") {
		t.Fatalf("list: %d %s %s", r.code, r.stdout, r.stderr)
	}
	// show hides keys unless asked
	if r := e.run("", "enrollments", "show", "fleet", "--group"); r.code != 0 || !strings.Contains(r.stdout, "hidden") {
		t.Errorf("show: %d %s %s", r.code, r.stdout, r.stderr)
	}
	gk := enrollmentKey(t, e, "fleet", true)

	// registrations: a device of the group and the individual one register
	dk, _ := hub.DeriveDeviceKey(gk, "sensor-1")
	registerDevice(t, e.h, "sensor-1", dk)
	registerDevice(t, e.h, "kiosk-1", k1)
	r = e.run("", "registrations", "list")
	if r.code != 0 || !strings.Contains(r.stdout, "sensor-1") || !strings.Contains(r.stdout, "kiosk-one") || !strings.Contains(r.stdout, "fleet") {
		t.Fatalf("registrations list: %d %s %s", r.code, r.stdout, r.stderr)
	}
	r = e.run("", "registrations", "show", "sensor-1", "-o", "json")
	var reg map[string]any
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &reg) != nil || reg["assignedHub"] != e.h.Hostname() {
		t.Fatalf("registrations show: %d %s %s", r.code, r.stdout, r.stderr)
	}
	if r := e.run("", "registrations", "delete", "sensor-1"); r.code != 0 {
		t.Fatalf("registrations delete: %d %s", r.code, r.stderr)
	}
	if r := e.run("", "registrations", "show", "sensor-1"); r.code != 1 || !strings.Contains(r.stderr, "404") {
		t.Errorf("deleted registration: %d %s", r.code, r.stderr)
	}
	// delete, with a stale etag first
	if r := e.run("", "enrollments", "delete", "kiosk-1", "--etag", "stale"); r.code != 1 || !strings.Contains(r.stderr, "412") {
		t.Errorf("stale delete: %d %s", r.code, r.stderr)
	}
	if r := e.run("", "enrollments", "delete", "kiosk-1"); r.code != 0 {
		t.Errorf("delete: %d %s", r.code, r.stderr)
	}
	if r := e.run("", "enrollments", "show", "kiosk-1"); r.code != 1 {
		t.Errorf("deleted enrollment shown: %d", r.code)
	}
}

func enrollmentKey(t *testing.T, e *env, id string, group bool) string {
	t.Helper()
	args := []string{"enrollments", "show", id, "--show-keys", "-o", "json"}
	if group {
		args = append(args, "--group")
	}
	r := e.run("", args...)
	var m struct {
		Attestation struct {
			SymmetricKey struct {
				PrimaryKey string `json:"primaryKey"`
			} `json:"symmetricKey"`
		} `json:"attestation"`
	}
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &m) != nil || m.Attestation.SymmetricKey.PrimaryKey == "" {
		t.Fatalf("show %s: %d %s %s", id, r.code, r.stdout, r.stderr)
	}
	return m.Attestation.SymmetricKey.PrimaryKey
}

func TestEnrollRefusesBadFilesBeforeSending(t *testing.T) {
	e := newDPSEnv(t)
	file := filepath.Join(t.TempDir(), "bad.yaml")
	writeAt(t, file, `apiVersion: twinlet.dev/v1
kind: Enrollment
metadata: {name: good-one}
spec:
  attestation: {type: symmetricKey}
---
apiVersion: twinlet.dev/v1
kind: Enrollment
metadata: {name: "bad id!"}
spec:
  attestation:
    type: symmetricKey
    tpm: {endorsementKey: AAAA}
  colour: blue
---
apiVersion: twinlet.dev/v1
kind: EnrollmentGroup
metadata: {name: g}
spec:
  deviceId: nope
  attestation:
    type: x509
    x509: {signingCertificates: {primary: {certificateFile: missing.pem}}}
---
apiVersion: twinlet.dev/v1
kind: Enrollment
metadata: {name: static-one}
spec:
  allocationPolicy: static
  attestation: {type: symmetricKey}
`)
	r := e.run("", "enroll", "-f", file)
	if r.code != 1 {
		t.Fatalf("bad file: %d %s", r.code, r.stdout)
	}
	for _, want := range []string{
		"bad.yaml:9:", "/metadata/name",
		"bad.yaml:14:", "/spec/colour: unknown field",
		"bad.yaml:20:3: /spec/deviceId",
		"missing.pem",
		"bad.yaml:29:", "exactly one hub",
		"nothing was sent",
	} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("errors lack %q:\n%s", want, r.stderr)
		}
	}
	if r := e.run("", "enrollments", "list", "-o", "json"); strings.TrimSpace(r.stdout) != "[]" {
		t.Errorf("something was sent: %s", r.stdout)
	}
	// usage: no -f; no DPS
	if r := e.run("", "enroll"); r.code != 2 {
		t.Errorf("no -f: %d", r.code)
	}
	delete(e.vars, "TWINCTL_DPS")
	good := filepath.Join(t.TempDir(), "good.yaml")
	writeAt(t, good, "apiVersion: twinlet.dev/v1\nkind: Enrollment\nmetadata: {name: a}\nspec: {attestation: {type: symmetricKey}}\n")
	if r := e.run("", "enroll", "-f", good); r.code != 2 || !strings.Contains(r.stderr, "TWINCTL_DPS") {
		t.Errorf("no DPS: %d %s", r.code, r.stderr)
	}
	if r := e.run("", "enroll", "-f", good, "--dry-run"); r.code != 0 {
		t.Errorf("dry run: %d %s", r.code, r.stderr)
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func writeAt(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
}
