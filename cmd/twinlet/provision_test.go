package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twinlet/twinlet/internal/dps"
	"github.com/twinlet/twinlet/internal/hub"
	"github.com/twinlet/twinlet/internal/testutil"
	"github.com/twinlet/twinlet/internal/tpm"
	"github.com/twinlet/twinlet/internal/tpm/tpmblob"
	"github.com/twinlet/twinlet/internal/tpm/tpmtest"
)

// dpsHub is a twinhub with its DPS, on loopback ports, over TLS.
type dpsHub struct {
	*hub.Hub
	dir string
}

func startDPSHub(t *testing.T) *dpsHub {
	t.Helper()
	dir := t.TempDir()
	h, err := hub.New(hub.Options{
		Dir: dir, MQTTAddr: "127.0.0.1:0", HTTPSAddr: "127.0.0.1:0",
		DPSHostname: "dps.localhost", DPSRetryAfter: -1,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return &dpsHub{Hub: h, dir: dir}
}

// secretFile writes a 0600 file.
func secretFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func newKey() string {
	k := make([]byte, 32)
	rand.Read(k)
	return base64.StdEncoding.EncodeToString(k)
}

func (h *dpsHub) enroll(t *testing.T, regID, key, status string) {
	t.Helper()
	e := hub.Enrollment{RegistrationID: regID}
	e.Attestation = hub.Attestation{Type: hub.AttestationSymmetricKey, SymmetricKey: &hub.SymmetricKey{PrimaryKey: key, SecondaryKey: newKey()}}
	e.ProvisioningStatus = status
	if _, err := h.PutEnrollment(e, "*"); err != nil {
		t.Fatal(err)
	}
}

func (h *dpsHub) enrollGroup(t *testing.T, groupID, key, status string) {
	t.Helper()
	g := hub.EnrollmentGroup{EnrollmentGroupID: groupID}
	g.Attestation = hub.Attestation{Type: hub.AttestationSymmetricKey, SymmetricKey: &hub.SymmetricKey{PrimaryKey: key, SecondaryKey: newKey()}}
	g.ProvisioningStatus = status
	if _, err := h.PutEnrollmentGroup(g, "*"); err != nil {
		t.Fatal(err)
	}
}

// provisionArgs are the DPS flags of `twinlet provision` against h.
func (h *dpsHub) provisionArgs(stateDir string, extra ...string) []string {
	return append([]string{"provision", "--config", "", "--dps-endpoint", h.DPSHostname(), "--dps-addr", h.HTTPSAddr(),
		"--id-scope", h.IDScope(), "--ca-file", h.CAFile(), "--state-dir", stateDir}, extra...)
}

// registrations is how many device requests DPS saw for regID.
func (h *dpsHub) registrations(regID string) int {
	return h.DPSStats().ByRegistration[strings.ToLower(regID)]
}

// agentConfig writes a twinlet.yaml for `twinlet run` with a
// connection.dps block whose attestation is the given YAML.
func (h *dpsHub) agentConfig(t *testing.T, s *sandbox, regID, attestation string) string {
	t.Helper()
	_, port, _ := strings.Cut(h.MQTTAddr(), ":")
	reg := ""
	if regID != "" {
		reg = "    registrationId: " + regID + "\n"
	}
	cfg := fmt.Sprintf(`root: %s
stateDir: %s
policyDir: %s
connection:
  caFile: %s
  port: %s
  dps:
    endpoint: %s
    address: %s
    idScope: %s
%s    attestation:
%s
`, s.root, s.state, s.policy, h.CAFile(), port, h.DPSHostname(), h.HTTPSAddr(), h.IDScope(), reg, attestation)
	p := filepath.Join(t.TempDir(), "twinlet.yaml")
	if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// runningAgent is `twinlet run` in this process.
type runningAgent struct {
	logs   testutil.SyncBuffer
	cancel context.CancelFunc
	done   chan int
}

func startAgent(t *testing.T, configFile string) *runningAgent {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	a := &runningAgent{cancel: cancel, done: make(chan int, 1)}
	var out bytes.Buffer
	go func() { a.done <- run(ctx, []string{"run", "--config", configFile, "--resync", "1h"}, &out, &a.logs) }()
	t.Cleanup(a.stop)
	return a
}

var stopOnce sync.Map

func (a *runningAgent) stop() {
	if _, dup := stopOnce.LoadOrStore(a, true); dup {
		return
	}
	a.cancel()
	<-a.done
}

// waitReady waits until the device is connected and its twin reports the
// hostname section Ready.
func (h *dpsHub) waitReady(t *testing.T, deviceID string, a *runningAgent) {
	t.Helper()
	testutil.Eventually(t, deviceID+" connected and Ready", func() bool {
		tw, err := h.Twin(deviceID, "")
		if err != nil || tw.ConnectionState != "Connected" {
			return false
		}
		b, _ := json.Marshal(tw.Properties.Reported)
		return strings.Contains(string(b), `"name":"from-policy"`) && strings.Contains(string(b), `"state":"Ready"`)
	})
}

func hostnamePolicy(t *testing.T, s *sandbox) {
	s.write(t, "base.yaml", policyDoc("enforce", "  hostname: { name: from-policy }\n"))
}

func readIdentity(t *testing.T, stateDir string) dps.Identity {
	t.Helper()
	id, err := dps.LoadIdentity(filepath.Join(stateDir, dps.IdentityFile))
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// TestProvisionSymmetricIndividual: `twinlet provision` with an individual
// enrollment's key stores the identity; `twinlet run` then connects with
// it (without registering again) and reports Ready.
func TestProvisionSymmetricIndividual(t *testing.T) {
	h := startDPSHub(t)
	key := newKey()
	h.enroll(t, "kiosk-1", key, "enabled")
	s := newSandbox(t)
	keyFile := secretFile(t, "enrollment.key", key+"\n")

	code, out, errs := twinlet(t, h.provisionArgs(s.state, "--registration-id", "kiosk-1", "--key-file", keyFile, "--output", "json")...)
	if code != 0 {
		t.Fatalf("provision: %d %s", code, errs)
	}
	var res map[string]any
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if res["assignedHub"] != h.Hostname() || res["deviceId"] != "kiosk-1" || res["auth"] != "sas" {
		t.Fatalf("provision output %s", out)
	}
	if strings.Contains(out+errs, key) {
		t.Fatal("the key was printed")
	}
	fi, err := os.Stat(filepath.Join(s.state, dps.IdentityFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("identity file: %v %v", err, fi)
	}
	if n := h.registrations("kiosk-1"); n < 1 {
		t.Fatalf("DPS saw %d requests", n)
	}
	before := h.registrations("kiosk-1")

	hostnamePolicy(t, s)
	cfg := h.agentConfig(t, s, "kiosk-1", "      symmetricKey: { keyFile: "+keyFile+" }")
	a := startAgent(t, cfg)
	h.waitReady(t, "kiosk-1", a)
	if n := h.registrations("kiosk-1"); n != before {
		t.Fatalf("the agent registered again (%d requests, had %d) although it had an identity", n, before)
	}
	if strings.Contains(a.logs.String(), key) {
		t.Fatal("the key was logged")
	}
}

// TestProvisionGroupFirstBoot: an agent with only a group key provisions
// itself on first start (the derived key), connects and reports Ready.
func TestProvisionGroupFirstBoot(t *testing.T) {
	h := startDPSHub(t)
	group := newKey()
	h.enrollGroup(t, "line-7", group, "enabled")
	s := newSandbox(t)
	hostnamePolicy(t, s)
	keyFile := secretFile(t, "group.key", group)
	a := startAgent(t, h.agentConfig(t, s, "sensor-42", "      groupKey: { keyFile: "+keyFile+" }"))
	h.waitReady(t, "sensor-42", a)
	id := readIdentity(t, s.state)
	derived, _ := hub.DeriveDeviceKey(group, "sensor-42")
	if id.HostName != h.Hostname() || id.DeviceID != "sensor-42" || !strings.Contains(id.ConnectionString, "SharedAccessKey="+derived) {
		t.Fatalf("identity %+v", id)
	}
	if _, err := os.Stat(filepath.Join(s.state, dps.PendingIdentityFile)); !os.IsNotExist(err) {
		t.Fatalf("a pending identity is left after it connected: %v", err)
	}
	if strings.Contains(a.logs.String(), group) || strings.Contains(a.logs.String(), derived) {
		t.Fatal("a key was logged")
	}
}

// selfSigned writes a self-signed certificate for cn and its 0600 key.
func selfSigned(t *testing.T, cn string) (certFile, keyFile string, certPEM []byte) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(k)
	certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "device.pem"), filepath.Join(dir, "device-key.pem")
	os.WriteFile(certFile, certPEM, 0o644)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)
	return certFile, keyFile, certPEM
}

// TestProvisionX509: an individual X.509 enrollment; the registration id
// is the certificate's CN, and the agent connects to the hub with the
// same certificate.
func TestProvisionX509(t *testing.T) {
	h := startDPSHub(t)
	certFile, keyFile, certPEM := selfSigned(t, "cam-3")
	e := hub.Enrollment{RegistrationID: "cam-3"}
	e.Attestation = hub.Attestation{Type: hub.AttestationX509, X509: &hub.X509Attestation{
		ClientCertificates: &hub.X509Certificates{Primary: &hub.X509CertificateWithInfo{Certificate: string(certPEM)}}}}
	e.ProvisioningStatus = "enabled"
	if _, err := h.PutEnrollment(e, "*"); err != nil {
		t.Fatal(err)
	}
	s := newSandbox(t)
	code, out, errs := twinlet(t, h.provisionArgs(s.state, "--cert-file", certFile, "--cert-key-file", keyFile)...)
	if code != 0 || !strings.Contains(out, "device id:    cam-3") {
		t.Fatalf("provision: %d %s %s", code, out, errs)
	}
	if id := readIdentity(t, s.state); id.Auth != dps.AuthX509 || id.CertFile != certFile {
		t.Fatalf("identity %+v", id)
	}
	hostnamePolicy(t, s)
	a := startAgent(t, h.agentConfig(t, s, "", "      x509: { certFile: "+certFile+", keyFile: "+keyFile+" }"))
	h.waitReady(t, "cam-3", a)
}

// TestProvisionRefusals: a wrong key, a disabled enrollment and an
// unknown registration each end `twinlet provision` with the service's
// reason after one request, and the agent does not retry them in a storm.
func TestProvisionRefusals(t *testing.T) {
	h := startDPSHub(t)
	h.enroll(t, "wrong-key", newKey(), "enabled")
	disabledKey := newKey()
	h.enroll(t, "off", disabledKey, "disabled")
	// A refused key or an unknown id is refused on the register call; a
	// disabled enrollment is accepted (202) and its operation polled once
	// to its final state, disabled.
	for _, tc := range []struct {
		regID, key, want string
		requests         int
	}{
		{"wrong-key", newKey(), "status 401", 1},
		{"off", disabledKey, "registration disabled", 2},
		{"nobody", newKey(), "status 401", 1},
	} {
		t.Run(tc.regID, func(t *testing.T) {
			s := newSandbox(t)
			keyFile := secretFile(t, "k", tc.key)
			code, _, errs := twinlet(t, h.provisionArgs(s.state, "--registration-id", tc.regID, "--key-file", keyFile)...)
			if code != 1 || !strings.Contains(errs, tc.want) {
				t.Fatalf("provision: %d %s, want %q", code, errs, tc.want)
			}
			t.Log(strings.TrimSpace(errs))
			if n := h.registrations(tc.regID); n != tc.requests {
				t.Fatalf("DPS saw %d requests for %s, want %d (no retry of a refusal)", n, tc.regID, tc.requests)
			}
			if _, err := os.Stat(filepath.Join(s.state, dps.IdentityFile)); !os.IsNotExist(err) {
				t.Fatal("an identity was stored")
			}
		})
	}
	// The agent: one registration, then a long wait (it says how long),
	// not a loop.
	s := newSandbox(t)
	keyFile := secretFile(t, "k", newKey())
	a := startAgent(t, h.agentConfig(t, s, "agent-wrong", "      symmetricKey: { keyFile: "+keyFile+" }"))
	testutil.Eventually(t, "the agent's provisioning failure", func() bool {
		return strings.Contains(a.logs.String(), "provisioning failed")
	})
	log := a.logs.String()
	if !strings.Contains(log, "status 401") || !strings.Contains(log, "retry_in=") {
		t.Fatalf("log: %s", log)
	}
	var retryIn time.Duration
	for _, line := range strings.Split(log, "\n") {
		if i := strings.Index(line, "retry_in="); i >= 0 && strings.Contains(line, "provisioning failed") {
			retryIn, _ = time.ParseDuration(strings.Fields(line[i+len("retry_in="):])[0])
		}
	}
	if retryIn < 20*time.Second {
		t.Fatalf("a refused registration is retried in %s", retryIn)
	}
	if n := h.registrations("agent-wrong"); n != 1 {
		t.Fatalf("DPS saw %d requests from the agent, want 1", n)
	}
}

// TestReprovisionAfterDelete: the device is deleted from the hub while the
// agent runs; the hub refuses it, the agent provisions again and
// reconnects.
func TestReprovisionAfterDelete(t *testing.T) {
	h := startDPSHub(t)
	group := newKey()
	h.enrollGroup(t, "fleet", group, "enabled")
	s := newSandbox(t)
	hostnamePolicy(t, s)
	a := startAgent(t, h.agentConfig(t, s, "truck-9", "      groupKey: { keyFile: "+secretFile(t, "g", group)+" }"))
	h.waitReady(t, "truck-9", a)
	first := readIdentity(t, s.state)
	regs := h.registrations("truck-9")

	if err := h.DeleteDevice("truck-9"); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, "re-provisioned and connected", func() bool {
		tw, err := h.Twin("truck-9", "")
		return err == nil && tw.ConnectionState == "Connected" && h.registrations("truck-9") > regs
	})
	h.waitReady(t, "truck-9", a)
	second := readIdentity(t, s.state)
	if !second.ProvisionedAt.After(first.ProvisionedAt) {
		t.Fatalf("identity not replaced: %v then %v", first.ProvisionedAt, second.ProvisionedAt)
	}
	if !strings.Contains(a.logs.String(), "the new identity connected; it is now the one in use") {
		t.Fatalf("log: %s", a.logs.String())
	}
}

// TestFailingDPSKeepsOldIdentity: the hub refuses the device and DPS
// refuses to provision it again; the agent keeps its identity file as it
// was, and reconnects with it once the hub takes the device back.
func TestFailingDPSKeepsOldIdentity(t *testing.T) {
	h := startDPSHub(t)
	group := newKey()
	h.enrollGroup(t, "fleet", group, "enabled")
	s := newSandbox(t)
	hostnamePolicy(t, s)
	a := startAgent(t, h.agentConfig(t, s, "bus-2", "      groupKey: { keyFile: "+secretFile(t, "g", group)+" }"))
	h.waitReady(t, "bus-2", a)
	before, _ := os.ReadFile(filepath.Join(s.state, dps.IdentityFile))

	h.enrollGroup(t, "fleet", group, "disabled")
	if err := h.SetDeviceStatus("bus-2", false); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, "the failed re-provisioning", func() bool {
		return strings.Contains(a.logs.String(), "provisioning failed; keeping the old identity")
	})
	after, _ := os.ReadFile(filepath.Join(s.state, dps.IdentityFile))
	if !bytes.Equal(before, after) {
		t.Fatal("the identity file changed after a failed provisioning")
	}
	if _, err := os.Stat(filepath.Join(s.state, dps.PendingIdentityFile)); !os.IsNotExist(err) {
		t.Fatal("a pending identity was stored from a failed provisioning")
	}
	if err := h.SetDeviceStatus("bus-2", true); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, "reconnected with the old identity", func() bool {
		tw, err := h.Twin("bus-2", "")
		return err == nil && tw.ConnectionState == "Connected"
	})
}

