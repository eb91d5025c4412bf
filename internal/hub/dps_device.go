package hub

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/twinlet/twinlet/internal/sas"
	"github.com/twinlet/twinlet/internal/tpm/tpmblob"
)

// dpsError is an error the DPS answers in its envelope
// {"errorCode","trackingId","message","timestampUtc"}.
type dpsError struct {
	status int
	code   int
	msg    string
}

func (e *dpsError) Error() string { return fmt.Sprintf("%d: %s", e.code, e.msg) }

func dpsErr(status, code int, format string, a ...any) *dpsError {
	return &dpsError{status, code, fmt.Sprintf(format, a...)}
}

// Error codes of the DPS (the service's, as the SDKs see them).
const (
	dpsBadRequest        = 400004
	dpsNoAPIVersion      = 400001
	dpsNoLinkedHub       = 400208
	dpsUnauthorized      = 401002
	dpsNotFound          = 404201
	dpsEnrollmentMissing = 404202
	dpsRegistrationGone  = 404203
	dpsConflict          = 409201
	dpsPrecondition      = 412002
	dpsTooLarge          = 413001
	dpsThrottled         = 429001
	dpsInternal          = 500001
)

func (d *dps) writeError(w http.ResponseWriter, err error) {
	var de *dpsError
	if !errors.As(err, &de) {
		de = toDPSError(err)
	}
	d.countError(de.code)
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("x-ms-error-code", strconv.Itoa(de.code))
	w.WriteHeader(de.status)
	_ = json.NewEncoder(w).Encode(map[string]any{
		"errorCode":    de.code,
		"trackingId":   trackingID(),
		"message":      de.msg,
		"timestampUtc": time.Now().UTC().Format(time.RFC3339Nano),
	})
}

// toDPSError maps the Go API's errors to the DPS's codes.
func toDPSError(err error) *dpsError {
	switch {
	case errors.Is(err, ErrNotFound):
		return dpsErr(404, dpsNotFound, "%s", err)
	case errors.Is(err, ErrAlreadyExists):
		return dpsErr(409, dpsConflict, "%s", err)
	case errors.Is(err, ErrPreconditionFailed):
		return dpsErr(412, dpsPrecondition, "%s", err)
	case errors.Is(err, ErrInvalid):
		return dpsErr(400, dpsBadRequest, "%s", err)
	case errors.Is(err, ErrThrottled):
		return dpsErr(429, dpsThrottled, "%s", err)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return dpsErr(503, 503001, "%s", err)
	}
	return dpsErr(500, dpsInternal, "%s", err)
}

// validRegistrationID is the service's rule: up to 128 of alphanumerics
// and - . _ :, ending in an alphanumeric or -.
var validRegistrationID = regexp.MustCompile(`^[A-Za-z0-9\-._:]{0,127}[A-Za-z0-9\-]$`)

// deviceAuth is what a device presented: its Authorization header and
// its TLS client certificate chain.
type deviceAuth struct {
	sas   *sas.Token
	certs []*x509.Certificate
}

// deviceRegistration is the body of register and status lookup.
type deviceRegistration struct {
	RegistrationID string `json:"registrationId"`
	TPM            *struct {
		EndorsementKey string `json:"endorsementKey"`
		StorageRootKey string `json:"storageRootKey"`
	} `json:"tpm,omitempty"`
	Payload any `json:"payload,omitempty"`
}

// attested is an enrollment that a device's credentials match.
type attested struct {
	enr      *Enrollment      // individual enrollment, or nil
	grp      *EnrollmentGroup // group, or nil
	spec     EnrollmentSpec
	deviceID string
	auth     Authentication // the identity to create in the hub
	reg      RegistrationState
	verify   func(deviceAuth) error // checks later polls
	tpm      *deviceRegistration    // TPM: EK and SRK to wrap the hub key to
	// challenge is set when the device must first answer a TPM challenge.
	challenge []byte
}

