package iothub

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/twinlet/twinlet/internal/version"
)

// ServiceAPIVersion is the IoT Hub service REST api-version the client
// speaks (the one the Node.js service SDK pins).
const ServiceAPIVersion = "2021-04-12"

const (
	serviceTokenTTL = time.Hour
	// tokens are renewed when less than this is left
	serviceTokenRenew = 5 * time.Minute
	// maxResponse bounds what the client reads from one response.
	maxResponse = 64 << 20
)

// ServiceClient calls the IoT Hub service REST API with a shared access
// policy (iothubowner, service, registryReadWrite, …). It is thin: one
// method per operation, no retries (callers decide), errors as
// *ServiceError. It never logs, and its errors never contain keys or
// tokens. It is safe for concurrent use.
type ServiceClient struct {
	cs   ConnectionString
	base string // https://host
	hc   *http.Client
	now  func() time.Time

	mu       sync.Mutex
	token    string
	tokenExp time.Time
}

// ServiceOption configures a ServiceClient.
type ServiceOption func(*serviceConfig)

type serviceConfig struct {
	roots *x509.CertPool
	addr  string
	now   func() time.Time
}

// WithRootCAs makes the client trust pool (for example the emulator's CA)
// instead of the system roots. TLS verification is always on.
func WithRootCAs(pool *x509.CertPool) ServiceOption {
	return func(c *serviceConfig) { c.roots = pool }
}

// WithServiceAddr sends requests to addr (host:port) instead of the
// connection string's HostName on port 443. The Host header, the TLS
// server name that the certificate is verified against and the SAS scope
// stay the HostName, as for the real service.
func WithServiceAddr(addr string) ServiceOption {
	return func(c *serviceConfig) { c.addr = addr }
}

// withClock sets the clock used for token expiry (tests).
func withClock(now func() time.Time) ServiceOption {
	return func(c *serviceConfig) { c.now = now }
}

// NewServiceClient returns a client for the hub of cs, which must be a
// shared access policy connection string
// ("HostName=…;SharedAccessKeyName=…;SharedAccessKey=…").
func NewServiceClient(cs ConnectionString, opts ...ServiceOption) (*ServiceClient, error) {
	if cs.SharedAccessKeyName == "" || len(cs.SharedAccessKey) == 0 || cs.DeviceID != "" {
		return nil, fmt.Errorf("service client for %s: need a shared access policy connection string (HostName, SharedAccessKeyName, SharedAccessKey)", cs.HostName)
	}
	if cs.HostName == "" {
		return nil, fmt.Errorf("service client: connection string has no HostName")
	}
	cfg := serviceConfig{now: time.Now}
	for _, o := range opts {
		o(&cfg)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: cfg.roots, MinVersion: tls.VersionTLS12}
	if cfg.addr != "" {
		if _, _, err := net.SplitHostPort(cfg.addr); err != nil {
			return nil, fmt.Errorf("service client: address %q: %w", cfg.addr, err)
		}
		addr := cfg.addr
		var d net.Dialer
		tr.Proxy = nil
		tr.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
			return d.DialContext(ctx, network, addr)
		}
	}
	return &ServiceClient{
		cs:   cs,
		base: "https://" + cs.HostName,
		hc:   &http.Client{Transport: tr},
		now:  cfg.now,
	}, nil
}

// HostName is the hub's host name from the connection string.
func (c *ServiceClient) HostName() string { return c.cs.HostName }

// Close releases idle connections.
func (c *ServiceClient) Close() { c.hc.CloseIdleConnections() }

// ServiceError is an error answer of the service: the HTTP status, the
// iothub-errorcode (e.g. "DeviceNotFound") and the message, taken from the
// service's error envelope.
type ServiceError struct {
	StatusCode int
	Code       string
	Message    string
	// ErrorCode is the numeric code (e.g. 404001) when the service sent one.
	ErrorCode int
	// TrackingID is the service's tracking id, when present.
	TrackingID string
}