// TestWaitMode: with wait: true the agent never calls DPS; it waits until
// another provisioning client (here `twinlet provision`) stores the
// identity, then connects.
func TestWaitMode(t *testing.T) {
	h := startDPSHub(t)
	key := newKey()
	h.enroll(t, "panel-5", key, "enabled")
	s := newSandbox(t)
	hostnamePolicy(t, s)
	cfg := h.agentConfig(t, s, "", "      {}")
	data, _ := os.ReadFile(cfg)
	os.WriteFile(cfg, []byte(strings.Replace(string(data), "    attestation:", "    wait: true\n    attestation:", 1)), 0o600)
	a := startAgent(t, cfg)
	testutil.Eventually(t, "waiting", func() bool { return strings.Contains(a.logs.String(), "waiting for another provisioning client") })
	if n := h.registrations("panel-5"); n != 0 {
		t.Fatalf("the waiting agent called DPS %d times", n)
	}
	code, _, errs := twinlet(t, h.provisionArgs(s.state, "--registration-id", "panel-5", "--key-file", secretFile(t, "k", key))...)
	if code != 0 {
		t.Fatalf("provision: %s", errs)
	}
	h.waitReady(t, "panel-5", a)
}

// TestProvisionTPM: TPM attestation against swtpm. `twinlet provision
// --tpm` answers twinhub's challenge in the TPM (ActivateCredential and
// Import), registers with a token signed in the TPM, activates the hub key
// into the slot and stores the hub URI there; `twinlet run` then connects
// with tokens signed in the TPM and reports Ready. No key is in a file.
func TestProvisionTPM(t *testing.T) {
	sw := tpmtest.Start(t)
	dir := t.TempDir()
	h0, err := hub.New(hub.Options{Dir: dir, MQTTAddr: "127.0.0.1:0", HTTPSAddr: "127.0.0.1:0",
		DPSHostname: "dps.localhost", DPSRetryAfter: -1, TPMActivation: tpmblob.Make})
	if err != nil {
		t.Fatal(err)
	}
	if err := h0.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h0.Close() })
	h := &dpsHub{Hub: h0, dir: dir}

	tp, err := tpm.Open(sw.TCTI)
	if err != nil {
		t.Fatal(err)
	}
	ek, err := tp.EndorsementKeyPublic()
	if err != nil {
		t.Fatal(err)
	}
	regID, _ := tp.RegistrationID()
	tp.Close() // swtpm serves one client at a time
	e := hub.Enrollment{RegistrationID: regID, DeviceID: "tpm-device"}
	e.Attestation = hub.Attestation{Type: hub.AttestationTPM, TPM: &hub.TPMAttestation{EndorsementKey: base64.StdEncoding.EncodeToString(ek)}}
	e.ProvisioningStatus = "enabled"
	if _, err := h.PutEnrollment(e, "*"); err != nil {
		t.Fatal(err)
	}

	s := newSandbox(t)
	code, out, errs := twinlet(t, h.provisionArgs(s.state, "--tpm", sw.TCTI, "--slot", "3", "--output", "json")...)
	if code != 0 {
		t.Fatalf("provision: %d %s", code, errs)
	}
	var res map[string]any
	json.Unmarshal([]byte(out), &res)
	if res["deviceId"] != "tpm-device" || res["auth"] != "tpm" || res["slot"] != float64(3) || res["registrationId"] != regID {
		t.Fatalf("provision output %s", out)
	}
	id := readIdentity(t, s.state)
	if id.Auth != dps.AuthTPM || id.Slot != 3 || id.ConnectionString != "" {
		t.Fatalf("identity %+v", id)
	}
	// The slot holds the hub URI, as Limpet's tools read it.
	tp, err = tpm.Open(sw.TCTI)
	if err != nil {
		t.Fatal(err)
	}
	uri, err := tp.SlotURI(3)
	tp.Close()
	if err != nil || uri.HostName != h.Hostname() || uri.DeviceID != "tpm-device" {
		t.Fatalf("slot 3 URI %+v %v", uri, err)
	}

	hostnamePolicy(t, s)
	a := startAgent(t, h.agentConfig(t, s, "", fmt.Sprintf("      tpm: { tcti: %q, slot: 3 }", sw.TCTI)))
	h.waitReady(t, "tpm-device", a)
}