func (d *dps) handleDevice(w http.ResponseWriter, r *http.Request, segs []string) {
	// /{idScope}/registrations/{registrationId}/register
	// /{idScope}/registrations/{registrationId}/operations/{operationId}
	// /{idScope}/registrations/{registrationId}
	kind := ""
	switch {
	case len(segs) == 4 && strings.EqualFold(segs[1], "registrations") && strings.EqualFold(segs[3], "register") && r.Method == http.MethodPut:
		kind = "register"
	case len(segs) == 5 && strings.EqualFold(segs[1], "registrations") && strings.EqualFold(segs[3], "operations") && r.Method == http.MethodGet:
		kind = "operationStatus"
	case len(segs) == 3 && strings.EqualFold(segs[1], "registrations") && r.Method == http.MethodPost:
		kind = "statusLookup"
	default:
		d.writeError(w, dpsErr(404, dpsNotFound, "no such endpoint: %s %s", r.Method, r.URL.Path))
		return
	}
	regID := segs[2]
	d.count(kind, regID)
	if !d.h.faults.admit(opREST) {
		d.writeError(w, dpsErr(429, dpsThrottled, "throttled by fault injection"))
		return
	}
	d.h.faults.delay()
	if !strings.EqualFold(segs[0], d.idScope()) {
		d.writeError(w, dpsErr(404, dpsNotFound, "ID scope %s not found", segs[0]))
		return
	}
	if !validRegistrationID.MatchString(regID) {
		d.writeError(w, dpsErr(400, dpsBadRequest, "registration id %q is not valid (up to 128 of a-z 0-9 - . _ :)", regID))
		return
	}
	auth := deviceAuth{}
	if r.TLS != nil {
		auth.certs = r.TLS.PeerCertificates
	}
	if raw := r.Header.Get("Authorization"); raw != "" {
		tok, err := sas.Parse(raw)
		if err != nil {
			d.writeError(w, dpsErr(401, dpsUnauthorized, "Authorization: %v", err))
			return
		}
		auth.sas = &tok
	}
	var err error
	switch kind {
	case "register":
		err = d.restRegister(w, r, regID, auth)
	case "operationStatus":
		err = d.restOperation(w, regID, segs[4], auth)
	case "statusLookup":
		err = d.restStatusLookup(w, r, regID, auth)
	}
	if err != nil {
		d.h.log.Debug("dps device error", "method", r.Method, "path", r.URL.Path, "error", err)
		d.writeError(w, err)
	}
}

func (d *dps) idScope() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.st.IDScope
}

func readDPSBody(r *http.Request, v any) error {
	if err := readJSON(r, v); err != nil {
		var ae *apiError
		if errors.As(err, &ae) {
			return dpsErr(ae.status, dpsBadRequest, "%s", ae.msg)
		}
		return dpsErr(400, dpsBadRequest, "%v", err)
	}
	return nil
}

func (d *dps) restRegister(w http.ResponseWriter, r *http.Request, regID string, auth deviceAuth) error {
	var body deviceRegistration
	if r.ContentLength != 0 {
		if err := readDPSBody(r, &body); err != nil {
			return err
		}
	}
	if body.RegistrationID != "" && !strings.EqualFold(body.RegistrationID, regID) {
		return dpsErr(400, dpsBadRequest, "body names registration %q, path names %q", body.RegistrationID, regID)
	}
	a, err := d.attest(regID, &body, auth, true)
	if err != nil {
		return err
	}
	if a.challenge != nil {
		d.count("tpmChallenge", "")
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		w.WriteHeader(http.StatusUnauthorized)
		_ = json.NewEncoder(w).Encode(map[string]string{
			"authenticationKey": base64.StdEncoding.EncodeToString(a.challenge),
			"keyName":           "registration",
		})
		return nil
	}
	op, err := d.assign(r.Context(), regID, a, body.Payload, r.URL.Query().Get("forceRegistration") == "true")
	if err != nil {
		return err
	}
	w.Header().Set("Retry-After", d.retryAfter())
	w.Header().Set("Location", r.URL.Path)
	writeJSON(w, http.StatusAccepted, "", map[string]any{"operationId": op.id, "status": RegAssigning})
	return nil
}

func (d *dps) retryAfter() string {
	ra := d.h.opts.DPSRetryAfter
	switch {
	case ra == 0:
		return "3"
	case ra < 0:
		return "0"
	}
	return strconv.Itoa(int((ra + time.Second - 1) / time.Second))
}

