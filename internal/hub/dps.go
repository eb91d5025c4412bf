package hub

import (
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/twinlet/twinlet/internal/atomicfile"
	"github.com/twinlet/twinlet/internal/iothub"
)

// The Device Provisioning Service (DPS) of twinhub is served on the hub's
// HTTPS listener under its own host name (Options.DPSHostname), chosen by
// the Host header or, failing that, by TLS SNI. Devices register at
// /{idScope}/registrations/{registrationId}/register; back ends manage
// enrollments with a provisioningserviceowner token. See
// reference/iothub-dps-protocols.md §3.

// DPSServicePolicy is the name of the DPS shared access policy.
const DPSServicePolicy = "provisioningserviceowner"

// Attestation types of enrollments.
const (
	AttestationSymmetricKey = "symmetricKey"
	AttestationX509         = "x509"
	AttestationTPM          = "tpm"
)

// Allocation policies.
const (
	AllocationHashed     = "hashed"
	AllocationGeoLatency = "geoLatency"
	AllocationStatic     = "static"
	AllocationCustom     = "custom"
)

// Registration statuses.
const (
	RegUnassigned = "unassigned"
	RegAssigning  = "assigning"
	RegAssigned   = "assigned"
	RegFailed     = "failed"
	RegDisabled   = "disabled"
)

// Attestation is an enrollment's attestation mechanism.
type Attestation struct {
	Type         string           `json:"type"`
	TPM          *TPMAttestation  `json:"tpm,omitempty"`
	X509         *X509Attestation `json:"x509,omitempty"`
	SymmetricKey *SymmetricKey    `json:"symmetricKey,omitempty"`
}

// TPMAttestation holds the base64 TPM2B_PUBLIC of the EK and the SRK.
type TPMAttestation struct {
	EndorsementKey string `json:"endorsementKey"`
	StorageRootKey string `json:"storageRootKey,omitempty"`
}

// X509Attestation pins client certificates (individual enrollments) or
// names signing certificates (groups).
type X509Attestation struct {
	ClientCertificates  *X509Certificates `json:"clientCertificates,omitempty"`
	SigningCertificates *X509Certificates `json:"signingCertificates,omitempty"`
	CAReferences        *X509CAReferences `json:"caReferences,omitempty"`
}

// X509Certificates is a primary and an optional secondary certificate.
type X509Certificates struct {
	Primary   *X509CertificateWithInfo `json:"primary,omitempty"`
	Secondary *X509CertificateWithInfo `json:"secondary,omitempty"`
}

// X509CAReferences names CA certificates registered with the service;
// twinhub has no certificate registry, so they are refused.
type X509CAReferences struct {
	Primary   string `json:"primary,omitempty"`
	Secondary string `json:"secondary,omitempty"`
}

// X509CertificateWithInfo is a PEM or base64 DER certificate and, in
// answers, what the service read from it.
type X509CertificateWithInfo struct {
	Certificate string               `json:"certificate,omitempty"`
	Info        *X509CertificateInfo `json:"info,omitempty"`
}

// X509CertificateInfo describes a certificate.
type X509CertificateInfo struct {
	SubjectName      string    `json:"subjectName"`
	SHA1Thumbprint   string    `json:"sha1Thumbprint"`
	SHA256Thumbprint string    `json:"sha256Thumbprint"`
	IssuerName       string    `json:"issuerName"`
	NotBeforeUtc     time.Time `json:"notBeforeUtc"`
	NotAfterUtc      time.Time `json:"notAfterUtc"`
	SerialNumber     string    `json:"serialNumber"`
	Version          int       `json:"version"`
}

// InitialTwin is applied to a device the service creates.
type InitialTwin struct {
	Tags       map[string]any         `json:"tags,omitempty"`
	Properties *InitialTwinProperties `json:"properties,omitempty"`
}

// InitialTwinProperties holds the initial desired properties.
type InitialTwinProperties struct {
	Desired map[string]any `json:"desired,omitempty"`
}

// ReprovisionPolicy says what a registration of an assigned device does.
type ReprovisionPolicy struct {
	UpdateHubAssignment bool `json:"updateHubAssignment"`
	MigrateDeviceData   bool `json:"migrateDeviceData"`
}

// CustomAllocationDefinition is the webhook of the custom policy.
type CustomAllocationDefinition struct {
	WebhookURL string `json:"webhookUrl"`
	APIVersion string `json:"apiVersion"`
}