// TestReprovisionTPMSpareSlot: the agent provisions itself with the TPM
// into slot 1; the device is deleted; it provisions again into the spare
// slot 2 (slot 1 still holds the old key until the new identity
// connected) and reconnects with tokens signed by the new key.
func TestReprovisionTPMSpareSlot(t *testing.T) {
	sw := tpmtest.Start(t)
	dir := t.TempDir()
	h0, err := hub.New(hub.Options{Dir: dir, MQTTAddr: "127.0.0.1:0", HTTPSAddr: "127.0.0.1:0",
		DPSHostname: "dps.localhost", DPSRetryAfter: -1, TPMActivation: tpmblob.Make})
	if err != nil {
		t.Fatal(err)
	}
	if err := h0.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h0.Close() })
	h := &dpsHub{Hub: h0, dir: dir}
	tp, err := tpm.Open(sw.TCTI)
	if err != nil {
		t.Fatal(err)
	}
	ek, _ := tp.EndorsementKeyPublic()
	regID, _ := tp.RegistrationID()
	tp.Close()
	e := hub.Enrollment{RegistrationID: regID, DeviceID: "tpm-agent"}
	e.Attestation = hub.Attestation{Type: hub.AttestationTPM, TPM: &hub.TPMAttestation{EndorsementKey: base64.StdEncoding.EncodeToString(ek)}}
	e.ProvisioningStatus = "enabled"
	if _, err := h.PutEnrollment(e, "*"); err != nil {
		t.Fatal(err)
	}
	s := newSandbox(t)
	hostnamePolicy(t, s)
	a := startAgent(t, h.agentConfig(t, s, "", fmt.Sprintf("      tpm: { tcti: %q, slot: 1, spareSlot: 2 }", sw.TCTI)))
	h.waitReady(t, "tpm-agent", a)
	if id := readIdentity(t, s.state); id.Slot != 1 {
		t.Fatalf("first identity in slot %d", id.Slot)
	}
	if err := h.DeleteDevice("tpm-agent"); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, "re-provisioned into the spare slot", func() bool {
		id, err := dps.LoadIdentity(filepath.Join(s.state, dps.IdentityFile))
		return err == nil && id.Slot == 2
	})
	h.waitReady(t, "tpm-agent", a)
}

