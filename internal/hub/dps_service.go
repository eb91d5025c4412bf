package hub

import (
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/twinlet/twinlet/internal/sas"
)

func randRead(b []byte) (int, error)     { return rand.Read(b) }
func encodeB64(b []byte) string          { return base64.StdEncoding.EncodeToString(b) }
func decodeB64(s string) ([]byte, error) { return base64.StdEncoding.DecodeString(s) }
func sortGroups(gs []EnrollmentGroup) {
	sort.Slice(gs, func(i, j int) bool { return gs[i].EnrollmentGroupID < gs[j].EnrollmentGroupID })
}
func redactEnrollment(e Enrollment) Enrollment {
	e.EnrollmentSpec = redactSpec(e.EnrollmentSpec)
	return e
}
func redactGroup(g EnrollmentGroup) EnrollmentGroup {
	g.EnrollmentSpec = redactSpec(g.EnrollmentSpec)
	return g
}

// redactSpec drops the keys of an enrollment sent to a webhook.
func redactSpec(s EnrollmentSpec) EnrollmentSpec {
	if s.Attestation.SymmetricKey != nil {
		s.Attestation.SymmetricKey = &SymmetricKey{}
	}
	return s
}

// cloneEnrollment deep-copies through JSON (enrollments are small).
func cloneEnrollment(e Enrollment) Enrollment {
	var out Enrollment
	b, _ := json.Marshal(e)
	_ = json.Unmarshal(b, &out)
	return out
}

func cloneGroup(g EnrollmentGroup) EnrollmentGroup {
	var out EnrollmentGroup
	b, _ := json.Marshal(g)
	_ = json.Unmarshal(b, &out)
	return out
}

// parseCert reads a PEM or base64 DER certificate.
func parseCert(s string) (*x509.Certificate, error) {
	s = strings.TrimSpace(s)
	if blk, _ := pem.Decode([]byte(s)); blk != nil {
		return x509.ParseCertificate(blk.Bytes)
	}
	der, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, errors.New("certificate is neither PEM nor base64 DER")
	}
	return x509.ParseCertificate(der)
}

// hostHandler chooses the DPS or the hub by the request's host name: the
// Host header, or the TLS server name when the Host header names neither
// (a client that dials an address).
func (h *Hub) hostHandler(hub http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		name := r.Host
		if host, _, err := net.SplitHostPort(name); err == nil {
			name = host
		}
		pick := func(n string) http.Handler {
			if h.dps != nil && strings.EqualFold(n, h.dps.hostname) {
				return h.dps
			}
			if c := h.hubByHost(n); c != nil {
				if c == h {
					return hub
				}
				return c.handler
			}
			return nil
		}
		if hd := pick(name); hd != nil {
			hd.ServeHTTP(w, r)
			return
		}
		if r.TLS != nil {
			if hd := pick(r.TLS.ServerName); hd != nil {
				hd.ServeHTTP(w, r)
				return
			}
		}
		hub.ServeHTTP(w, r)
	})
}

// ServeHTTP serves the DPS: the device API under /{idScope}/ and the
// service API under /enrollments, /enrollmentGroups and /registrations.
func (d *dps) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Query().Get("api-version") == "" {
		d.writeError(w, dpsErr(400, dpsNoAPIVersion, "the api-version query parameter is required"))
		return
	}
	segs := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	// Paths are case-insensitive on the service (azure-iot-provisioning-
	// service asks for /enrollmentgroups/).
	switch strings.ToLower(segs[0]) {
	case "enrollments", "enrollmentgroups", "registrations", "_twinhub":
		d.handleService(w, r, segs)
	default:
		d.handleDevice(w, r, segs)
	}
}

// authorizeService verifies a provisioningserviceowner token for the DPS
// host name.
func (d *dps) authorizeService(r *http.Request) error {
	raw := r.Header.Get("Authorization")
	if raw == "" {
		return dpsErr(401, dpsUnauthorized, "missing Authorization header")
	}
	tok, err := sas.Parse(raw)
	if err != nil {
		return dpsErr(401, dpsUnauthorized, "%v", err)
	}
	if tok.KeyName != DPSServicePolicy {
		return dpsErr(401, dpsUnauthorized, "unknown policy %q (twinhub's DPS has %s)", tok.KeyName, DPSServicePolicy)
	}
	d.mu.Lock()
	keys := []string{d.st.PrimaryKey, d.st.SecondaryKey}
	d.mu.Unlock()
	var verr error
	for _, k := range keys {
		key, _ := base64.StdEncoding.DecodeString(k)
		if verr = sas.Verify(tok, key, d.hostname, time.Now()); verr == nil {
			return nil
		}
	}
	return dpsErr(401, dpsUnauthorized, "%v", verr)
}