// Error formats the status, code and message.
func (e *ServiceError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "iothub: %d %s", e.StatusCode, http.StatusText(e.StatusCode))
	if e.Code != "" {
		b.WriteString(" (" + e.Code + ")")
	}
	if e.Message != "" {
		b.WriteString(": " + e.Message)
	}
	return b.String()
}

// IsNotFound reports whether err is a ServiceError with status 404.
func IsNotFound(err error) bool {
	var se *ServiceError
	return errors.As(err, &se) && se.StatusCode == http.StatusNotFound
}

// parseServiceError builds a ServiceError from an error response. The
// envelope is {"Message":"ErrorCode:<Code>;<detail>","ExceptionMessage":
// "Tracking ID:…"}; newer service versions put a JSON object
// {"errorCode":404001,"message":…,"trackingId":…} inside Message.
func parseServiceError(status int, h http.Header, body []byte) *ServiceError {
	e := &ServiceError{StatusCode: status, Code: h.Get("iothub-errorcode")}
	var fields map[string]json.RawMessage
	_ = json.Unmarshal(body, &fields) // JSON keys are matched exactly below
	str := func(k string) string {
		var s string
		_ = json.Unmarshal(fields[k], &s)
		return s
	}
	switch {
	case str("Message") != "":
		msg := strings.TrimSpace(str("Message"))
		rest, classic := strings.CutPrefix(msg, "ErrorCode:")
		switch {
		case strings.HasPrefix(msg, "{") && e.setInner([]byte(msg)):
			// the newer envelope: a JSON object inside Message
		case classic:
			code, detail, _ := strings.Cut(rest, ";")
			if e.Code == "" {
				e.Code = code
			}
			e.Message = strings.TrimSpace(detail)
		default:
			e.Message = msg
		}
		if e.TrackingID == "" {
			if id, ok := strings.CutPrefix(str("ExceptionMessage"), "Tracking ID:"); ok {
				id, _, _ = strings.Cut(id, "-G:")
				e.TrackingID = id
			}
		}
	case fields["errorCode"] != nil || fields["message"] != nil:
		e.setInner(body)
	default:
		e.Message = strings.TrimSpace(string(body))
		if len(e.Message) > 512 {
			e.Message = e.Message[:512] + "…"
		}
	}
	return e
}

// setInner fills e from {"errorCode":404001,"message":…,"trackingId":…}
// and reports whether data was such an object.
func (e *ServiceError) setInner(data []byte) bool {
	var inner struct {
		ErrorCode  json.Number `json:"errorCode"`
		Message    string      `json:"message"`
		TrackingID string      `json:"trackingId"`
	}
	if json.Unmarshal(data, &inner) != nil {
		return false
	}
	e.Message, e.TrackingID = inner.Message, inner.TrackingID
	if n, err := strconv.Atoi(inner.ErrorCode.String()); err == nil {
		e.ErrorCode = n
	}
	return true
}

// authToken returns a SAS token for the hub, signing a new one when the cached
// one is close to expiry.
func (c *ServiceClient) authToken() (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	if c.token != "" && c.tokenExp.Sub(now) > serviceTokenRenew {
		return c.token, nil
	}
	exp := now.Add(serviceTokenTTL)
	tok, err := c.cs.SASToken(exp)
	if err != nil {
		return "", err
	}
	c.token, c.tokenExp = tok, exp
	return tok, nil
}

// request describes one call.
type request struct {
	method string
	path   string // escaped, starting with '/'
	query  url.Values
	body   any // marshalled as JSON unless nil
	header map[string]string
	out    any // decoded from a 2xx JSON body unless nil
}