// TestProvisionUsage: flags are checked before anything is sent, and keys
// come only from files that others cannot read.
func TestProvisionUsage(t *testing.T) {
	h := startDPSHub(t)
	s := newSandbox(t)
	key := secretFile(t, "k", newKey())
	open := filepath.Join(t.TempDir(), "open.key")
	os.WriteFile(open, []byte(newKey()), 0o644)
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no attestation", h.provisionArgs(s.state, "--registration-id", "r"), 2, "exactly one of"},
		{"two attestations", h.provisionArgs(s.state, "--registration-id", "r", "--key-file", key, "--group-key-file", key), 2, "exactly one of"},
		{"key without id", h.provisionArgs(s.state, "--key-file", key), 2, "--registration-id is required"},
		{"no scope", []string{"provision", "--config", "", "--key-file", key, "--registration-id", "r"}, 2, "--id-scope is required"},
		{"key on argv", h.provisionArgs(s.state, "--registration-id", "r", "--key-file", key, "c2VjcmV0"), 2, "never from arguments"},
		{"half a certificate", h.provisionArgs(s.state, "--cert-file", key), 2, "go together"},
		{"bad slot", h.provisionArgs(s.state, "--tpm", "swtpm:port=1", "--slot", "10"), 2, "--slot"},
		{"readable key file", h.provisionArgs(s.state, "--registration-id", "r", "--key-file", open), 1, "chmod 600"},
		{"bad output", h.provisionArgs(s.state, "--registration-id", "r", "--key-file", key, "--output", "xml"), 2, "--output"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, errs := twinlet(t, tc.args...)
			if code != tc.code || !strings.Contains(errs, tc.want) {
				t.Fatalf("%d %s, want %d %q", code, errs, tc.code, tc.want)
			}
		})
	}
	if n := h.DPSStats().Requests["register"]; n != 0 {
		t.Fatalf("DPS saw %d registrations from bad invocations", n)
	}
}