func (d *dps) handleService(w http.ResponseWriter, r *http.Request, segs []string) {
	d.count("service", "")
	if err := d.authorizeService(r); err != nil {
		d.writeError(w, err)
		return
	}
	if err := d.serveService(w, r, segs); err != nil {
		d.h.log.Debug("dps service error", "method", r.Method, "path", r.URL.Path, "error", err)
		d.writeError(w, err)
	}
	d.saveLogged()
}

func (d *dps) serveService(w http.ResponseWriter, r *http.Request, segs []string) error {
	m := r.Method
	ifMatch := normalizeIfMatch(r.Header.Get("If-Match"))
	n := len(segs)
	k := make([]string, n+3) // keywords, lower case; ids stay in segs
	for i, sg := range segs {
		k[i] = strings.ToLower(sg)
	}
	switch {
	case k[0] == "_twinhub" && n == 2 && k[1] == "stats" && m == http.MethodGet:
		writeJSON(w, http.StatusOK, "", d.h.DPSStats())
		return nil
	case k[0] == "_twinhub" && n == 2 && k[1] == "stats" && m == http.MethodDelete:
		d.h.ResetDPSStats()
		w.WriteHeader(http.StatusNoContent)
		return nil

	case k[0] == "enrollments" && n == 2 && k[1] == "query" && m == http.MethodPost:
		return d.restQuery(w, r, "Enrollment", d.listEnrollments())
	case k[0] == "enrollments" && n == 1 && m == http.MethodPost:
		return d.restBulk(w, r)
	case k[0] == "enrollments" && n == 2 && m == http.MethodPut:
		var e Enrollment
		if err := readDPSBody(r, &e); err != nil {
			return err
		}
		if e.RegistrationID != "" && !strings.EqualFold(e.RegistrationID, segs[1]) {
			return dpsErr(400, dpsBadRequest, "body names enrollment %q, path names %q", e.RegistrationID, segs[1])
		}
		e.RegistrationID = segs[1]
		if ifMatch == "" {
			ifMatch = e.Etag
		}
		out, err := d.putEnrollment(e, ifMatch, putUpsert)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, out.Etag, out)
		return nil
	case k[0] == "enrollments" && n == 2 && m == http.MethodGet:
		e, err := d.getEnrollment(segs[1])
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, e.Etag, e)
		return nil
	case k[0] == "enrollments" && n == 2 && m == http.MethodDelete:
		if err := d.deleteEnrollment(segs[1], ifMatch); err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	case k[0] == "enrollments" && n == 3 && k[2] == "attestationmechanism" && m == http.MethodPost:
		e, err := d.getEnrollment(segs[1])
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, "", e.Attestation)
		return nil

	case k[0] == "enrollmentgroups" && n == 2 && k[1] == "query" && m == http.MethodPost:
		return d.restQuery(w, r, "EnrollmentGroup", d.listGroups())
	case k[0] == "enrollmentgroups" && n == 2 && m == http.MethodPut:
		var g EnrollmentGroup
		if err := readDPSBody(r, &g); err != nil {
			return err
		}
		if g.EnrollmentGroupID != "" && g.EnrollmentGroupID != segs[1] {
			return dpsErr(400, dpsBadRequest, "body names group %q, path names %q", g.EnrollmentGroupID, segs[1])
		}
		g.EnrollmentGroupID = segs[1]
		if ifMatch == "" {
			ifMatch = g.Etag
		}
		out, err := d.putGroup(g, ifMatch)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, out.Etag, out)
		return nil
	case k[0] == "enrollmentgroups" && n == 2 && m == http.MethodGet:
		g, err := d.getGroup(segs[1])
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, g.Etag, g)
		return nil
	case k[0] == "enrollmentgroups" && n == 2 && m == http.MethodDelete:
		if err := d.deleteGroup(segs[1], ifMatch); err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	case k[0] == "enrollmentgroups" && n == 3 && k[2] == "attestationmechanism" && m == http.MethodPost:
		g, err := d.getGroup(segs[1])
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, "", g.Attestation)
		return nil

	case k[0] == "registrations" && n == 2 && m == http.MethodGet:
		reg, err := d.h.Registration(segs[1])
		if err != nil {
			return dpsErr(404, dpsRegistrationGone, "registration %s not found", segs[1])
		}
		writeJSON(w, http.StatusOK, reg.Etag, reg)
		return nil
	case k[0] == "registrations" && n == 2 && m == http.MethodDelete:
		return d.restDeleteRegistration(w, segs[1], ifMatch)
	case k[0] == "registrations" && n == 3 && k[2] == "query" && m == http.MethodPost:
		var items []any
		for _, reg := range d.h.Registrations() {
			if reg.groupID() == segs[1] {
				items = append(items, reg)
			}
		}
		return d.restQuery(w, r, "DeviceRegistration", items)
	}
	return dpsErr(404, dpsNotFound, "no such endpoint: %s %s", m, r.URL.Path)
}