func (d *dps) restOperation(w http.ResponseWriter, regID, opID string, auth deviceAuth) error {
	d.mu.Lock()
	op, ok := d.ops[opID]
	d.mu.Unlock()
	if !ok || !strings.EqualFold(op.regID, regID) {
		return dpsErr(404, dpsNotFound, "operation %s of registration %s not found", opID, regID)
	}
	if err := op.verify(auth); err != nil {
		return dpsErr(401, dpsUnauthorized, "%v", err)
	}
	d.mu.Lock()
	assigning := op.polls < d.h.opts.DPSAssigningPolls
	if assigning {
		op.polls++
	}
	res := op.result
	d.mu.Unlock()
	if assigning {
		w.Header().Set("Retry-After", d.retryAfter())
		writeJSON(w, http.StatusAccepted, "", map[string]any{"operationId": op.id, "status": RegAssigning})
		return nil
	}
	writeJSON(w, http.StatusOK, "", map[string]any{"operationId": op.id, "status": res.Status, "registrationState": res})
	return nil
}

func (d *dps) restStatusLookup(w http.ResponseWriter, r *http.Request, regID string, auth deviceAuth) error {
	var body deviceRegistration
	if r.ContentLength != 0 {
		if err := readDPSBody(r, &body); err != nil {
			return err
		}
	}
	if _, err := d.attest(regID, &body, auth, false); err != nil {
		return err
	}
	d.mu.Lock()
	rec, ok := d.st.Registrations[strings.ToLower(regID)]
	var out RegistrationState
	if ok {
		out = *rec
	}
	d.mu.Unlock()
	if !ok {
		return dpsErr(404, dpsRegistrationGone, "registration %s has no record", regID)
	}
	writeJSON(w, http.StatusOK, "", out)
	return nil
}

func unauthorized(format string, a ...any) error {
	return dpsErr(401, dpsUnauthorized, "Unauthorized: "+format, a...)
}

// attest finds the enrollment that the device's credentials match. With
// challenge, a TPM device without a token gets a challenge (a.challenge).
func (d *dps) attest(regID string, body *deviceRegistration, auth deviceAuth, challenge bool) (*attested, error) {
	lower := strings.ToLower(regID)
	d.mu.Lock()
	var enr *Enrollment
	if e, ok := d.st.Enrollments[lower]; ok {
		c := cloneEnrollment(*e)
		enr = &c
	}
	groups := make([]EnrollmentGroup, 0, len(d.st.Groups))
	for _, g := range d.st.Groups {
		groups = append(groups, cloneGroup(*g))
	}
	issued := d.tpm[lower]
	d.mu.Unlock()
	sortGroups(groups)

	switch {
	case len(auth.certs) > 0:
		return d.attestX509(regID, enr, groups, auth)
	case body != nil && body.TPM != nil || enr != nil && enr.Attestation.Type == AttestationTPM && auth.sas != nil:
		return d.attestTPM(regID, enr, body, auth, issued, challenge)
	}
	if auth.sas == nil {
		return nil, unauthorized("no Authorization header, client certificate or TPM endorsement key")
	}
	if auth.sas.KeyName != "registration" {
		return nil, unauthorized("the token's skn must be registration, not %q", auth.sas.KeyName)
	}
	target := d.idScope() + "/registrations/" + regID
	verifyKeys := func(keys []string) error {
		var last error = sas.ErrSignature
		for _, k := range keys {
			raw, err := base64.StdEncoding.DecodeString(k)
			if err != nil || len(raw) == 0 {
				continue
			}
			if last = sas.Verify(*auth.sas, raw, target, time.Now()); last == nil {
				return nil
			}
			if errors.Is(last, sas.ErrExpired) || errors.Is(last, sas.ErrScope) {
				return last
			}
		}
		return last
	}
	if enr != nil {
		if enr.Attestation.Type != AttestationSymmetricKey || enr.Attestation.SymmetricKey == nil {
			return nil, unauthorized("enrollment %s attests by %s, not by a symmetric key", regID, enr.Attestation.Type)
		}
		sk := *enr.Attestation.SymmetricKey
		keys := []string{sk.PrimaryKey, sk.SecondaryKey}
		if err := verifyKeys(keys); err != nil {
			return nil, unauthorized("%v", err)
		}
		a := &attested{enr: enr, spec: enr.EnrollmentSpec, deviceID: enr.DeviceID}
		a.auth = Authentication{Type: AuthSAS, SymmetricKey: sk}
		a.verify = func(p deviceAuth) error { return verifySASAuth(p, target, keys) }
		a.reg.SymmetricKey = &RegSymmetric{}
		return a, nil
	}
	var last error
	for i := range groups {
		g := &groups[i]
		if g.Attestation.Type != AttestationSymmetricKey || g.Attestation.SymmetricKey == nil {
			continue
		}
		var keys []string
		for _, gk := range []string{g.Attestation.SymmetricKey.PrimaryKey, g.Attestation.SymmetricKey.SecondaryKey} {
			if gk == "" {
				continue
			}
			if k, err := DeriveDeviceKey(gk, regID); err == nil {
				keys = append(keys, k)
			}
		}
		if last = verifyKeys(keys); last != nil {
			continue
		}
		a := &attested{grp: g, spec: g.EnrollmentSpec}
		a.auth = Authentication{Type: AuthSAS, SymmetricKey: SymmetricKey{PrimaryKey: keys[0], SecondaryKey: keys[len(keys)-1]}}
		a.verify = func(p deviceAuth) error { return verifySASAuth(p, target, keys) }
		a.reg.SymmetricKey = &RegSymmetric{EnrollmentGroupID: g.EnrollmentGroupID}
		return a, nil
	}
	if last != nil && (errors.Is(last, sas.ErrExpired) || errors.Is(last, sas.ErrScope)) {
		return nil, unauthorized("%v", last)
	}
	return nil, unauthorized("no enrollment or enrollment group matches registration %s and its key", regID)
}