// TestProvisionX509Group: an enrollment group pins a fleet CA; the device
// presents its CA-signed leaf with the chain, registers (registration id
// = CN) and connects to the hub with the same certificate.
func TestProvisionX509Group(t *testing.T) {
	h := startDPSHub(t)
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "fleet root"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	leafKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "meter-11"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, ca, &leafKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "chain.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leafDER}), caPEM...), 0o644)
	kder, _ := x509.MarshalECPrivateKey(leafKey)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)

	g := hub.EnrollmentGroup{EnrollmentGroupID: "meters"}
	g.Attestation = hub.Attestation{Type: hub.AttestationX509, X509: &hub.X509Attestation{
		SigningCertificates: &hub.X509Certificates{Primary: &hub.X509CertificateWithInfo{Certificate: string(caPEM)}}}}
	g.ProvisioningStatus = "enabled"
	if _, err := h.PutEnrollmentGroup(g, "*"); err != nil {
		t.Fatal(err)
	}
	s := newSandbox(t)
	hostnamePolicy(t, s)
	a := startAgent(t, h.agentConfig(t, s, "", "      x509: { certFile: "+certFile+", keyFile: "+keyFile+" }"))
	h.waitReady(t, "meter-11", a)
	if id := readIdentity(t, s.state); id.Auth != dps.AuthX509 || id.DeviceID != "meter-11" {
		t.Fatalf("identity %+v", id)
	}
}