// groupID is the enrollment group a registration came through.
func (r RegistrationState) groupID() string {
	switch {
	case r.SymmetricKey != nil:
		return r.SymmetricKey.EnrollmentGroupID
	case r.X509 != nil:
		return r.X509.EnrollmentGroupID
	}
	return ""
}

func (d *dps) restDeleteRegistration(w http.ResponseWriter, id, ifMatch string) error {
	d.mu.Lock()
	lower := strings.ToLower(id)
	reg, ok := d.st.Registrations[lower]
	if !ok {
		d.mu.Unlock()
		return dpsErr(404, dpsRegistrationGone, "registration %s not found", id)
	}
	if !etagMatches(ifMatch, reg.Etag) {
		d.mu.Unlock()
		return dpsErr(412, dpsPrecondition, "registration %s: etag does not match", id)
	}
	delete(d.st.Registrations, lower)
	if e := d.st.Enrollments[lower]; e != nil {
		e.RegistrationState = nil
	}
	d.changedLocked()
	d.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// restQuery answers a query (only "*" is supported, as the SDKs send) one
// page at a time: x-ms-max-item-count asks for a page size, x-ms-continuation
// carries where the next page starts.
func (d *dps) restQuery(w http.ResponseWriter, r *http.Request, itemType string, items []any) error {
	if r.ContentLength != 0 {
		var q struct {
			Query string `json:"query"`
		}
		if err := readDPSBody(r, &q); err != nil {
			return err
		}
		if s := strings.TrimSpace(q.Query); s != "" && s != "*" && !strings.EqualFold(s, "select * from enrollments") {
			return dpsErr(400, dpsBadRequest, "twinhub's DPS supports only the query \"*\", not %q", q.Query)
		}
	}
	size := 100
	if s := r.Header.Get("x-ms-max-item-count"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 {
			return dpsErr(400, dpsBadRequest, "x-ms-max-item-count %q is not a positive number", s)
		}
		size = min(n, 1000)
	}
	start := 0
	if c := r.Header.Get("x-ms-continuation"); c != "" {
		b, err := base64.RawURLEncoding.DecodeString(c)
		n, err2 := strconv.Atoi(strings.TrimPrefix(string(b), "offset:"))
		if err != nil || err2 != nil || n < 0 {
			return dpsErr(400, dpsBadRequest, "x-ms-continuation %q is not one this DPS gave", c)
		}
		start = min(n, len(items))
	}
	end := min(start+size, len(items))
	page := items[start:end]
	if page == nil {
		page = []any{}
	}
	if end < len(items) {
		w.Header().Set("x-ms-continuation", base64.RawURLEncoding.EncodeToString([]byte("offset:"+strconv.Itoa(end))))
	}
	w.Header().Set("x-ms-item-type", itemType)
	writeJSON(w, http.StatusOK, "", page)
	return nil
}

func (d *dps) listEnrollments() []any {
	d.mu.Lock()
	defer d.mu.Unlock()
	keys := make([]string, 0, len(d.st.Enrollments))
	for k := range d.st.Enrollments {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]any, 0, len(keys))
	for _, k := range keys {
		out = append(out, cloneEnrollment(*d.st.Enrollments[k]))
	}
	return out
}