// do performs r and returns the response headers of a 2xx answer.
func (c *ServiceClient) do(ctx context.Context, r request) (http.Header, error) {
	q := url.Values{}
	for k, v := range r.query {
		q[k] = v
	}
	q.Set("api-version", ServiceAPIVersion)
	u := c.base + r.path + "?" + q.Encode()
	var body io.Reader
	if r.body != nil {
		b, err := json.Marshal(r.body)
		if err != nil {
			return nil, fmt.Errorf("%s %s: encode body: %w", r.method, r.path, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, r.method, u, body)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", r.method, r.path, err)
	}
	tok, err := c.authToken()
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", tok)
	req.Header.Set("Accept", "application/json")
	if r.body != nil {
		req.Header.Set("Content-Type", "application/json; charset=utf-8")
	}
	req.Header.Set("Request-Id", newRequestID())
	req.Header.Set("User-Agent", "twinlet/"+version.Version)
	for k, v := range r.header {
		req.Header.Set(k, v)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		// url.Error repeats the URL, which has no secret in it.
		return nil, fmt.Errorf("%s %s: %w", r.method, r.path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse))
	if err != nil {
		return nil, fmt.Errorf("%s %s: read response: %w", r.method, r.path, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, fmt.Errorf("%s %s: %w", r.method, r.path, parseServiceError(resp.StatusCode, resp.Header, data))
	}
	if r.out != nil && len(bytes.TrimSpace(data)) > 0 {
		if err := json.Unmarshal(data, r.out); err != nil {
			return nil, fmt.Errorf("%s %s: decode response: %w", r.method, r.path, err)
		}
	}
	return resp.Header, nil
}

func newRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// ifMatch quotes an etag for If-Match; "" and "*" mean any version.
func ifMatch(etag string) string {
	if etag == "" || etag == "*" {
		return "*"
	}
	if strings.HasPrefix(etag, `"`) {
		return etag
	}
	return `"` + etag + `"`
}

func devicePath(deviceID string) string { return "/devices/" + url.PathEscape(deviceID) }

func modulePath(deviceID, moduleID string) string {
	return devicePath(deviceID) + "/modules/" + url.PathEscape(moduleID)
}

func twinPath(deviceID, moduleID string) string {
	p := "/twins/" + url.PathEscape(deviceID)
	if moduleID != "" {
		p += "/modules/" + url.PathEscape(moduleID)
	}
	return p
}

// GetJSON sends an authenticated GET for a path of the hub that has no
// method here (twinhub's /_twinhub/ admin API, for instance) and decodes
// the JSON answer into out. path starts with '/' and is sent as is.
func (c *ServiceClient) GetJSON(ctx context.Context, path string, query url.Values, out any) error {
	if !strings.HasPrefix(path, "/") {
		return fmt.Errorf("get %s: path must start with '/'", path)
	}
	_, err := c.do(ctx, request{method: http.MethodGet, path: path, query: query, out: out})
	return err
}

// Authentication is an identity's credentials in the registry.
type Authentication struct {
	// Type is "sas", "selfSigned", "certificateAuthority" or "none".
	Type           string          `json:"type"`
	SymmetricKey   *SymmetricKey   `json:"symmetricKey,omitempty"`
	X509Thumbprint *X509Thumbprint `json:"x509Thumbprint,omitempty"`
}

// SymmetricKey holds base64 keys; empty keys are generated by the hub.
type SymmetricKey struct {
	PrimaryKey   string `json:"primaryKey,omitempty"`
	SecondaryKey string `json:"secondaryKey,omitempty"`
}

// X509Thumbprint holds certificate thumbprints (hex).
type X509Thumbprint struct {
	PrimaryThumbprint   string `json:"primaryThumbprint,omitempty"`
	SecondaryThumbprint string `json:"secondaryThumbprint,omitempty"`
}

// Capabilities of a device.
type Capabilities struct {
	IoTEdge bool `json:"iotEdge"`
}

// Device is a device identity in the registry. Times are as the service
// sends them (ISO 8601).
type Device struct {
	DeviceID                   string          `json:"deviceId"`
	GenerationID               string          `json:"generationId,omitempty"`
	ETag                       string          `json:"etag,omitempty"`
	Status                     string          `json:"status,omitempty"` // enabled | disabled
	StatusReason               string          `json:"statusReason,omitempty"`
	StatusUpdatedTime          string          `json:"statusUpdatedTime,omitempty"`
	ConnectionState            string          `json:"connectionState,omitempty"` // Connected | Disconnected
	ConnectionStateUpdatedTime string          `json:"connectionStateUpdatedTime,omitempty"`
	LastActivityTime           string          `json:"lastActivityTime,omitempty"`
	CloudToDeviceMessageCount  int             `json:"cloudToDeviceMessageCount,omitempty"`
	Authentication             *Authentication `json:"authentication,omitempty"`
	Capabilities               *Capabilities   `json:"capabilities,omitempty"`
	DeviceScope                string          `json:"deviceScope,omitempty"`
	ParentScopes               []string        `json:"parentScopes,omitempty"`
}

// Module is a module identity of a device.
type Module struct {
	ModuleID                   string          `json:"moduleId"`
	DeviceID                   string          `json:"deviceId"`
	ManagedBy                  string          `json:"managedBy,omitempty"`
	GenerationID               string          `json:"generationId,omitempty"`
	ETag                       string          `json:"etag,omitempty"`
	ConnectionState            string          `json:"connectionState,omitempty"`
	ConnectionStateUpdatedTime string          `json:"connectionStateUpdatedTime,omitempty"`
	LastActivityTime           string          `json:"lastActivityTime,omitempty"`
	CloudToDeviceMessageCount  int             `json:"cloudToDeviceMessageCount,omitempty"`
	Authentication             *Authentication `json:"authentication,omitempty"`
}

// defaultAuth returns a, or SAS authentication with keys generated by the
// hub when a is nil.
func defaultAuth(a *Authentication) *Authentication {
	if a != nil {
		return a
	}
	return &Authentication{Type: "sas", SymmetricKey: &SymmetricKey{}}
}

// CreateDevice registers a new device. Without Authentication it gets SAS
// keys generated by the hub. It fails with 409 (DeviceAlreadyExists) when
// the device exists.
func (c *ServiceClient) CreateDevice(ctx context.Context, d Device) (*Device, error) {
	if d.DeviceID == "" {
		return nil, errors.New("create device: empty device id")
	}
	d.ETag = ""
	d.Authentication = defaultAuth(d.Authentication)
	var out Device
	_, err := c.do(ctx, request{method: http.MethodPut, path: devicePath(d.DeviceID), body: d, out: &out})
	if err != nil {
		return nil, fmt.Errorf("create device %s: %w", d.DeviceID, err)
	}
	return &out, nil
}

// GetDevice reads a device identity.
func (c *ServiceClient) GetDevice(ctx context.Context, deviceID string) (*Device, error) {
	var out Device
	if _, err := c.do(ctx, request{method: http.MethodGet, path: devicePath(deviceID), out: &out}); err != nil {
		return nil, fmt.Errorf("get device %s: %w", deviceID, err)
	}
	return &out, nil
}

// UpdateDevice replaces a device identity. d.ETag is sent as If-Match
// (empty: unconditionally); a stale etag fails with 412.
func (c *ServiceClient) UpdateDevice(ctx context.Context, d Device) (*Device, error) {
	var out Device
	_, err := c.do(ctx, request{method: http.MethodPut, path: devicePath(d.DeviceID), body: d,
		header: map[string]string{"If-Match": ifMatch(d.ETag)}, out: &out})
	if err != nil {
		return nil, fmt.Errorf("update device %s: %w", d.DeviceID, err)
	}
	return &out, nil
}

// DeleteDevice removes a device identity; etag "" deletes whatever the
// version.
func (c *ServiceClient) DeleteDevice(ctx context.Context, deviceID, etag string) error {
	_, err := c.do(ctx, request{method: http.MethodDelete, path: devicePath(deviceID),
		header: map[string]string{"If-Match": ifMatch(etag)}})
	if err != nil {
		return fmt.Errorf("delete device %s: %w", deviceID, err)
	}
	return nil
}

// ListDevices lists device identities with the registry's list operation
// (GET /devices; the service caps it at 1000, use Query for large fleets).
func (c *ServiceClient) ListDevices(ctx context.Context) ([]Device, error) {
	var out []Device
	if _, err := c.do(ctx, request{method: http.MethodGet, path: "/devices", out: &out}); err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	return out, nil
}

// CreateModule registers a module identity on an existing device.
func (c *ServiceClient) CreateModule(ctx context.Context, m Module) (*Module, error) {
	if m.DeviceID == "" || m.ModuleID == "" {
		return nil, errors.New("create module: empty device or module id")
	}
	m.ETag = ""
	m.Authentication = defaultAuth(m.Authentication)
	var out Module
	_, err := c.do(ctx, request{method: http.MethodPut, path: modulePath(m.DeviceID, m.ModuleID), body: m, out: &out})
	if err != nil {
		return nil, fmt.Errorf("create module %s/%s: %w", m.DeviceID, m.ModuleID, err)
	}
	return &out, nil
}

// GetModule reads a module identity.
func (c *ServiceClient) GetModule(ctx context.Context, deviceID, moduleID string) (*Module, error) {
	var out Module
	if _, err := c.do(ctx, request{method: http.MethodGet, path: modulePath(deviceID, moduleID), out: &out}); err != nil {
		return nil, fmt.Errorf("get module %s/%s: %w", deviceID, moduleID, err)
	}
	return &out, nil
}

// UpdateModule replaces a module identity; m.ETag is sent as If-Match.
func (c *ServiceClient) UpdateModule(ctx context.Context, m Module) (*Module, error) {
	var out Module
	_, err := c.do(ctx, request{method: http.MethodPut, path: modulePath(m.DeviceID, m.ModuleID), body: m,
		header: map[string]string{"If-Match": ifMatch(m.ETag)}, out: &out})
	if err != nil {
		return nil, fmt.Errorf("update module %s/%s: %w", m.DeviceID, m.ModuleID, err)
	}
	return &out, nil
}

// DeleteModule removes a module identity; etag "" deletes whatever the
// version.
func (c *ServiceClient) DeleteModule(ctx context.Context, deviceID, moduleID, etag string) error {
	_, err := c.do(ctx, request{method: http.MethodDelete, path: modulePath(deviceID, moduleID),
		header: map[string]string{"If-Match": ifMatch(etag)}})
	if err != nil {
		return fmt.Errorf("delete module %s/%s: %w", deviceID, moduleID, err)
	}
	return nil
}

// ListModules lists the module identities of a device.
func (c *ServiceClient) ListModules(ctx context.Context, deviceID string) ([]Module, error) {
	var out []Module
	if _, err := c.do(ctx, request{method: http.MethodGet, path: devicePath(deviceID) + "/modules", out: &out}); err != nil {
		return nil, fmt.Errorf("list modules of %s: %w", deviceID, err)
	}
	return out, nil
}

// Twin is a device or module twin as the service returns it. Desired and
// Reported include "$version" and "$metadata".
type Twin struct {
	DeviceID           string          `json:"deviceId"`
	ModuleID           string          `json:"moduleId,omitempty"`
	ETag               string          `json:"etag,omitempty"`
	DeviceETag         string          `json:"deviceEtag,omitempty"`
	Status             string          `json:"status,omitempty"`
	StatusReason       string          `json:"statusReason,omitempty"`
	StatusUpdateTime   string          `json:"statusUpdateTime,omitempty"`
	ConnectionState    string          `json:"connectionState,omitempty"`
	LastActivityTime   string          `json:"lastActivityTime,omitempty"`
	AuthenticationType string          `json:"authenticationType,omitempty"`
	X509Thumbprint     *X509Thumbprint `json:"x509Thumbprint,omitempty"`
	ModelID            string          `json:"modelId,omitempty"`
	Version            int64           `json:"version,omitempty"`
	Tags               map[string]any  `json:"tags,omitempty"`
	Properties         TwinProperties  `json:"properties"`
	Capabilities       *Capabilities   `json:"capabilities,omitempty"`
	Configurations     map[string]any  `json:"configurations,omitempty"`
	DeviceScope        string          `json:"deviceScope,omitempty"`
	ParentScopes       []string        `json:"parentScopes,omitempty"`
}

// TwinProperties are a twin's desired and reported properties.
type TwinProperties struct {
	Desired  map[string]any `json:"desired,omitempty"`
	Reported map[string]any `json:"reported,omitempty"`
}

// TwinPatch is what the service side may write in a twin: tags and
// desired properties. For PatchTwin, objects merge and null deletes; a nil
// map is left alone. For ReplaceTwin, each non-nil map replaces its part
// wholesale (an empty map clears it).
type TwinPatch struct {
	Tags    map[string]any
	Desired map[string]any
}

// MarshalJSON encodes the patch as the service expects it:
// {"tags":{…},"properties":{"desired":{…}}}, leaving out nil parts.
func (p TwinPatch) MarshalJSON() ([]byte, error) {
	out := map[string]any{}
	if p.Tags != nil {
		out["tags"] = p.Tags
	}
	if p.Desired != nil {
		out["properties"] = map[string]any{"desired": p.Desired}
	}
	return json.Marshal(out)
}

// GetTwin reads a device twin.
func (c *ServiceClient) GetTwin(ctx context.Context, deviceID string) (*Twin, error) {
	return c.getTwin(ctx, deviceID, "")
}

// GetModuleTwin reads a module twin.
func (c *ServiceClient) GetModuleTwin(ctx context.Context, deviceID, moduleID string) (*Twin, error) {
	return c.getTwin(ctx, deviceID, moduleID)
}

// PatchTwin merges patch into a device twin and returns the new twin. etag
// (the twin's, from Twin.ETag) makes the update conditional: a stale one
// fails with 412; "" updates unconditionally.
func (c *ServiceClient) PatchTwin(ctx context.Context, deviceID string, patch TwinPatch, etag string) (*Twin, error) {
	return c.writeTwin(ctx, http.MethodPatch, deviceID, "", patch, etag)
}

// PatchModuleTwin is PatchTwin for a module twin.
func (c *ServiceClient) PatchModuleTwin(ctx context.Context, deviceID, moduleID string, patch TwinPatch, etag string) (*Twin, error) {
	return c.writeTwin(ctx, http.MethodPatch, deviceID, moduleID, patch, etag)
}

// ReplaceTwin replaces a device twin's tags and desired properties.
func (c *ServiceClient) ReplaceTwin(ctx context.Context, deviceID string, twin TwinPatch, etag string) (*Twin, error) {
	return c.writeTwin(ctx, http.MethodPut, deviceID, "", twin, etag)
}

// ReplaceModuleTwin is ReplaceTwin for a module twin.
func (c *ServiceClient) ReplaceModuleTwin(ctx context.Context, deviceID, moduleID string, twin TwinPatch, etag string) (*Twin, error) {
	return c.writeTwin(ctx, http.MethodPut, deviceID, moduleID, twin, etag)
}

func twinName(deviceID, moduleID string) string {
	if moduleID == "" {
		return deviceID
	}
	return deviceID + "/" + moduleID
}

func (c *ServiceClient) getTwin(ctx context.Context, deviceID, moduleID string) (*Twin, error) {
	var out Twin
	if _, err := c.do(ctx, request{method: http.MethodGet, path: twinPath(deviceID, moduleID), out: &out}); err != nil {
		return nil, fmt.Errorf("get twin %s: %w", twinName(deviceID, moduleID), err)
	}
	return &out, nil
}

func (c *ServiceClient) writeTwin(ctx context.Context, method, deviceID, moduleID string, body TwinPatch, etag string) (*Twin, error) {
	var out Twin
	_, err := c.do(ctx, request{method: method, path: twinPath(deviceID, moduleID), body: body,
		header: map[string]string{"If-Match": ifMatch(etag)}, out: &out})
	if err != nil {
		verb := "patch"
		if method == http.MethodPut {
			verb = "replace"
		}
		return nil, fmt.Errorf("%s twin %s: %w", verb, twinName(deviceID, moduleID), err)
	}
	return &out, nil
}

// MethodRequest is a direct method invocation.
type MethodRequest struct {
	MethodName string
	// Payload is the JSON payload; nil sends null.
	Payload json.RawMessage
	// ResponseTimeout is how long the hub waits for the device's answer
	// (whole seconds; 0: the service default, 30 s).
	ResponseTimeout time.Duration
	// ConnectTimeout is how long the hub waits for an offline device to
	// connect (whole seconds; 0: do not wait).
	ConnectTimeout time.Duration
}

// MethodResponse is the device's answer to a direct method.
type MethodResponse struct {
	Status  int             `json:"status"`
	Payload json.RawMessage `json:"payload"`
}

// InvokeMethod calls a direct method on a device. An offline device fails
// with 404 (DeviceNotOnline), a device that does not answer in time with
// 504.
func (c *ServiceClient) InvokeMethod(ctx context.Context, deviceID string, m MethodRequest) (*MethodResponse, error) {
	return c.invoke(ctx, deviceID, "", m)
}

// InvokeModuleMethod calls a direct method on a module.
func (c *ServiceClient) InvokeModuleMethod(ctx context.Context, deviceID, moduleID string, m MethodRequest) (*MethodResponse, error) {
	return c.invoke(ctx, deviceID, moduleID, m)
}

func (c *ServiceClient) invoke(ctx context.Context, deviceID, moduleID string, m MethodRequest) (*MethodResponse, error) {
	if m.MethodName == "" {
		return nil, fmt.Errorf("invoke on %s: empty method name", twinName(deviceID, moduleID))
	}
	payload := m.Payload
	if len(payload) == 0 {
		payload = json.RawMessage("null")
	}
	body := struct {
		MethodName      string          `json:"methodName"`
		Payload         json.RawMessage `json:"payload"`
		ResponseTimeout int64           `json:"responseTimeoutInSeconds,omitempty"`
		ConnectTimeout  int64           `json:"connectTimeoutInSeconds,omitempty"`
	}{m.MethodName, payload, seconds(m.ResponseTimeout), seconds(m.ConnectTimeout)}
	var out MethodResponse
	_, err := c.do(ctx, request{method: http.MethodPost, path: twinPath(deviceID, moduleID) + "/methods", body: body, out: &out})
	if err != nil {
		return nil, fmt.Errorf("invoke %s on %s: %w", m.MethodName, twinName(deviceID, moduleID), err)
	}
	return &out, nil
}

// seconds rounds d up to whole seconds.
func seconds(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64((d + time.Second - 1) / time.Second)
}

// QueryPage is one page of query results.
type QueryPage struct {
	// Items are the result rows (twins, projections or aggregates).
	Items []json.RawMessage
	// ItemType is x-ms-item-type (e.g. "twin", "raw").
	ItemType string
	// Continuation is the token for the next page; empty on the last page.
	Continuation string
}

// QueryPage runs one page of an IoT Hub query. pageSize 0 lets the service
// choose; continuation is "" for the first page.
func (c *ServiceClient) QueryPage(ctx context.Context, query string, pageSize int, continuation string) (*QueryPage, error) {
	hdr := map[string]string{}
	if pageSize > 0 {
		hdr["x-ms-max-item-count"] = strconv.Itoa(pageSize)
	}
	if continuation != "" {
		hdr["x-ms-continuation"] = continuation
	}
	var items []json.RawMessage
	h, err := c.do(ctx, request{method: http.MethodPost, path: "/devices/query",
		body: map[string]string{"query": query}, header: hdr, out: &items})
	if err != nil {
		return nil, fmt.Errorf("query: %w", err)
	}
	return &QueryPage{Items: items, ItemType: h.Get("x-ms-item-type"), Continuation: h.Get("x-ms-continuation")}, nil
}

// Query runs an IoT Hub query and yields every result row, following
// continuation tokens page after page. An error ends the sequence.
func (c *ServiceClient) Query(ctx context.Context, query string, pageSize int) iter.Seq2[json.RawMessage, error] {
	return func(yield func(json.RawMessage, error) bool) {
		cont := ""
		for {
			page, err := c.QueryPage(ctx, query, pageSize, cont)
			if err != nil {
				yield(nil, err)
				return
			}
			for _, it := range page.Items {
				if !yield(it, nil) {
					return
				}
			}
			if page.Continuation == "" {
				return
			}
			if page.Continuation == cont {
				yield(nil, fmt.Errorf("query: the service repeated continuation token %q", cont))
				return
			}
			cont = page.Continuation
		}
	}
}