// Enrollment is an individual enrollment, in the service's JSON shape.
type Enrollment struct {
	RegistrationID    string             `json:"registrationId"`
	DeviceID          string             `json:"deviceId,omitempty"`
	RegistrationState *RegistrationState `json:"registrationState,omitempty"`
	EnrollmentSpec
}

// EnrollmentGroup is an enrollment group, in the service's JSON shape.
type EnrollmentGroup struct {
	EnrollmentGroupID string `json:"enrollmentGroupId"`
	EnrollmentSpec
}

// EnrollmentSpec is what individual enrollments and groups share.
type EnrollmentSpec struct {
	Attestation                Attestation                 `json:"attestation"`
	Capabilities               *Capabilities               `json:"capabilities,omitempty"`
	IotHubHostName             string                      `json:"iotHubHostName,omitempty"`
	IotHubs                    []string                    `json:"iotHubs,omitempty"`
	AllocationPolicy           string                      `json:"allocationPolicy,omitempty"`
	CustomAllocationDefinition *CustomAllocationDefinition `json:"customAllocationDefinition,omitempty"`
	InitialTwin                *InitialTwin                `json:"initialTwin,omitempty"`
	ProvisioningStatus         string                      `json:"provisioningStatus"`
	ReprovisionPolicy          *ReprovisionPolicy          `json:"reprovisionPolicy,omitempty"`
	OptionalDeviceInformation  map[string]any              `json:"optionalDeviceInformation,omitempty"`
	Etag                       string                      `json:"etag,omitempty"`
	CreatedDateTimeUtc         time.Time                   `json:"createdDateTimeUtc"`
	LastUpdatedDateTimeUtc     time.Time                   `json:"lastUpdatedDateTimeUtc"`
}

// RegistrationState is a device registration record (DeviceRegistrationState).
type RegistrationState struct {
	RegistrationID         string        `json:"registrationId"`
	CreatedDateTimeUtc     time.Time     `json:"createdDateTimeUtc"`
	AssignedHub            string        `json:"assignedHub,omitempty"`
	DeviceID               string        `json:"deviceId,omitempty"`
	Status                 string        `json:"status"`
	Substatus              string        `json:"substatus,omitempty"`
	ErrorCode              int           `json:"errorCode,omitempty"`
	ErrorMessage           string        `json:"errorMessage,omitempty"`
	LastUpdatedDateTimeUtc time.Time     `json:"lastUpdatedDateTimeUtc"`
	Etag                   string        `json:"etag,omitempty"`
	Payload                any           `json:"payload,omitempty"`
	SymmetricKey           *RegSymmetric `json:"symmetricKey,omitempty"`
	X509                   *RegX509      `json:"x509,omitempty"`
	TPM                    *RegTPM       `json:"tpm,omitempty"`
}

// RegSymmetric is the symmetric-key part of a registration result.
type RegSymmetric struct {
	EnrollmentGroupID string `json:"enrollmentGroupId,omitempty"`
}

// RegX509 is the X.509 part of a registration result.
type RegX509 struct {
	CertificateInfo        *X509CertificateInfo `json:"certificateInfo,omitempty"`
	EnrollmentGroupID      string               `json:"enrollmentGroupId,omitempty"`
	SigningCertificateInfo *X509CertificateInfo `json:"signingCertificateInfo,omitempty"`
}

// RegTPM is the TPM part of a registration result: the activation blob
// that carries the device's hub key.
type RegTPM struct {
	AuthenticationKey string `json:"authenticationKey"`
}

// DPSStats counts what the DPS was asked, so tests can prove a client
// does not retry in a storm.
type DPSStats struct {
	// Requests counts requests by kind: "register", "operationStatus",
	// "statusLookup", "service".
	Requests map[string]int `json:"requests"`
	// Errors counts error answers by DPS error code (e.g. 401002).
	Errors map[int]int `json:"errors"`
	// ByRegistration counts device requests (register, poll, lookup) by
	// lower-case registration id.
	ByRegistration map[string]int `json:"byRegistration"`
}

// dpsState is what the DPS persists.
type dpsState struct {
	IDScope       string                        `json:"idScope"`
	PrimaryKey    string                        `json:"primaryKey"`
	SecondaryKey  string                        `json:"secondaryKey"`
	Enrollments   map[string]*Enrollment        `json:"enrollments"` // by lower-case registration id
	Groups        map[string]*EnrollmentGroup   `json:"enrollmentGroups"`
	Registrations map[string]*RegistrationState `json:"registrations"` // by lower-case registration id
}