// TestProvisionPayload: the payload of connection.dps reaches DPS's custom
// allocation (a webhook on loopback, the allocation function an operator
// would run), and what the webhook returns is kept with the identity.
func TestProvisionPayload(t *testing.T) {
	h := startDPSHub(t)
	var mu sync.Mutex
	var seen any
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			DeviceRuntimeContext struct {
				Payload any `json:"payload"`
			} `json:"deviceRuntimeContext"`
			LinkedHubs []string `json:"linkedHubs"`
		}
		json.NewDecoder(r.Body).Decode(&req)
		mu.Lock()
		seen = req.DeviceRuntimeContext.Payload
		mu.Unlock()
		json.NewEncoder(w).Encode(map[string]any{"iotHubHostName": req.LinkedHubs[0], "payload": map[string]any{"welcome": "berlin"}})
	}))
	defer hook.Close()
	group := newKey()
	g := hub.EnrollmentGroup{EnrollmentGroupID: "custom"}
	g.Attestation = hub.Attestation{Type: hub.AttestationSymmetricKey, SymmetricKey: &hub.SymmetricKey{PrimaryKey: group, SecondaryKey: newKey()}}
	g.ProvisioningStatus = "enabled"
	g.AllocationPolicy = hub.AllocationCustom
	g.CustomAllocationDefinition = &hub.CustomAllocationDefinition{WebhookURL: hook.URL + "/allocate", APIVersion: "2021-10-01"}
	if _, err := h.PutEnrollmentGroup(g, "*"); err != nil {
		t.Fatal(err)
	}
	s := newSandbox(t)
	hostnamePolicy(t, s)
	cfg := h.agentConfig(t, s, "pay-1", "      groupKey: { keyFile: "+secretFile(t, "g", group)+" }\n    payload: { site: berlin, line: 7 }")
	a := startAgent(t, cfg)
	h.waitReady(t, "pay-1", a)
	mu.Lock()
	got, _ := json.Marshal(seen)
	mu.Unlock()
	if string(got) != `{"line":7,"site":"berlin"}` {
		t.Fatalf("the webhook saw payload %s", got)
	}
	var compact bytes.Buffer
	json.Compact(&compact, readIdentity(t, s.state).Payload)
	if compact.String() != `{"welcome":"berlin"}` {
		t.Fatalf("identity payload %s", compact.String())
	}
}