func (d *dps) listGroups() []any {
	d.mu.Lock()
	defer d.mu.Unlock()
	keys := make([]string, 0, len(d.st.Groups))
	for k := range d.st.Groups {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]any, 0, len(keys))
	for _, k := range keys {
		out = append(out, cloneGroup(*d.st.Groups[k]))
	}
	return out
}

// put modes of putEnrollment.
const (
	putUpsert = iota // create, or replace when If-Match matches (or is empty)
	putCreate        // create only
	putUpdate        // replace only
)

// normalizeSpec checks an enrollment's common part and fills defaults:
// generated symmetric keys, the provisioning status.
func normalizeSpec(s *EnrollmentSpec, what string) error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%s: %s: %w", what, fmt.Sprintf(format, a...), ErrInvalid)
	}
	switch s.ProvisioningStatus {
	case "":
		s.ProvisioningStatus = "enabled"
	case "enabled", "disabled":
	default:
		return bad("provisioningStatus %q is not enabled or disabled", s.ProvisioningStatus)
	}
	a := &s.Attestation
	switch a.Type {
	case AttestationSymmetricKey:
		if a.SymmetricKey == nil {
			a.SymmetricKey = &SymmetricKey{}
		}
		for _, k := range []*string{&a.SymmetricKey.PrimaryKey, &a.SymmetricKey.SecondaryKey} {
			if *k == "" {
				b := make([]byte, 64)
				_, _ = rand.Read(b)
				*k = base64.StdEncoding.EncodeToString(b)
				continue
			}
			if b, err := base64.StdEncoding.DecodeString(*k); err != nil || len(b) < 16 || len(b) > 64 {
				return bad("attestation.symmetricKey keys must be base64 of 16 to 64 bytes")
			}
		}
		a.TPM, a.X509 = nil, nil
	case AttestationX509:
		if a.X509 == nil {
			return bad("attestation.x509 is missing")
		}
		if a.X509.CAReferences != nil {
			return bad("attestation.x509.caReferences needs the service's certificate registry, which twinhub does not have: use signingCertificates")
		}
		for name, cs := range map[string]*X509Certificates{"clientCertificates": a.X509.ClientCertificates, "signingCertificates": a.X509.SigningCertificates} {
			if cs == nil {
				continue
			}
			if cs.Primary == nil {
				return bad("attestation.x509.%s.primary is missing", name)
			}
			for _, c := range []*X509CertificateWithInfo{cs.Primary, cs.Secondary} {
				if c == nil {
					continue
				}
				cert, err := parseCert(c.Certificate)
				if err != nil {
					return bad("attestation.x509.%s: %v", name, err)
				}
				c.Info = certInfo(cert)
			}
		}
		a.TPM, a.SymmetricKey = nil, nil
	case AttestationTPM:
		if a.TPM == nil || a.TPM.EndorsementKey == "" {
			return bad("attestation.tpm.endorsementKey is missing")
		}
		if _, err := base64.StdEncoding.DecodeString(a.TPM.EndorsementKey); err != nil {
			return bad("attestation.tpm.endorsementKey is not base64")
		}
		a.X509, a.SymmetricKey = nil, nil
	default:
		return bad("attestation.type %q is not symmetricKey, x509 or tpm", a.Type)
	}
	switch strings.ToLower(s.AllocationPolicy) {
	case "", "hashed", "static", "custom":
	case "geolatency":
		s.AllocationPolicy = AllocationGeoLatency
	default:
		return bad("allocationPolicy %q is not hashed, geoLatency, static or custom", s.AllocationPolicy)
	}
	if strings.EqualFold(s.AllocationPolicy, AllocationCustom) && (s.CustomAllocationDefinition == nil || s.CustomAllocationDefinition.WebhookURL == "") {
		return bad("allocationPolicy custom needs customAllocationDefinition.webhookUrl")
	}
	if s.InitialTwin != nil {
		if err := checkKeysAndValues(s.InitialTwin.Tags, "initialTwin.tags"); err != nil {
			return bad("%v", err)
		}
		if s.InitialTwin.Properties != nil {
			if err := checkKeysAndValues(s.InitialTwin.Properties.Desired, "initialTwin.properties.desired"); err != nil {
				return bad("%v", err)
			}
		}
	}
	return nil
}