func verifySASAuth(p deviceAuth, target string, keys []string) error {
	if p.sas == nil {
		return errors.New("no Authorization header")
	}
	var last error = sas.ErrSignature
	for _, k := range keys {
		raw, err := base64.StdEncoding.DecodeString(k)
		if err != nil || len(raw) == 0 {
			continue
		}
		if last = sas.Verify(*p.sas, raw, target, time.Now()); last == nil {
			return nil
		}
	}
	return last
}

func certInfo(c *x509.Certificate) *X509CertificateInfo {
	if c == nil {
		return nil
	}
	s1, s256 := sha1.Sum(c.Raw), sha256.Sum256(c.Raw)
	return &X509CertificateInfo{
		SubjectName:      c.Subject.String(),
		SHA1Thumbprint:   strings.ToUpper(hex.EncodeToString(s1[:])),
		SHA256Thumbprint: strings.ToUpper(hex.EncodeToString(s256[:])),
		IssuerName:       c.Issuer.String(),
		NotBeforeUtc:     c.NotBefore.UTC(),
		NotAfterUtc:      c.NotAfter.UTC(),
		SerialNumber:     strings.ToUpper(c.SerialNumber.Text(16)),
		Version:          c.Version,
	}
}

func (d *dps) attestX509(regID string, enr *Enrollment, groups []EnrollmentGroup, auth deviceAuth) (*attested, error) {
	leaf := auth.certs[0]
	if !strings.EqualFold(leaf.Subject.CommonName, regID) {
		return nil, unauthorized("client certificate CN %q is not the registration id %q", leaf.Subject.CommonName, regID)
	}
	if now := time.Now(); now.Before(leaf.NotBefore) || now.After(leaf.NotAfter) {
		return nil, unauthorized("client certificate is not valid now")
	}
	thumb := sha256.Sum256(leaf.Raw)
	leafThumb := strings.ToUpper(hex.EncodeToString(thumb[:]))
	verify := func(p deviceAuth) error {
		if len(p.certs) == 0 || !bytes.Equal(p.certs[0].Raw, leaf.Raw) {
			return errors.New("poll without the registering client certificate")
		}
		return nil
	}
	if enr != nil {
		x := enr.Attestation.X509
		if enr.Attestation.Type != AttestationX509 || x == nil || x.ClientCertificates == nil {
			return nil, unauthorized("enrollment %s does not pin an X.509 client certificate", regID)
		}
		for _, c := range []*X509CertificateWithInfo{x.ClientCertificates.Primary, x.ClientCertificates.Secondary} {
			if c == nil {
				continue
			}
			pinned, err := parseCert(c.Certificate)
			if err != nil || !bytes.Equal(pinned.Raw, leaf.Raw) {
				continue
			}
			a := &attested{enr: enr, spec: enr.EnrollmentSpec, deviceID: enr.DeviceID, verify: verify}
			a.auth = Authentication{Type: AuthSelfSigned, X509Thumbprint: X509Thumbprint{PrimaryThumbprint: &leafThumb}}
			a.reg.X509 = &RegX509{CertificateInfo: certInfo(leaf)}
			return a, nil
		}
		return nil, unauthorized("client certificate is not the one enrollment %s pins", regID)
	}
	inter := x509.NewCertPool()
	for _, c := range auth.certs[1:] {
		inter.AddCert(c)
	}
	for i := range groups {
		g := &groups[i]
		x := g.Attestation.X509
		if g.Attestation.Type != AttestationX509 || x == nil || x.SigningCertificates == nil {
			continue
		}
		for _, c := range []*X509CertificateWithInfo{x.SigningCertificates.Primary, x.SigningCertificates.Secondary} {
			if c == nil {
				continue
			}
			signer, err := parseCert(c.Certificate)
			if err != nil {
				continue
			}
			roots := x509.NewCertPool()
			roots.AddCert(signer)
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
				continue
			}
			a := &attested{grp: g, spec: g.EnrollmentSpec, verify: verify}
			a.auth = Authentication{Type: AuthCA}
			a.reg.X509 = &RegX509{CertificateInfo: certInfo(leaf), EnrollmentGroupID: g.EnrollmentGroupID, SigningCertificateInfo: certInfo(signer)}
			return a, nil
		}
	}
	return nil, unauthorized("no enrollment or enrollment group accepts the client certificate of %s", regID)
}