// TestWaitModeTPMSlot: in wait mode with a TPM the agent waits until
// another client (Limpet's way: a key and the hub URI) fills its slot, then
// connects with tokens signed in the TPM.
func TestWaitModeTPMSlot(t *testing.T) {
	sw := tpmtest.Start(t)
	h := startDPSHub(t)
	cs, err := h.CreateDevice("limpet-1")
	if err != nil {
		t.Fatal(err)
	}
	s := newSandbox(t)
	hostnamePolicy(t, s)
	cfg := h.agentConfig(t, s, "", fmt.Sprintf("      tpm: { tcti: %q, slot: 5 }", sw.TCTI))
	data, _ := os.ReadFile(cfg)
	os.WriteFile(cfg, []byte(strings.Replace(string(data), "    attestation:", "    wait: true\n    attestation:", 1)), 0o600)
	a := startAgent(t, cfg)
	testutil.Eventually(t, "waiting", func() bool { return strings.Contains(a.logs.String(), "waiting for another provisioning client") })
	// The other client: it may have to wait while the agent looks.
	testutil.Eventually(t, "the slot filled", func() bool {
		tp, err := tpm.Open(sw.TCTI)
		if err != nil {
			return false
		}
		defer tp.Close()
		return tp.SetSlotConnectionString(5, cs) == nil
	})
	h.waitReady(t, "limpet-1", a)
	if n := h.DPSStats().Requests["register"]; n != 0 {
		t.Fatalf("the waiting agent registered %d times", n)
	}
	if id := readIdentity(t, s.state); id.Auth != dps.AuthTPM || id.Slot != 5 || id.DeviceID != "limpet-1" {
		t.Fatalf("identity %+v", id)
	}
}
