package hub

import (
	"encoding/base64"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twinlet/twinlet/internal/iothub"
	"github.com/twinlet/twinlet/internal/tpm"
	"github.com/twinlet/twinlet/internal/tpm/tpmtest"
)

// tpmToken signs a SAS token inside the TPM with slot's key.
func tpmToken(t testing.TB, dev *tpm.TPM, slot int, resource, keyName string) string {
	t.Helper()
	sr := url.QueryEscape(resource)
	se := strconv.FormatInt(time.Now().Add(time.Hour).Unix(), 10)
	sig, err := dev.HMAC(slot, []byte(sr+"\n"+se))
	if err != nil {
		t.Fatal(err)
	}
	tok := "SharedAccessSignature sr=" + sr + "&sig=" + url.QueryEscape(base64.StdEncoding.EncodeToString(sig)) + "&se=" + se
	if keyName != "" {
		tok += "&skn=" + keyName
	}
	return tok
}

// TestDPSTPMWithSWTPM provisions a software TPM (swtpm, started by the
// test) end to end: the challenge blob is activated inside the TPM, the
// registration token is signed inside it, the hub key arrives in the
// second blob, and the device connects to the hub with a token the TPM
// signed.
func TestDPSTPMWithSWTPM(t *testing.T) {
	sw := tpmtest.Start(t)
	dev, err := tpm.Open(sw.TCTI)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	ek, err := dev.EndorsementKeyPublic()
	if err != nil {
		t.Fatal(err)
	}
	srk, err := dev.StorageRootKeyPublic()
	if err != nil {
		t.Fatal(err)
	}
	regID, err := dev.RegistrationID()
	if err != nil {
		t.Fatal(err)
	}
	h := startDPS(t, Options{DPSRetryAfter: -1})
	eks, srks := base64.StdEncoding.EncodeToString(ek), base64.StdEncoding.EncodeToString(srk)
	if _, err := h.PutEnrollment(Enrollment{RegistrationID: regID, DeviceID: "tpm-device", EnrollmentSpec: EnrollmentSpec{Attestation: Attestation{
		Type: AttestationTPM, TPM: &TPMAttestation{EndorsementKey: eks},
	}}}, ""); err != nil {
		t.Fatal(err)
	}
	body := map[string]any{"registrationId": regID, "tpm": map[string]any{"endorsementKey": eks, "storageRootKey": srks}}
	c := newDPSClient(t, h, h.DPSHostname(), nil)
	ch := c.do(http.MethodPut, "/"+h.IDScope()+"/registrations/"+regID+"/register", "", body)
	if ch.status != 401 || ch.body["keyName"] != "registration" {
		t.Fatalf("challenge: %d %s", ch.status, ch.raw)
	}
	blob, _ := base64.StdEncoding.DecodeString(ch.body["authenticationKey"].(string))
	if err := dev.ActivateIdentityKey(blob, 0); err != nil {
		t.Fatalf("activate the challenge: %v", err)
	}
	r := c.register(regID, tpmToken(t, dev, 0, h.IDScope()+"/registrations/"+regID, "registration"), body)
	if r.status != 200 {
		t.Fatalf("register: %d %s", r.status, r.raw)
	}
	rs := regState(t, r)
	if rs["deviceId"] != "tpm-device" || rs["status"] != RegAssigned {
		t.Fatalf("state %v", rs)
	}
	final, _ := base64.StdEncoding.DecodeString(rs["tpm"].(map[string]any)["authenticationKey"].(string))
	if err := dev.ActivateIdentityKey(final, 0); err != nil {
		t.Fatalf("activate the hub key: %v", err)
	}
	cs := iothub.ConnectionString{HostName: h.Hostname(), DeviceID: "tpm-device"}
	tok := tpmToken(t, dev, 0, iothub.DeviceResource(h.Hostname(), "tpm-device", ""), "")
	d := mustDial(t, h, cs, withPassword(tok))
	if d.getTwin() == nil {
		t.Fatal("no twin")
	}
	if !strings.HasPrefix(tok, "SharedAccessSignature ") {
		t.Fatal(tok)
	}
}