func (d *dps) putEnrollment(e Enrollment, ifMatch string, mode int) (Enrollment, error) {
	if !validRegistrationID.MatchString(e.RegistrationID) {
		return Enrollment{}, fmt.Errorf("registration id %q: %w", e.RegistrationID, ErrInvalid)
	}
	if e.DeviceID != "" && !validID.MatchString(e.DeviceID) {
		return Enrollment{}, fmt.Errorf("device id %q: %w", e.DeviceID, ErrInvalid)
	}
	if e.Attestation.Type == AttestationX509 && e.Attestation.X509 != nil && e.Attestation.X509.ClientCertificates == nil {
		return Enrollment{}, fmt.Errorf("enrollment %s: attestation.x509.clientCertificates is missing: %w", e.RegistrationID, ErrInvalid)
	}
	if err := normalizeSpec(&e.EnrollmentSpec, "enrollment "+e.RegistrationID); err != nil {
		return Enrollment{}, err
	}
	now := time.Now().UTC()
	lower := strings.ToLower(e.RegistrationID)
	d.mu.Lock()
	defer d.mu.Unlock()
	old, exists := d.st.Enrollments[lower]
	switch {
	case exists && mode == putCreate:
		return Enrollment{}, fmt.Errorf("enrollment %s: %w", e.RegistrationID, ErrAlreadyExists)
	case !exists && mode == putUpdate:
		return Enrollment{}, fmt.Errorf("enrollment %s: %w", e.RegistrationID, ErrNotFound)
	case exists && !etagMatches(ifMatch, old.Etag):
		return Enrollment{}, fmt.Errorf("enrollment %s etag: %w", e.RegistrationID, ErrPreconditionFailed)
	case !exists && ifMatch != "" && ifMatch != "*":
		return Enrollment{}, fmt.Errorf("enrollment %s: %w", e.RegistrationID, ErrNotFound)
	}
	e.CreatedDateTimeUtc, e.LastUpdatedDateTimeUtc = now, now
	e.RegistrationState = nil
	if exists {
		e.CreatedDateTimeUtc = old.CreatedDateTimeUtc
		e.RegistrationState = old.RegistrationState
	} else if reg := d.st.Registrations[lower]; reg != nil && reg.groupID() == "" {
		r := *reg
		e.RegistrationState = &r
	}
	e.Etag = newEtag()
	c := cloneEnrollment(e)
	d.st.Enrollments[lower] = &c
	d.changedLocked()
	return e, nil
}

func (d *dps) getEnrollment(id string) (Enrollment, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	e, ok := d.st.Enrollments[strings.ToLower(id)]
	if !ok {
		return Enrollment{}, dpsErr(404, dpsEnrollmentMissing, "enrollment %s not found", id)
	}
	return cloneEnrollment(*e), nil
}

func (d *dps) deleteEnrollment(id, ifMatch string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	lower := strings.ToLower(id)
	e, ok := d.st.Enrollments[lower]
	if !ok {
		return dpsErr(404, dpsEnrollmentMissing, "enrollment %s not found", id)
	}
	if !etagMatches(ifMatch, e.Etag) {
		return dpsErr(412, dpsPrecondition, "enrollment %s: etag does not match", id)
	}
	delete(d.st.Enrollments, lower)
	delete(d.tpm, lower)
	d.changedLocked()
	return nil
}

var validGroupID = regexp.MustCompile(`^[A-Za-z0-9\-._:]{1,128}$`)

