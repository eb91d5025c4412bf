// Package dps is the device side of the Azure IoT Hub Device Provisioning
// Service (DPS) over HTTPS: a device that knows only the provisioning
// endpoint and its ID scope proves who it is (a symmetric key, a key
// derived from an enrollment group's key, an X.509 certificate or a TPM)
// and receives its IoT hub, its device id and the credential for the hub.
//
//	res, err := dps.Register(ctx, dps.Config{
//		Endpoint: "global.azure-devices-provisioning.net", IDScope: "0ne00111111",
//		RegistrationID: "dev-1", Attestation: dps.SymmetricKey{Key: key},
//	})
//
// Register follows the service's wire contract: PUT register, then poll
// the operation until it is final, honouring Retry-After; answers of 429
// and above (and network failures) are retried a bounded number of times
// with backoff, answers from 300 to 428 are final and returned with the
// service's message.
package dps

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/twinlet/twinlet/internal/backoff"
	"github.com/twinlet/twinlet/internal/iothub"
)

// APIVersion is the DPS device API version sent (the C SDK's).
const APIVersion = "2021-06-01"

// GlobalEndpoint is Azure's global device provisioning endpoint.
const GlobalEndpoint = "global.azure-devices-provisioning.net"

// Attestation is how the device proves its identity: SymmetricKey,
// GroupKey, X509 or TPMAttestation.
type Attestation interface {
	kind() string
}

// SymmetricKey is an individual enrollment's key (decoded bytes).
type SymmetricKey struct{ Key []byte }

// GroupKey is an enrollment group's key (decoded bytes); the device's key
// is derived from it and the registration id.
type GroupKey struct{ Key []byte }

// X509 is a TLS client certificate; the registration id defaults to the
// leaf's common name.
type X509 struct{ Certificate *tls.Certificate }

// TPMAttestation proves the identity with the TPM's endorsement key; the
// keys DPS issues are activated into Slot and never leave the TPM.
type TPMAttestation struct {
	TPM  TPM
	Slot int
}

// TPM is what provisioning needs of a TPM (internal/tpm provides it).
type TPM interface {
	// EndorsementKeyPublic and StorageRootKeyPublic return TPM2B_PUBLIC
	// bytes.
	EndorsementKeyPublic() ([]byte, error)
	StorageRootKeyPublic() ([]byte, error)
	// RegistrationID is the id DPS knows the TPM by.
	RegistrationID() (string, error)
	// ActivateIdentityKey imports a DPS activation blob into a slot.
	ActivateIdentityKey(blob []byte, slot int) error
	// Signer signs SAS tokens with the key in a slot.
	Signer(slot int) iothub.Signer
}

func (SymmetricKey) kind() string   { return "symmetricKey" }
func (GroupKey) kind() string       { return "groupKey" }
func (X509) kind() string           { return "x509" }
func (TPMAttestation) kind() string { return "tpm" }

// DeriveKey is the device key of registrationID in an enrollment group:
// HMAC-SHA256(groupKey, registrationID).
func DeriveKey(groupKey []byte, registrationID string) []byte {
	m := hmac.New(sha256.New, groupKey)
	m.Write([]byte(registrationID))
	return m.Sum(nil)
}

// Config configures one registration.
type Config struct {
	// Endpoint is the DPS host name: the TLS server name and Host header
	// (default GlobalEndpoint).
	Endpoint string
	// Addr overrides the address dialed (default Endpoint:443).
	Addr string
	// IDScope names the DPS instance.
	IDScope string
	// RegistrationID is the device's registration id; empty takes it from
	// the X.509 certificate's common name or the TPM.
	RegistrationID string
	// Attestation proves the identity.
	Attestation Attestation
	// Payload is sent to DPS (custom allocation data); optional JSON.
	Payload json.RawMessage
	// CAPEM adds CA certificates to the system roots (an emulator's);
	// TLS verification is always on.
	CAPEM []byte
	// MaxAttempts bounds the attempts of one request that fails in a
	// retryable way (default 5); MaxPolls bounds the status polls (default
	// 60).
	MaxAttempts, MaxPolls int
	// MinBackoff and MaxBackoff bound the retry delay (defaults 1s, 1m).
	// A Retry-After from the service is honoured: the delay is never
	// shorter, and the poll interval is the service's when it gives one.
	MinBackoff, MaxBackoff time.Duration
	// PollInterval is used when the service gives no Retry-After on a
	// pending operation (default 2s).
	PollInterval time.Duration
	// TokenLifetime is the registration SAS lifetime (default 1h).
	TokenLifetime time.Duration
	// RequestTimeout bounds one HTTP exchange (default 30s).
	RequestTimeout time.Duration
	// Logger; nil discards.
	Logger *slog.Logger
}

