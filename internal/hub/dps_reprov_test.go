package hub

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"testing"
)

// TestDPSReprovisioning moves a device from hub-a to hub-c by changing its
// enrollment's hubs, under each reprovisioning policy.
func TestDPSReprovisioning(t *testing.T) {
	cases := []struct {
		name     string
		policy   *ReprovisionPolicy
		wantHub  string
		wantSub  string
		wantTags map[string]any
	}{
		{"migrate (default)", nil, "hub-c.localhost", "deviceDataMigrated", map[string]any{"initial": "yes", "ops": "added"}},
		{"reset", &ReprovisionPolicy{UpdateHubAssignment: true}, "hub-c.localhost", "deviceDataReset", map[string]any{"initial": "yes"}},
		{"never", &ReprovisionPolicy{}, "hub-a.localhost", "initialAssignment", map[string]any{"initial": "yes", "ops": "added"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := startDPS(t, Options{Hostname: "hub-a.localhost", LinkedHubs: threeHubs(), DPSRetryAfter: -1})
			spec := EnrollmentSpec{
				Attestation: Attestation{Type: AttestationSymmetricKey}, AllocationPolicy: AllocationStatic,
				IotHubs: []string{"hub-a.localhost"}, ReprovisionPolicy: tc.policy,
				InitialTwin: &InitialTwin{Tags: map[string]any{"initial": "yes"}},
			}
			e, err := h.PutEnrollment(Enrollment{RegistrationID: "mover", EnrollmentSpec: spec}, "")
			if err != nil {
				t.Fatal(err)
			}
			c := newDPSClient(t, h, h.DPSHostname(), nil)
			tok := deviceToken(t, h, "mover", e.Attestation.SymmetricKey.PrimaryKey)
			if r := c.register("mover", tok, nil); r.status != 200 || regState(t, r)["assignedHub"] != "hub-a.localhost" {
				t.Fatalf("first registration: %d %s", r.status, r.raw)
			}
			// the operator adds data to the device in hub-a
			if _, err := h.UpdateTwin("mover", "", TwinPatch{Tags: map[string]any{"ops": "added"}}, false, "*"); err != nil {
				t.Fatal(err)
			}
			e.IotHubs = []string{"hub-c.localhost"}
			if _, err := h.PutEnrollment(e, e.Etag); err != nil {
				t.Fatal(err)
			}
			r := c.register("mover", tok, nil)
			if r.status != 200 {
				t.Fatalf("second registration: %d %s", r.status, r.raw)
			}
			rs := regState(t, r)
			if rs["assignedHub"] != tc.wantHub || rs["substatus"] != tc.wantSub {
				t.Fatalf("got %v/%v, want %s/%s", rs["assignedHub"], rs["substatus"], tc.wantHub, tc.wantSub)
			}
			tw, err := h.LinkedHub(tc.wantHub).Twin("mover", "")
			if err != nil {
				t.Fatal(err)
			}
			if len(tw.Tags) != len(tc.wantTags) || tw.Tags["ops"] != tc.wantTags["ops"] || tw.Tags["initial"] != "yes" {
				t.Errorf("tags in %s: %v, want %v", tc.wantHub, tw.Tags, tc.wantTags)
			}
			if tc.wantHub != "hub-a.localhost" {
				if _, err := h.getIdentity("mover", ""); err == nil {
					t.Error("the device is still in hub-a after moving")
				}
			}
		})
	}
}

// TestDPSReprovisionAfterDelete: a device deleted in its hub registers
// again and is created again, with its enrollment's key.
func TestDPSReprovisionAfterDelete(t *testing.T) {
	h := startDPS(t, Options{DPSRetryAfter: -1})
	e, _ := h.PutEnrollment(Enrollment{RegistrationID: "d1", EnrollmentSpec: EnrollmentSpec{Attestation: Attestation{Type: AttestationSymmetricKey}}}, "")
	c := newDPSClient(t, h, h.DPSHostname(), nil)
	tok := deviceToken(t, h, "d1", e.Attestation.SymmetricKey.PrimaryKey)
	c.register("d1", tok, nil)
	if err := h.DeleteDevice("d1"); err != nil {
		t.Fatal(err)
	}
	if r := c.register("d1", tok, nil); r.status != 200 || regState(t, r)["status"] != RegAssigned {
		t.Fatalf("re-registration: %d %s", r.status, r.raw)
	}
	cs, err := h.ConnectionString("d1", "")
	if err != nil || base64.StdEncoding.EncodeToString(cs.SharedAccessKey) != e.Attestation.SymmetricKey.PrimaryKey {
		t.Fatalf("device not recreated with its key: %v", err)
	}
}