func (d *dps) putGroup(g EnrollmentGroup, ifMatch string) (EnrollmentGroup, error) {
	if !validGroupID.MatchString(g.EnrollmentGroupID) {
		return EnrollmentGroup{}, fmt.Errorf("enrollment group id %q: %w", g.EnrollmentGroupID, ErrInvalid)
	}
	if g.Attestation.Type == AttestationTPM {
		return EnrollmentGroup{}, fmt.Errorf("enrollment group %s: TPM attestation is for individual enrollments only: %w", g.EnrollmentGroupID, ErrInvalid)
	}
	if g.Attestation.Type == AttestationX509 && g.Attestation.X509 != nil && g.Attestation.X509.SigningCertificates == nil && g.Attestation.X509.CAReferences == nil {
		return EnrollmentGroup{}, fmt.Errorf("enrollment group %s: attestation.x509.signingCertificates is missing: %w", g.EnrollmentGroupID, ErrInvalid)
	}
	if err := normalizeSpec(&g.EnrollmentSpec, "enrollment group "+g.EnrollmentGroupID); err != nil {
		return EnrollmentGroup{}, err
	}
	now := time.Now().UTC()
	d.mu.Lock()
	defer d.mu.Unlock()
	old, exists := d.st.Groups[g.EnrollmentGroupID]
	switch {
	case exists && !etagMatches(ifMatch, old.Etag):
		return EnrollmentGroup{}, fmt.Errorf("enrollment group %s etag: %w", g.EnrollmentGroupID, ErrPreconditionFailed)
	case !exists && ifMatch != "" && ifMatch != "*":
		return EnrollmentGroup{}, fmt.Errorf("enrollment group %s: %w", g.EnrollmentGroupID, ErrNotFound)
	}
	g.CreatedDateTimeUtc, g.LastUpdatedDateTimeUtc = now, now
	if exists {
		g.CreatedDateTimeUtc = old.CreatedDateTimeUtc
	}
	g.Etag = newEtag()
	c := cloneGroup(g)
	d.st.Groups[g.EnrollmentGroupID] = &c
	d.changedLocked()
	return g, nil
}

func (d *dps) getGroup(id string) (EnrollmentGroup, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	g, ok := d.st.Groups[id]
	if !ok {
		return EnrollmentGroup{}, dpsErr(404, dpsEnrollmentMissing, "enrollment group %s not found", id)
	}
	return cloneGroup(*g), nil
}

func (d *dps) deleteGroup(id, ifMatch string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	g, ok := d.st.Groups[id]
	if !ok {
		return dpsErr(404, dpsEnrollmentMissing, "enrollment group %s not found", id)
	}
	if !etagMatches(ifMatch, g.Etag) {
		return dpsErr(412, dpsPrecondition, "enrollment group %s: etag does not match", id)
	}
	delete(d.st.Groups, id)
	d.changedLocked()
	return nil
}

// restBulk runs a bulk enrollment operation: {"mode": "create" | "update"
// | "updateIfMatchEtag" | "delete", "enrollments": [...]}.
func (d *dps) restBulk(w http.ResponseWriter, r *http.Request) error {
	var body struct {
		Mode        string       `json:"mode"`
		Enrollments []Enrollment `json:"enrollments"`
	}
	if err := readDPSBody(r, &body); err != nil {
		return err
	}
	if len(body.Enrollments) == 0 || len(body.Enrollments) > 10 {
		return dpsErr(400, dpsBadRequest, "a bulk operation takes 1 to 10 enrollments, not %d", len(body.Enrollments))
	}
	type bulkErr struct {
		RegistrationID string `json:"registrationId"`
		ErrorCode      int    `json:"errorCode"`
		ErrorStatus    string `json:"errorStatus"`
	}
	errs := []bulkErr{}
	for _, e := range body.Enrollments {
		var err error
		switch body.Mode {
		case "create":
			_, err = d.putEnrollment(e, "", putCreate)
		case "update":
			_, err = d.putEnrollment(e, "*", putUpsert)
		case "updateIfMatchEtag":
			_, err = d.putEnrollment(e, e.Etag, putUpdate)
		case "delete":
			err = d.deleteEnrollment(e.RegistrationID, e.Etag)
		default:
			return dpsErr(400, dpsBadRequest, "bulk mode %q is not create, update, updateIfMatchEtag or delete", body.Mode)
		}
		if err != nil {
			de := toDPSError(err)
			errors.As(err, &de)
			errs = append(errs, bulkErr{e.RegistrationID, de.code, de.msg})
		}
	}
	writeJSON(w, http.StatusOK, "", map[string]any{"isSuccessful": len(errs) == 0, "errors": errs})
	return nil
}