// Result is a final, successful registration.
type Result struct {
	// AssignedHub and DeviceID name the identity in IoT Hub.
	AssignedHub, DeviceID string
	// RegistrationID is the id the device registered with.
	RegistrationID string
	// Substatus is the service's (initialAssignment, deviceDataMigrated…).
	Substatus string
	// Payload is what a custom allocation returned, if anything.
	Payload json.RawMessage
	// Key is the hub key for symmetric-key attestations (the
	// individual key or the key derived from the group's).
	Key []byte
	// Certificate is the hub credential for X.509 (the same certificate).
	Certificate *tls.Certificate
	// Slot is the TPM slot holding the hub key for TPM attestation.
	Slot int
	// Signer signs hub SAS tokens (a KeySigner, or the TPM's); nil for
	// X.509.
	Signer iothub.Signer
}

// Error is an answer of the service that ends the registration: an HTTP
// status, or a registration that ended failed or disabled.
type Error struct {
	// Op is "register" or "poll".
	Op string
	// Status is the HTTP status (0 for a failed registration state).
	Status int
	// ErrorCode is the service's code (e.g. 401002), when it gave one.
	ErrorCode int
	// RegistrationStatus is "failed" or "disabled" for a final state.
	RegistrationStatus string
	// Message is the service's message.
	Message string
	// TrackingID is the service's tracking id, for support.
	TrackingID string
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "dps %s: ", e.Op)
	if e.Status != 0 {
		fmt.Fprintf(&b, "status %d", e.Status)
	} else {
		fmt.Fprintf(&b, "registration %s", e.RegistrationStatus)
	}
	if e.ErrorCode != 0 {
		fmt.Fprintf(&b, " (error %d)", e.ErrorCode)
	}
	if e.Message != "" {
		msg := e.Message
		if len(msg) > 300 {
			msg = msg[:300] + "…"
		}
		b.WriteString(": " + msg)
	}
	if e.TrackingID != "" {
		fmt.Fprintf(&b, " [tracking id %s]", e.TrackingID)
	}
	return b.String()
}

// Retryable reports an answer worth trying again later (429 and above).
func (e *Error) Retryable() bool { return e.Status >= 429 }

// IsRetryable reports whether err is worth a later attempt: a network
// failure or a retryable service answer; a refused attestation, an
// unknown registration or a disabled enrollment is not.
func IsRetryable(err error) bool {
	var e *Error
	if errors.As(err, &e) {
		return e.Retryable()
	}
	// A certificate the device does not trust stays untrusted: that needs
	// a CA file or the right endpoint, not another attempt.
	var cv *tls.CertificateVerificationError
	var ua x509.UnknownAuthorityError
	var he x509.HostnameError
	if errors.As(err, &cv) || errors.As(err, &ua) || errors.As(err, &he) {
		return false
	}
	return !errors.Is(err, errConfig) && !errors.Is(err, context.Canceled)
}

var errConfig = errors.New("dps: invalid configuration")

// client is one registration in progress.
type client struct {
	cfg   Config
	http  *http.Client
	log   *slog.Logger
	regID string
	body  []byte
	auth  func(ctx context.Context) (string, error)
	base  string
}

// Register registers the device with DPS and waits until the registration
// is final.
func Register(ctx context.Context, cfg Config) (*Result, error) {
	c, err := newClient(cfg)
	if err != nil {
		return nil, err
	}
	defer c.http.CloseIdleConnections()
	if t, ok := cfg.Attestation.(TPMAttestation); ok {
		return c.registerTPM(ctx, t)
	}
	st, err := c.register(ctx)
	if err != nil {
		return nil, err
	}
	return c.result(st)
}