// TestDPSTPMProtocol runs the TPM exchange: the 401 challenge with
// authenticationKey and keyName, the SAS signed with the issued key, and
// the final activation blob that carries the hub key. The activation blob
// here is a stand-in (the key appended to a SHA-256 of the EK), because
// unwrapping a real one needs a TPM; TestDPSTPMWithSWTPM runs the same
// exchange with real blobs against swtpm.
func TestDPSTPMProtocol(t *testing.T) {
	standIn := func(ek, srk, key []byte) ([]byte, error) {
		sum := sha256.Sum256(append(append([]byte{}, ek...), srk...))
		return append(sum[:], key...), nil
	}
	unwrap := func(t *testing.T, ek, srk []byte, b64 string) string {
		blob, err := base64.StdEncoding.DecodeString(b64)
		sum := sha256.Sum256(append(append([]byte{}, ek...), srk...))
		if err != nil || len(blob) != 64 || !bytes.Equal(blob[:32], sum[:]) {
			t.Fatalf("blob not for this TPM: %q", b64)
		}
		return base64.StdEncoding.EncodeToString(blob[32:])
	}
	h := startDPS(t, Options{DPSRetryAfter: -1, TPMActivation: standIn})
	ek, srk := bytes.Repeat([]byte{1}, 64), bytes.Repeat([]byte{2}, 64)
	eks, srks := base64.StdEncoding.EncodeToString(ek), base64.StdEncoding.EncodeToString(srk)
	if _, err := h.PutEnrollment(Enrollment{RegistrationID: "tpm-1", EnrollmentSpec: EnrollmentSpec{Attestation: Attestation{
		Type: AttestationTPM, TPM: &TPMAttestation{EndorsementKey: eks},
	}}}, ""); err != nil {
		t.Fatal(err)
	}
	body := map[string]any{"registrationId": "tpm-1", "tpm": map[string]any{"endorsementKey": eks, "storageRootKey": srks}}
	c := newDPSClient(t, h, h.DPSHostname(), nil)
	path := "/" + h.IDScope() + "/registrations/tpm-1/register"
	ch := c.do(http.MethodPut, path, "", body)
	if ch.status != 401 || ch.body["keyName"] != "registration" || ch.body["authenticationKey"] == nil || ch.body["status"] != nil {
		t.Fatalf("challenge: %d %s", ch.status, ch.raw)
	}
	regKey := unwrap(t, ek, srk, ch.body["authenticationKey"].(string))
	// a wrong EK gets no challenge
	wrong := map[string]any{"registrationId": "tpm-1", "tpm": map[string]any{"endorsementKey": srks, "storageRootKey": srks}}
	if r := c.do(http.MethodPut, path, "", wrong); r.status != 401 || r.body["authenticationKey"] != nil {
		t.Fatalf("foreign EK: %d %s", r.status, r.raw)
	}
	r := c.register("tpm-1", deviceToken(t, h, "tpm-1", regKey), body)
	if r.status != 200 {
		t.Fatalf("register: %d %s", r.status, r.raw)
	}
	rs := regState(t, r)
	hubKey := unwrap(t, ek, srk, rs["tpm"].(map[string]any)["authenticationKey"].(string))
	cs, err := h.ConnectionString("tpm-1", "")
	if err != nil || base64.StdEncoding.EncodeToString(cs.SharedAccessKey) != hubKey {
		t.Fatalf("the hub key is not the one in the blob: %v", err)
	}
	mustDial(t, h, cs).c.Disconnect(0)
}
