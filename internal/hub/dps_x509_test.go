package hub

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"net/http"
	"testing"
	"time"
)

// testCert issues a certificate for cn, self-signed when parent is nil.
func testCert(t testing.TB, cn string, isCA bool, parent *tls.Certificate) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serialNumber(), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if isCA {
		tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
		tmpl.KeyUsage |= x509.KeyUsageCertSign
		tmpl.ExtKeyUsage = nil
	}
	signer, signerKey := tmpl, any(key)
	if parent != nil {
		signer, signerKey = parent.Leaf, parent.PrivateKey
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &key.PublicKey, signerKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	c := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
	if parent != nil {
		c.Certificate = append(c.Certificate, parent.Certificate...)
	}
	return c
}

func certPEM(c tls.Certificate) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]}))
}

func TestDPSX509Individual(t *testing.T) {
	h := startDPS(t, Options{DPSRetryAfter: -1})
	leaf := testCert(t, "cam-9", false, nil)
	if _, err := h.PutEnrollment(Enrollment{RegistrationID: "cam-9", EnrollmentSpec: EnrollmentSpec{Attestation: Attestation{
		Type: AttestationX509, X509: &X509Attestation{ClientCertificates: &X509Certificates{Primary: &X509CertificateWithInfo{Certificate: certPEM(leaf)}}},
	}}}, ""); err != nil {
		t.Fatal(err)
	}
	dev := newDPSClient(t, h, h.DPSHostname(), &leaf)
	r := dev.register("cam-9", "", nil)
	if r.status != 200 {
		t.Fatalf("register: %d %s", r.status, r.raw)
	}
	rs := regState(t, r)
	ci := rs["x509"].(map[string]any)["certificateInfo"].(map[string]any)
	if rs["status"] != RegAssigned || ci["subjectName"] != "CN=cam-9" || ci["sha256Thumbprint"] == "" {
		t.Fatalf("state %v", rs)
	}
	id, _ := h.getIdentity("cam-9", "")
	if id.Authentication.Type != AuthSelfSigned {
		t.Fatalf("device auth %s", id.Authentication.Type)
	}
	cs, _ := h.ConnectionString("cam-9", "")
	cfg := h.TLSConfig()
	cfg.Certificates = []tls.Certificate{leaf}
	mustDial(t, h, cs, withTLS(cfg)).c.Disconnect(0)

	// Another certificate with the same CN is refused, and polls need the
	// registering certificate.
	other := testCert(t, "cam-9", false, nil)
	if r := newDPSClient(t, h, h.DPSHostname(), &other).register("cam-9", "", nil); r.status != 401 {
		t.Errorf("foreign certificate: %d %s", r.status, r.raw)
	}
	// A certificate whose CN is not the registration id is refused.
	if r := newDPSClient(t, h, h.DPSHostname(), &leaf).register("cam-10", "", nil); r.status != 401 {
		t.Errorf("CN mismatch: %d %s", r.status, r.raw)
	}
}

func TestDPSX509Group(t *testing.T) {
	h := startDPS(t, Options{DPSRetryAfter: -1})
	root := testCert(t, "fleet root", true, nil)
	inter := testCert(t, "fleet intermediate", true, &root)
	inter.Certificate = inter.Certificate[:1]
	leaf := testCert(t, "meter-1", false, &inter)
	if _, err := h.PutEnrollmentGroup(EnrollmentGroup{EnrollmentGroupID: "meters", EnrollmentSpec: EnrollmentSpec{Attestation: Attestation{
		Type: AttestationX509, X509: &X509Attestation{SigningCertificates: &X509Certificates{Primary: &X509CertificateWithInfo{Certificate: certPEM(root)}}},
	}}}, ""); err != nil {
		t.Fatal(err)
	}
	r := newDPSClient(t, h, h.DPSHostname(), &leaf).register("meter-1", "", nil)
	if r.status != 200 {
		t.Fatalf("register: %d %s", r.status, r.raw)
	}
	rs := regState(t, r)
	x := rs["x509"].(map[string]any)
	if x["enrollmentGroupId"] != "meters" || x["signingCertificateInfo"].(map[string]any)["subjectName"] != "CN=fleet root" {
		t.Fatalf("state %v", rs)
	}
	id, _ := h.getIdentity("meter-1", "")
	if id.Authentication.Type != AuthCA {
		t.Fatalf("device auth %s", id.Authentication.Type)
	}
	// The hub accepts the CA-signed device with its chain.
	cs, _ := h.ConnectionString("meter-1", "")
	cfg := h.TLSConfig()
	cfg.Certificates = []tls.Certificate{leaf}
	mustDial(t, h, cs, withTLS(cfg)).c.Disconnect(0)

	// A certificate from another CA is refused by the DPS and the hub.
	stranger := testCert(t, "meter-2", false, nil)
	if r := newDPSClient(t, h, h.DPSHostname(), &stranger).register("meter-2", "", nil); r.status != 401 {
		t.Errorf("stranger: %d %s", r.status, r.raw)
	}
	if err := h.verifyCAChain([]*x509.Certificate{stranger.Leaf}); err == nil {
		t.Error("hub trusts a certificate of no enrolled CA")
	}
	// An enrollment with a certificate that is not one is refused.
	svc := newDPSClient(t, h, h.DPSHostname(), nil)
	bad := svc.do(http.MethodPut, "/enrollmentGroups/bad", serviceToken(h), map[string]any{
		"attestation": map[string]any{"type": "x509", "x509": map[string]any{"signingCertificates": map[string]any{"primary": map[string]any{"certificate": "not a cert"}}}},
	})
	if bad.status != 400 {
		t.Errorf("bad certificate: %d %s", bad.status, bad.raw)
	}
}