// dps is the provisioning service of a Hub.
type dps struct {
	h        *Hub
	hostname string
	dir      string // empty in memory mode

	mu    sync.Mutex
	st    dpsState
	ops   map[string]*operation // by operation id
	tpm   map[string][]byte     // issued TPM keys waiting for the SAS call, by registration id
	stats DPSStats
	seq   uint64 // state version, for persistence order

	assignMu sync.Mutex // one assignment at a time
	saveMu   sync.Mutex
	savedSeq uint64
}

// operation is one registration in flight or done.
type operation struct {
	id     string
	regID  string
	polls  int // polls answered 202 so far
	result RegistrationState
	verify func(auth deviceAuth) error // checks a poll's credentials
	done   bool
}

func newDPS(h *Hub, hostname, dir string) (*dps, error) {
	d := &dps{h: h, hostname: hostname, ops: map[string]*operation{}, tpm: map[string][]byte{}}
	d.stats = DPSStats{Requests: map[string]int{}, Errors: map[int]int{}, ByRegistration: map[string]int{}}
	if dir != "" {
		d.dir = filepath.Join(dir, "dps")
		if err := os.MkdirAll(d.dir, 0o700); err != nil {
			return nil, fmt.Errorf("dps dir: %w", err)
		}
		b, err := os.ReadFile(filepath.Join(d.dir, "state.json"))
		switch {
		case err == nil:
			if err := json.Unmarshal(b, &d.st); err != nil {
				return nil, fmt.Errorf("load dps state %s: %w", filepath.Join(d.dir, "state.json"), err)
			}
		case !errors.Is(err, os.ErrNotExist):
			return nil, fmt.Errorf("load dps state: %w", err)
		}
	}
	if d.st.IDScope == "" {
		b := make([]byte, 4)
		_, _ = rand.Read(b)
		d.st.IDScope = "0ne" + strings.ToUpper(hex.EncodeToString(b))
	}
	if d.st.PrimaryKey == "" {
		d.st.PrimaryKey, d.st.SecondaryKey = newKey(), newKey()
	}
	if d.st.Enrollments == nil {
		d.st.Enrollments = map[string]*Enrollment{}
	}
	if d.st.Groups == nil {
		d.st.Groups = map[string]*EnrollmentGroup{}
	}
	if d.st.Registrations == nil {
		d.st.Registrations = map[string]*RegistrationState{}
	}
	d.seq = 1
	if err := d.save(); err != nil {
		return nil, err
	}
	return d, nil
}

// changedLocked notes a change to persist; call with d.mu held, then call
// save after unlocking.
func (d *dps) changedLocked() { d.seq++ }

// save writes the state atomically when it is newer than what was last
// written. It is called outside d.mu.
func (d *dps) save() error {
	if d.dir == "" {
		return nil
	}
	d.saveMu.Lock()
	defer d.saveMu.Unlock()
	d.mu.Lock()
	if d.seq == d.savedSeq {
		d.mu.Unlock()
		return nil
	}
	seq := d.seq
	b, err := json.MarshalIndent(&d.st, "", "  ")
	d.mu.Unlock()
	if err != nil {
		return fmt.Errorf("persist dps: %w", err)
	}
	if err := atomicfile.Write(filepath.Join(d.dir, "state.json"), b, 0o600); err != nil {
		return fmt.Errorf("persist dps: %w", err)
	}
	d.savedSeq = seq
	return nil
}

func (d *dps) saveLogged() {
	if err := d.save(); err != nil {
		d.h.log.Error("persist dps state", "error", err)
	}
}

func (d *dps) count(kind, regID string) {
	d.mu.Lock()
	d.stats.Requests[kind]++
	if regID != "" {
		d.stats.ByRegistration[strings.ToLower(regID)]++
	}
	d.mu.Unlock()
}

func (d *dps) countError(code int) {
	d.mu.Lock()
	d.stats.Errors[code]++
	d.mu.Unlock()
}

// DPSHostname is the provisioning service's host name; empty when the hub
// serves no DPS.
func (h *Hub) DPSHostname() string {
	if h.dps == nil {
		return ""
	}
	return h.dps.hostname
}

// IDScope is the DPS ID scope devices name in their registration paths.
func (h *Hub) IDScope() string {
	if h.dps == nil {
		return ""
	}
	h.dps.mu.Lock()
	defer h.dps.mu.Unlock()
	return h.dps.st.IDScope
}