func newClient(cfg Config) (*client, error) {
	if cfg.Endpoint == "" {
		cfg.Endpoint = GlobalEndpoint
	}
	if cfg.Addr == "" {
		cfg.Addr = net.JoinHostPort(cfg.Endpoint, "443")
	}
	if cfg.IDScope == "" {
		return nil, fmt.Errorf("%w: the ID scope is required", errConfig)
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = 5
	}
	if cfg.MaxPolls <= 0 {
		cfg.MaxPolls = 60
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = time.Second
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = time.Minute
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = 2 * time.Second
	}
	if cfg.TokenLifetime <= 0 {
		cfg.TokenLifetime = time.Hour
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = 30 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	roots, err := x509.SystemCertPool()
	if err != nil || roots == nil {
		roots = x509.NewCertPool()
	}
	if len(cfg.CAPEM) > 0 && !roots.AppendCertsFromPEM(cfg.CAPEM) {
		return nil, fmt.Errorf("%w: no certificate in the CA file", errConfig)
	}
	tc := &tls.Config{ServerName: cfg.Endpoint, RootCAs: roots, MinVersion: tls.VersionTLS12}
	c := &client{cfg: cfg, log: log, regID: cfg.RegistrationID}
	scope := func() string { return cfg.IDScope + "/registrations/" + c.regID }
	switch a := cfg.Attestation.(type) {
	case SymmetricKey:
		if len(a.Key) == 0 {
			return nil, fmt.Errorf("%w: empty symmetric key", errConfig)
		}
		c.auth = c.keyAuth(func() []byte { return a.Key }, scope)
	case GroupKey:
		if len(a.Key) == 0 {
			return nil, fmt.Errorf("%w: empty group key", errConfig)
		}
		c.auth = c.keyAuth(func() []byte { return DeriveKey(a.Key, c.regID) }, scope)
	case X509:
		if a.Certificate == nil || len(a.Certificate.Certificate) == 0 {
			return nil, fmt.Errorf("%w: no client certificate", errConfig)
		}
		tc.Certificates = []tls.Certificate{*a.Certificate}
		if c.regID == "" {
			leaf, err := x509.ParseCertificate(a.Certificate.Certificate[0])
			if err != nil {
				return nil, fmt.Errorf("%w: client certificate: %v", errConfig, err)
			}
			c.regID = leaf.Subject.CommonName
		}
	case TPMAttestation:
		if a.TPM == nil {
			return nil, fmt.Errorf("%w: no TPM", errConfig)
		}
		if c.regID == "" {
			id, err := a.TPM.RegistrationID()
			if err != nil {
				return nil, fmt.Errorf("tpm registration id: %w", err)
			}
			c.regID = id
		}
	case nil:
		return nil, fmt.Errorf("%w: no attestation (a key, a group key, a certificate or a TPM)", errConfig)
	default:
		return nil, fmt.Errorf("%w: unknown attestation %T", errConfig, a)
	}
	if err := CheckRegistrationID(c.regID); err != nil {
		return nil, fmt.Errorf("%w: %v", errConfig, err)
	}
	if len(cfg.Payload) > 0 && !json.Valid(cfg.Payload) {
		return nil, fmt.Errorf("%w: the payload is not JSON", errConfig)
	}
	dialer := &net.Dialer{Timeout: cfg.RequestTimeout}
	c.http = &http.Client{
		Timeout: cfg.RequestTimeout,
		Transport: &http.Transport{
			TLSClientConfig: tc,
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				return dialer.DialContext(ctx, network, cfg.Addr)
			},
			ForceAttemptHTTP2:   false,
			TLSHandshakeTimeout: cfg.RequestTimeout,
			MaxIdleConns:        1,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	c.base = "https://" + cfg.Endpoint + "/" + url.PathEscape(cfg.IDScope) + "/registrations/" + url.PathEscape(c.regID)
	body := map[string]any{"registrationId": c.regID}
	if len(cfg.Payload) > 0 {
		body["payload"] = cfg.Payload
	}
	if t, ok := cfg.Attestation.(TPMAttestation); ok {
		ek, err := t.TPM.EndorsementKeyPublic()
		if err != nil {
			return nil, fmt.Errorf("tpm endorsement key: %w", err)
		}
		srk, err := t.TPM.StorageRootKeyPublic()
		if err != nil {
			return nil, fmt.Errorf("tpm storage root key: %w", err)
		}
		body["tpm"] = map[string]string{
			"endorsementKey": base64.StdEncoding.EncodeToString(ek),
			"storageRootKey": base64.StdEncoding.EncodeToString(srk),
		}
	}
	c.body, _ = json.Marshal(body)
	return c, nil
}

// CheckRegistrationID checks the service's rules for a registration id:
// at most 128 characters, alphanumeric and "-._:", ending alphanumeric or
// with "-".
func CheckRegistrationID(id string) error {
	if id == "" {
		return errors.New("the registration id is empty")
	}
	if len(id) > 128 {
		return fmt.Errorf("registration id %q: longer than 128 characters", id)
	}
	for i, r := range id {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-._:", r)
		if !ok {
			return fmt.Errorf("registration id %q: character %q at %d is not alphanumeric or one of -._:", id, r, i)
		}
	}
	last := id[len(id)-1]
	if last == '.' || last == '_' || last == ':' {
		return fmt.Errorf("registration id %q: must end with a letter, a digit or '-'", id)
	}
	return nil
}

func (c *client) keyAuth(key func() []byte, scope func() string) func(context.Context) (string, error) {
	return func(context.Context) (string, error) {
		exp := time.Now().Add(c.cfg.TokenLifetime)
		return iothub.NewSASToken(scope(), key(), "registration", exp), nil
	}
}

// operation is the service's RegistrationOperationStatus.
type operation struct {
	OperationID       string             `json:"operationId"`
	Status            string             `json:"status"`
	RegistrationState *registrationState `json:"registrationState"`
}

type registrationState struct {
	RegistrationID string          `json:"registrationId"`
	AssignedHub    string          `json:"assignedHub"`
	DeviceID       string          `json:"deviceId"`
	Status         string          `json:"status"`
	Substatus      string          `json:"substatus"`
	ErrorCode      int             `json:"errorCode"`
	ErrorMessage   string          `json:"errorMessage"`
	Payload        json.RawMessage `json:"payload"`
	TPM            *struct {
		AuthenticationKey string `json:"authenticationKey"`
	} `json:"tpm"`
}

// serviceError is the service's error body.
type serviceError struct {
	ErrorCode  int    `json:"errorCode"`
	TrackingID string `json:"trackingId"`
	Message    string `json:"message"`
}

// tpmChallenge is the 401 body of a TPM registration without a token.
type tpmChallenge struct {
	AuthenticationKey string `json:"authenticationKey"`
	KeyName           string `json:"keyName"`
}

// response is one HTTP answer, read whole.
type response struct {
	status int
	body   []byte
	// retryAfter is the service's Retry-After; hasRetryAfter says it sent
	// one (0 means "now").
	retryAfter    time.Duration
	hasRetryAfter bool
}

// do sends one request and retries it while the failure is retryable, up
// to MaxAttempts, with backoff (never shorter than a Retry-After). auth
// false sends no Authorization (the first TPM call, X.509).
func (c *client) do(ctx context.Context, op, method, url string, body []byte, withAuth bool, final func(r response) bool) (response, error) {
	var lastErr error
	for attempt := 1; ; attempt++ {
		r, err := c.once(ctx, method, url, body, withAuth)
		if err == nil && (r.status < 300 || final(r)) {
			return r, nil
		}
		if err == nil {
			err = c.statusError(op, r)
		}
		if ctx.Err() != nil {
			return r, fmt.Errorf("dps %s: %w", op, ctx.Err())
		}
		if !IsRetryable(err) {
			return r, err
		}
		lastErr = err
		if attempt >= c.cfg.MaxAttempts {
			return r, fmt.Errorf("dps %s: giving up after %d attempts: %w", op, attempt, lastErr)
		}
		d := max(backoff.Delay(c.cfg.MinBackoff, c.cfg.MaxBackoff, attempt), r.retryAfter)
		c.log.Warn("dps request failed; retrying", "op", op, "err", err, "in", d.Round(time.Millisecond).String(), "attempt", attempt)
		if !backoff.Sleep(ctx, d) {
			return r, fmt.Errorf("dps %s: %w", op, ctx.Err())
		}
	}
}

func (c *client) once(ctx context.Context, method, u string, body []byte, withAuth bool) (response, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u+"?api-version="+APIVersion, rd)
	if err != nil {
		return response{}, fmt.Errorf("%w: %v", errConfig, err)
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json; charset=utf-8")
	}
	req.Header.Set("User-Agent", "twinlet-dps")
	if withAuth && c.auth != nil {
		tok, err := c.auth(ctx)
		if err != nil {
			return response{}, fmt.Errorf("dps: sign: %w", err)
		}
		req.Header.Set("Authorization", tok)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return response{}, fmt.Errorf("dps %s %s: %w", method, c.cfg.Addr, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return response{}, fmt.Errorf("dps %s %s: read: %w", method, c.cfg.Addr, err)
	}
	r := response{status: resp.StatusCode, body: data}
	r.retryAfter, r.hasRetryAfter = retryAfter(resp.Header.Get("Retry-After"))
	return r, nil
}

// retryAfter reads a Retry-After in seconds or as an HTTP date; ok is
// false when there is none (or it cannot be read).
func retryAfter(v string) (d time.Duration, ok bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if n, err := strconv.Atoi(v); err == nil && n >= 0 {
		return time.Duration(n) * time.Second, true
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(time.Until(t), 0), true
	}
	return 0, false
}

func (c *client) statusError(op string, r response) error {
	e := &Error{Op: op, Status: r.status}
	var se serviceError
	if json.Unmarshal(r.body, &se) == nil && (se.ErrorCode != 0 || se.Message != "") {
		e.ErrorCode, e.Message, e.TrackingID = se.ErrorCode, se.Message, se.TrackingID
	} else if len(r.body) > 0 {
		e.Message = strings.TrimSpace(string(r.body))
	} else {
		e.Message = http.StatusText(r.status)
	}
	return e
}

// register PUTs the registration and polls it until it is final.
func (c *client) register(ctx context.Context) (*operation, error) {
	r, err := c.do(ctx, "register", http.MethodPut, c.base+"/register", c.body, true, never)
	if err != nil {
		return nil, err
	}
	return c.poll(ctx, r)
}

func never(response) bool { return false }

// poll follows an operation from the answer to the register call until it
// is final (assigned, failed or disabled).
func (c *client) poll(ctx context.Context, r response) (*operation, error) {
	for n := 0; ; n++ {
		op, final, err := parseOperation(r.body)
		if err != nil {
			return nil, err
		}
		if final {
			return op, nil
		}
		status := op.Status
		if n >= c.cfg.MaxPolls {
			return nil, fmt.Errorf("dps: registration still %s after %d polls", status, n)
		}
		d := c.cfg.PollInterval
		if r.hasRetryAfter {
			d = r.retryAfter
		}
		if !backoff.Sleep(ctx, d) {
			return nil, fmt.Errorf("dps poll: %w", ctx.Err())
		}
		r, err = c.do(ctx, "poll", http.MethodGet, c.base+"/operations/"+url.PathEscape(op.OperationID), nil, true, never)
		if err != nil {
			return nil, err
		}
	}
}

// parseOperation reads a RegistrationOperationStatus: final is true for
// an assignment (with its registration state); a failed or disabled
// registration is an *Error; a pending one has an operation id.
func parseOperation(body []byte) (op *operation, final bool, err error) {
	op = &operation{}
	if err := json.Unmarshal(body, op); err != nil {
		return nil, false, fmt.Errorf("dps: the service's answer is not an operation status: %w", err)
	}
	status := op.Status
	if status == "" && op.RegistrationState != nil {
		status = op.RegistrationState.Status
	}
	op.Status = status
	switch status {
	case "assigned":
		if op.RegistrationState == nil {
			return nil, false, errors.New("dps: assigned without a registration state")
		}
		return op, true, nil
	case "failed", "disabled", "blacklisted":
		e := &Error{Op: "register", RegistrationStatus: status}
		if rs := op.RegistrationState; rs != nil {
			e.ErrorCode, e.Message = rs.ErrorCode, rs.ErrorMessage
		}
		return nil, false, e
	case "assigning", "unassigned":
	default:
		return nil, false, fmt.Errorf("dps: unknown registration status %q", status)
	}
	if op.OperationID == "" {
		return nil, false, fmt.Errorf("dps: registration %s without an operation id", status)
	}
	return op, false, nil
}

func (c *client) result(op *operation) (*Result, error) {
	rs := op.RegistrationState
	if rs.AssignedHub == "" || rs.DeviceID == "" {
		return nil, errors.New("dps: assigned without a hub or a device id")
	}
	res := &Result{AssignedHub: rs.AssignedHub, DeviceID: rs.DeviceID, RegistrationID: c.regID, Substatus: rs.Substatus}
	if len(rs.Payload) > 0 && string(rs.Payload) != "null" {
		res.Payload = rs.Payload
	}
	switch a := c.cfg.Attestation.(type) {
	case SymmetricKey:
		res.Key = a.Key
	case GroupKey:
		res.Key = DeriveKey(a.Key, c.regID)
	case X509:
		res.Certificate = a.Certificate
	}
	if res.Key != nil {
		res.Signer = iothub.KeySigner{Key: res.Key}
	}
	return res, nil
}

// registerTPM runs the TPM exchange: a PUT without a token is answered
// 401 with an activation blob, which the TPM turns into the registration
// key (in the slot); the PUT is repeated with a SAS signed in the TPM,
// polled, and the final blob (the hub key) is activated into the slot.
func (c *client) registerTPM(ctx context.Context, t TPMAttestation) (*Result, error) {
	isChallenge := func(r response) bool {
		if r.status != http.StatusUnauthorized {
			return false
		}
		var ch tpmChallenge
		return json.Unmarshal(r.body, &ch) == nil && ch.AuthenticationKey != ""
	}
	r, err := c.do(ctx, "register", http.MethodPut, c.base+"/register", c.body, false, isChallenge)
	if err != nil {
		return nil, err
	}
	if r.status == http.StatusUnauthorized {
		var ch tpmChallenge
		_ = json.Unmarshal(r.body, &ch)
		blob, err := base64.StdEncoding.DecodeString(ch.AuthenticationKey)
		if err != nil {
			return nil, fmt.Errorf("dps tpm challenge: authenticationKey is not base64: %w", err)
		}
		if err := t.TPM.ActivateIdentityKey(blob, t.Slot); err != nil {
			return nil, fmt.Errorf("dps tpm challenge: activate: %w", err)
		}
		signer := t.TPM.Signer(t.Slot)
		scope := c.cfg.IDScope + "/registrations/" + c.regID
		c.auth = func(ctx context.Context) (string, error) {
			tok, err := signer.Sign(ctx, scope, time.Now().Add(c.cfg.TokenLifetime))
			if err != nil {
				return "", err
			}
			// skn is not covered by the signature; DPS wants "registration".
			if !strings.Contains(tok, "&skn=") {
				tok += "&skn=registration"
			}
			return tok, nil
		}
		r, err = c.do(ctx, "register", http.MethodPut, c.base+"/register", c.body, true, never)
		if err != nil {
			return nil, err
		}
	}
	op, err := c.poll(ctx, r)
	if err != nil {
		return nil, err
	}
	res, err := c.result(op)
	if err != nil {
		return nil, err
	}
	if tpm := op.RegistrationState.TPM; tpm != nil && tpm.AuthenticationKey != "" {
		blob, err := base64.StdEncoding.DecodeString(tpm.AuthenticationKey)
		if err != nil {
			return nil, fmt.Errorf("dps tpm: the hub key blob is not base64: %w", err)
		}
		if err := t.TPM.ActivateIdentityKey(blob, t.Slot); err != nil {
			return nil, fmt.Errorf("dps tpm: activate the hub key: %w", err)
		}
	} else {
		return nil, errors.New("dps tpm: assigned without the hub key (registrationState.tpm.authenticationKey)")
	}
	res.Slot = t.Slot
	res.Signer = t.TPM.Signer(t.Slot)
	return res, nil
}