func (d *dps) attestTPM(regID string, enr *Enrollment, body *deviceRegistration, auth deviceAuth, issued []byte, challenge bool) (*attested, error) {
	if enr == nil || enr.Attestation.Type != AttestationTPM || enr.Attestation.TPM == nil {
		return nil, unauthorized("no TPM enrollment for registration %s", regID)
	}
	enrolledEK, err := base64.StdEncoding.DecodeString(enr.Attestation.TPM.EndorsementKey)
	if err != nil {
		return nil, dpsErr(500, dpsInternal, "enrollment %s: endorsement key is not base64", regID)
	}
	var ek, srk []byte
	if body != nil && body.TPM != nil {
		if ek, err = base64.StdEncoding.DecodeString(body.TPM.EndorsementKey); err != nil {
			return nil, dpsErr(400, dpsBadRequest, "tpm.endorsementKey is not base64")
		}
		if srk, err = base64.StdEncoding.DecodeString(body.TPM.StorageRootKey); err != nil || len(srk) == 0 {
			return nil, dpsErr(400, dpsBadRequest, "tpm.storageRootKey is missing or not base64")
		}
		if !bytes.Equal(ek, enrolledEK) {
			return nil, unauthorized("the endorsement key is not the one enrollment %s holds", regID)
		}
	}
	target := d.idScope() + "/registrations/" + regID
	if auth.sas == nil {
		if !challenge || srk == nil {
			return nil, unauthorized("TPM registration %s needs a token signed with the issued key", regID)
		}
		key := make([]byte, 32)
		_, _ = rand.Read(key)
		blob, err := d.activation(ek, srk, key)
		if err != nil {
			return nil, err
		}
		d.mu.Lock()
		d.tpm[strings.ToLower(regID)] = key
		d.mu.Unlock()
		return &attested{challenge: blob}, nil
	}
	if issued == nil {
		return nil, unauthorized("no key was issued to %s: register without a token first", regID)
	}
	keys := []string{base64.StdEncoding.EncodeToString(issued)}
	if err := verifySASAuth(auth, target, keys); err != nil {
		return nil, unauthorized("%v", err)
	}
	a := &attested{enr: enr, spec: enr.EnrollmentSpec, deviceID: enr.DeviceID}
	a.verify = func(p deviceAuth) error { return verifySASAuth(p, target, keys) }
	if ek != nil {
		a.tpm = body
	}
	return a, nil
}

// activation builds a TPM activation blob that only the TPM holding ek
// (with srk) can unwrap into key.
func (d *dps) activation(ek, srk, key []byte) ([]byte, error) {
	mk := d.h.opts.TPMActivation
	if mk == nil {
		mk = defaultTPMActivation
	}
	blob, err := mk(ek, srk, key)
	if err != nil {
		return nil, dpsErr(400, dpsBadRequest, "cannot build the TPM activation blob: %v", err)
	}
	return blob, nil
}

// defaultTPMActivation builds TPM activation blobs when
// Options.TPMActivation is nil: the software builder of internal/tpm/tpmblob.
var defaultTPMActivation = tpmblob.Make

func hmacSHA256(key, msg []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(msg)
	return m.Sum(nil)
}

func newOperationID() string {
	b := make([]byte, 24)
	_, _ = rand.Read(b)
	x := hex.EncodeToString(b)
	return "4." + x[:16] + "." + x[16:24] + "-" + x[24:28] + "-" + x[28:32] + "-" + x[32:36] + "-" + x[36:48]
}