// DPSConnectionString is the provisioningserviceowner connection string
// of the DPS.
func (h *Hub) DPSConnectionString() iothub.ConnectionString {
	if h.dps == nil {
		return iothub.ConnectionString{}
	}
	h.dps.mu.Lock()
	defer h.dps.mu.Unlock()
	key, _ := base64.StdEncoding.DecodeString(h.dps.st.PrimaryKey)
	return iothub.ConnectionString{HostName: h.dps.hostname, SharedAccessKeyName: DPSServicePolicy, SharedAccessKey: key}
}

// DPSTLSConfig is a client TLS configuration that trusts the hub's CA and
// expects the DPS host name.
func (h *Hub) DPSTLSConfig() *tls.Config {
	c := h.TLSConfig()
	c.ServerName = h.DPSHostname()
	return c
}

// DPSStats returns a copy of the DPS request and error counters.
func (h *Hub) DPSStats() DPSStats {
	if h.dps == nil {
		return DPSStats{}
	}
	d := h.dps
	d.mu.Lock()
	defer d.mu.Unlock()
	out := DPSStats{Requests: map[string]int{}, Errors: map[int]int{}, ByRegistration: map[string]int{}}
	for k, v := range d.stats.Requests {
		out.Requests[k] = v
	}
	for k, v := range d.stats.Errors {
		out.Errors[k] = v
	}
	for k, v := range d.stats.ByRegistration {
		out.ByRegistration[k] = v
	}
	return out
}

// ResetDPSStats zeroes the DPS counters.
func (h *Hub) ResetDPSStats() {
	if h.dps == nil {
		return
	}
	h.dps.mu.Lock()
	h.dps.stats = DPSStats{Requests: map[string]int{}, Errors: map[int]int{}, ByRegistration: map[string]int{}}
	h.dps.mu.Unlock()
}

// PutEnrollment creates or replaces an individual enrollment (etag empty
// or "*": unconditionally) and returns it as stored, keys generated.
func (h *Hub) PutEnrollment(e Enrollment, etag string) (Enrollment, error) {
	if h.dps == nil {
		return Enrollment{}, errNoDPS
	}
	out, err := h.dps.putEnrollment(e, etag, putUpsert)
	h.dps.saveLogged()
	return out, err
}

// PutEnrollmentGroup creates or replaces an enrollment group.
func (h *Hub) PutEnrollmentGroup(g EnrollmentGroup, etag string) (EnrollmentGroup, error) {
	if h.dps == nil {
		return EnrollmentGroup{}, errNoDPS
	}
	out, err := h.dps.putGroup(g, etag)
	h.dps.saveLogged()
	return out, err
}

// Registration returns the registration record of a registration id.
func (h *Hub) Registration(registrationID string) (RegistrationState, error) {
	if h.dps == nil {
		return RegistrationState{}, errNoDPS
	}
	h.dps.mu.Lock()
	defer h.dps.mu.Unlock()
	r, ok := h.dps.st.Registrations[strings.ToLower(registrationID)]
	if !ok {
		return RegistrationState{}, fmt.Errorf("registration %s: %w", registrationID, ErrNotFound)
	}
	return *r, nil
}

// Registrations lists the registration records, sorted by id.
func (h *Hub) Registrations() []RegistrationState {
	if h.dps == nil {
		return nil
	}
	h.dps.mu.Lock()
	defer h.dps.mu.Unlock()
	out := make([]RegistrationState, 0, len(h.dps.st.Registrations))
	for _, r := range h.dps.st.Registrations {
		out = append(out, *r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].RegistrationID < out[j].RegistrationID })
	return out
}

var errNoDPS = errors.New("this hub serves no DPS")

// DeriveDeviceKey is the group-enrollment device key: base64 of
// HMAC-SHA256(base64-decoded group key, registration id).
func DeriveDeviceKey(groupKey, registrationID string) (string, error) {
	k, err := base64.StdEncoding.DecodeString(groupKey)
	if err != nil {
		return "", fmt.Errorf("group key is not base64: %w", err)
	}
	return base64.StdEncoding.EncodeToString(hmacSHA256(k, []byte(registrationID))), nil
}

// serverNames are the host names the server certificate covers: the hub,
// the DPS and every linked hub.
func (o Options) serverNames() []string {
	names := []string{o.Hostname}
	seen := map[string]bool{strings.ToLower(o.Hostname): true}
	add := func(n string) {
		if n != "" && !seen[strings.ToLower(n)] {
			seen[strings.ToLower(n)] = true
			names = append(names, n)
		}
	}
	add(o.DPSHostname)
	for _, l := range o.LinkedHubs {
		add(l.Hostname)
	}
	return names
}

// initDPS creates the DPS and the linked hubs of a hub that serves one.
func (h *Hub) initDPS() error {
	o := h.opts
	if o.DPSHostname == "" || o.parentPKI != nil {
		return nil
	}
	if strings.EqualFold(o.DPSHostname, o.Hostname) {
		return fmt.Errorf("dps host name %s: must differ from the hub's: %w", o.DPSHostname, ErrInvalid)
	}
	h.children = map[string]*Hub{}
	for _, l := range o.LinkedHubs {
		if l.Hostname == "" {
			return fmt.Errorf("linked hub without a host name: %w", ErrInvalid)
		}
		if l.Weight < 0 || l.Weight > 1000 {
			return fmt.Errorf("linked hub %s: weight %d is not 1 to 1000: %w", l.Hostname, l.Weight, ErrInvalid)
		}
		lower := strings.ToLower(l.Hostname)
		if lower == strings.ToLower(o.DPSHostname) {
			return fmt.Errorf("linked hub %s has the DPS's host name: %w", l.Hostname, ErrInvalid)
		}
		if lower == strings.ToLower(o.Hostname) {
			continue
		}
		if _, dup := h.children[lower]; dup {
			return fmt.Errorf("linked hub %s is named twice: %w", l.Hostname, ErrInvalid)
		}
		co := Options{Hostname: l.Hostname, Logger: o.Logger.With("hub", l.Hostname), Faults: o.Faults, EventBuffer: o.EventBuffer}
		co.parentPKI = h.pki
		if o.Dir != "" {
			co.Dir = filepath.Join(o.Dir, "hubs", url.PathEscape(lower))
		}
		c, err := New(co)
		if err != nil {
			return fmt.Errorf("linked hub %s: %w", l.Hostname, err)
		}
		c.parent = h
		h.children[lower] = c
	}
	var err error
	h.dps, err = newDPS(h, o.DPSHostname, o.Dir)
	return err
}

// linkedHubs are the DPS's linked hubs, the hub itself by default.
func (h *Hub) linkedHubs() []LinkedHub {
	if len(h.opts.LinkedHubs) == 0 {
		return []LinkedHub{{Hostname: h.hostname}}
	}
	return h.opts.LinkedHubs
}

// hubByHost is the hub itself or one of its linked hubs; nil if neither.
func (h *Hub) hubByHost(name string) *Hub {
	if strings.EqualFold(name, h.hostname) {
		return h
	}
	return h.children[strings.ToLower(name)]
}

// LinkedHub returns the hub of a linked hub's host name (the hub itself
// for its own name), or nil.
func (h *Hub) LinkedHub(hostname string) *Hub { return h.hubByHost(hostname) }

// startLinked starts the persistence of the linked hubs, whose devices
// this hub's listeners serve.
func (h *Hub) startLinked() error {
	for _, c := range h.children {
		c.handler = c.restHandler()
		if err := c.startChildMQTT(); err != nil {
			return err
		}
		c.flushDone = make(chan struct{})
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			c.flushLoop()
		}()
	}
	return nil
}

// verifyCAChain checks a device's certificate chain against the CA
// certificates the hub trusts for certificateAuthority devices: the
// signing certificates of the DPS's X.509 enrollment groups (twinhub has
// no certificate registry of its own; a group's certificate counts as
// uploaded and verified).
func (h *Hub) verifyCAChain(chain []*x509.Certificate) error {
	root := h
	if h.parent != nil {
		root = h.parent
	}
	if root.dps == nil {
		return errors.New("no CA certificate is registered with this hub")
	}
	roots := x509.NewCertPool()
	n := 0
	root.dps.mu.Lock()
	for _, g := range root.dps.st.Groups {
		if x := g.Attestation.X509; x != nil && x.SigningCertificates != nil {
			for _, c := range []*X509CertificateWithInfo{x.SigningCertificates.Primary, x.SigningCertificates.Secondary} {
				if c == nil {
					continue
				}
				if cert, err := parseCert(c.Certificate); err == nil {
					roots.AddCert(cert)
					n++
				}
			}
		}
	}
	root.dps.mu.Unlock()
	if n == 0 {
		return errors.New("no CA certificate is registered with this hub")
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return fmt.Errorf("client certificate chain: %w", err)
	}
	return nil
}
