package hub

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/twinlet/twinlet/internal/iothub"
	"github.com/twinlet/twinlet/internal/sas"
)

// This file is IoT Hub file upload: the device asks the hub for a blob SAS
// URI (POST /devices/{id}/files), writes the blob to the storage account
// linked to the hub (Azurite in tests and the demo), and notifies the hub
// (POST /devices/{id}/files/notifications). The hub signs the blob SAS
// with the storage account key (a service SAS, version 2020-12-06) and
// delivers each notification to the event stream (twinctl events).

// FileUploadOptions link a storage account to the hub for file upload.
type FileUploadOptions struct {
	// AccountName and AccountKey (decoded) are the storage account's.
	AccountName string
	AccountKey  []byte
	// BlobEndpoint is the account's blob service URL: https://<account>.blob.core.windows.net,
	// or path style https://127.0.0.1:10000/<account> for Azurite.
	BlobEndpoint string
	// Container receives the blobs, named <deviceId>/<blobName>. It must
	// exist.
	Container string
	// SASTTL is the lifetime of a blob SAS; default one hour.
	SASTTL time.Duration
	// CAPEM adds CA certificates to the system roots for the hub's own
	// requests to the blob endpoint (the size of an uploaded blob).
	CAPEM []byte
}

// ParseStorageConnectionString reads an Azure Storage connection string
// (DefaultEndpointsProtocol=https;AccountName=…;AccountKey=…;BlobEndpoint=…
// or EndpointSuffix=…) into the account fields of FileUploadOptions.
func ParseStorageConnectionString(cs string) (FileUploadOptions, error) {
	var o FileUploadOptions
	kv := map[string]string{}
	for _, part := range strings.Split(cs, ";") {
		if strings.TrimSpace(part) == "" {
			continue
		}
		k, v, ok := strings.Cut(part, "=")
		if !ok {
			return o, fmt.Errorf("storage connection string: %q is not key=value", k)
		}
		kv[k] = v
	}
	o.AccountName = kv["AccountName"]
	key, err := base64.StdEncoding.DecodeString(kv["AccountKey"])
	if err != nil || len(key) == 0 {
		return o, errors.New("storage connection string: AccountKey is missing or not base64")
	}
	o.AccountKey = key
	o.BlobEndpoint = kv["BlobEndpoint"]
	if o.BlobEndpoint == "" && o.AccountName != "" {
		suffix := kv["EndpointSuffix"]
		if suffix == "" {
			suffix = "core.windows.net"
		}
		o.BlobEndpoint = "https://" + o.AccountName + ".blob." + suffix
	}
	if o.AccountName == "" || o.BlobEndpoint == "" {
		return o, errors.New("storage connection string: AccountName and BlobEndpoint (or EndpointSuffix) are required")
	}
	return o, nil
}

func (o *FileUploadOptions) check() error {
	if o.AccountName == "" || len(o.AccountKey) == 0 || o.Container == "" {
		return errors.New("file upload: account name, account key and container are required")
	}
	u, err := url.Parse(o.BlobEndpoint)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return fmt.Errorf("file upload: blob endpoint %q must be an https URL", o.BlobEndpoint)
	}
	if o.SASTTL <= 0 {
		o.SASTTL = time.Hour
	}
	return nil
}

// upload is a SAS handed out and not yet notified.
type upload struct {
	deviceID, moduleID string
	blobName           string
	expires            time.Time
}

// maxPendingUploads bounds the SAS URIs handed out and not yet notified,
// per hub (the service allows 10 concurrent uploads per device).
const maxPendingUploads = 10000

// FileUploadNotification is the body of a file-upload notification event,
// as the service's file notification messages carry it.
type FileUploadNotification struct {
	DeviceID          string    `json:"deviceId"`
	ModuleID          string    `json:"moduleId,omitempty"`
	BlobURI           string    `json:"blobUri"`
	BlobName          string    `json:"blobName"`
	LastUpdatedTime   time.Time `json:"lastUpdatedTime"`
	BlobSizeInBytes   int64     `json:"blobSizeInBytes"`
	EnqueuedTimeUtc   time.Time `json:"enqueuedTimeUtc"`
	CorrelationID     string    `json:"correlationId"`
	IsSuccess         bool      `json:"isSuccess"`
	StatusCode        int       `json:"statusCode"`
	StatusDescription string    `json:"statusDescription,omitempty"`
}

// FileNotificationSource is the iothub-message-source property of the
// events that carry file-upload notifications.
const FileNotificationSource = "fileNotifications"

func (h *Hub) fileUploadRoutes(mux *http.ServeMux) {
	for _, p := range []string{"/devices/{id}", "/devices/{id}/modules/{mid}"} {
		mux.Handle("POST "+p+"/files", h.deviceEndpoint(h.restFileSAS))
		mux.Handle("POST "+p+"/files/notifications", h.deviceEndpoint(h.restFileNotification))
	}
}

// deviceEndpoint checks api-version and the device's own credentials (a
// SAS token for its identity, or its X.509 client certificate) for the
// identity of the path.
func (h *Hub) deviceEndpoint(fn func(w http.ResponseWriter, r *http.Request) error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("api-version") == "" {
			writeError(w, apiErr(400, "InvalidProtocolVersion", 400001, "the api-version query parameter is required"))
			return
		}
		if err := h.authorizeDevice(r, r.PathValue("id"), r.PathValue("mid")); err != nil {
			writeError(w, err)
			return
		}
		h.faults.delay()
		if !h.faults.admit(opREST) {
			writeError(w, apiErr(429, "ThrottlingException", 429001, "throttled by fault injection"))
			return
		}
		if err := fn(w, r); err != nil {
			h.log.Debug("file upload error", "method", r.Method, "path", r.URL.Path, "error", err)
			writeError(w, err)
		}
	})
}

func deviceUnauthorized(format string, a ...any) error {
	return apiErr(401, "IotHubUnauthorizedAccess", 401002, format, a...)
}

// authorizeDevice verifies that the request comes from the identity
// deviceID[/moduleID], as the MQTT endpoint does on CONNECT.
func (h *Hub) authorizeDevice(r *http.Request, deviceID, moduleID string) error {
	key := idKey(deviceID, moduleID)
	h.mu.Lock()
	rec, ok := h.records[key]
	var id Identity
	var devStatus string
	if ok {
		id = rec.Identity
		devStatus = h.records[deviceID].Identity.Status
	}
	h.mu.Unlock()
	if !ok {
		return deviceUnauthorized("identity %s not found", key)
	}
	if devStatus != "enabled" {
		return deviceUnauthorized("device %s is %s", deviceID, devStatus)
	}
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 && r.Header.Get("Authorization") == "" {
		return h.verifyDeviceCert(id, key, r.TLS.PeerCertificates)
	}
	raw := r.Header.Get("Authorization")
	if raw == "" {
		return deviceUnauthorized("missing Authorization header (or client certificate)")
	}
	tok, err := sas.Parse(raw)
	if err != nil {
		return deviceUnauthorized("%v", err)
	}
	var keys []string
	if tok.KeyName != "" {
		p, ok := h.policy(tok.KeyName)
		if !ok || !p.has(RightDeviceConnect) {
			return deviceUnauthorized("policy %q cannot connect devices", tok.KeyName)
		}
		keys = []string{p.PrimaryKey, p.SecondaryKey}
	} else {
		if id.Authentication.Type != AuthSAS {
			return deviceUnauthorized("%s has no symmetric key", key)
		}
		keys = []string{id.Authentication.SymmetricKey.PrimaryKey, id.Authentication.SymmetricKey.SecondaryKey}
	}
	target := iothub.DeviceResource(h.hostname, deviceID, moduleID)
	lastErr := sas.ErrSignature
	for _, k := range keys {
		b, err := base64.StdEncoding.DecodeString(k)
		if err != nil || len(b) == 0 {
			continue
		}
		if lastErr = sas.Verify(tok, b, target, time.Now()); lastErr == nil {
			return nil
		}
	}
	return deviceUnauthorized("%v", lastErr)
}

func (h *Hub) verifyDeviceCert(id Identity, key string, certs []*x509.Certificate) error {
	if id.Authentication.Type != AuthSelfSigned && id.Authentication.Type != AuthCA {
		return deviceUnauthorized("client certificate for %s, whose authentication is %s", key, id.Authentication.Type)
	}
	leaf := certs[0]
	if leaf.Subject.CommonName != key {
		return deviceUnauthorized("certificate CN %q is not %q", leaf.Subject.CommonName, key)
	}
	if now := time.Now(); now.Before(leaf.NotBefore) || now.After(leaf.NotAfter) {
		return deviceUnauthorized("client certificate is not valid now")
	}
	if id.Authentication.Type == AuthCA {
		if err := h.verifyCAChain(certs); err != nil {
			return deviceUnauthorized("%v", err)
		}
		return nil
	}
	s1, s256 := sha1.Sum(leaf.Raw), sha256.Sum256(leaf.Raw)
	for _, t := range []*string{id.Authentication.X509Thumbprint.PrimaryThumbprint, id.Authentication.X509Thumbprint.SecondaryThumbprint} {
		if t != nil && (strings.EqualFold(*t, hex.EncodeToString(s1[:])) || strings.EqualFold(*t, hex.EncodeToString(s256[:]))) {
			return nil
		}
	}
	return deviceUnauthorized("client certificate thumbprint does not match")
}

func (h *Hub) restFileSAS(w http.ResponseWriter, r *http.Request) error {
	fu := h.opts.FileUpload
	if fu == nil {
		return apiErr(400, "IotHubNotFound", 400023, "no storage account is linked to this hub for file upload (twinhub --storage-connection-string)")
	}
	var in struct {
		BlobName *string `json:"blobName"`
	}
	if err := readJSON(r, &in); err != nil {
		return err
	}
	switch {
	case in.BlobName == nil:
		return apiErr(400, "ArgumentInvalid", 400004, "/blobName: required")
	case *in.BlobName == "" || len(*in.BlobName) > 1024 || strings.HasPrefix(*in.BlobName, "/") || strings.ContainsAny(*in.BlobName, "\\?#") ||
		strings.ContainsFunc(*in.BlobName, func(c rune) bool { return c < 0x20 || c == 0x7f }):
		return apiErr(400, "ArgumentInvalid", 400004, "/blobName: 1 to 1024 characters, no leading '/', no '\\', '?', '#' or control characters")
	}
	for _, seg := range strings.Split(*in.BlobName, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return apiErr(400, "ArgumentInvalid", 400004, "/blobName: empty, '.' or '..' path segment")
		}
	}
	deviceID, moduleID := r.PathValue("id"), r.PathValue("mid")
	blob := deviceID + "/" + *in.BlobName
	now := time.Now().UTC()
	expiry := now.Add(fu.SASTTL)
	corr := newCorrelationID()
	h.mu.Lock()
	if h.uploads == nil {
		h.uploads = map[string]upload{}
	}
	for k, u := range h.uploads {
		if now.After(u.expires) {
			delete(h.uploads, k)
		}
	}
	if len(h.uploads) >= maxPendingUploads {
		h.mu.Unlock()
		return apiErr(429, "ThrottlingException", 429001, "too many file uploads in progress")
	}
	h.uploads[corr] = upload{deviceID: deviceID, moduleID: moduleID, blobName: blob, expires: expiry}
	h.mu.Unlock()
	ep, _ := url.Parse(fu.BlobEndpoint)
	writeJSON(w, http.StatusOK, "", map[string]string{
		"correlationId": corr,
		"hostName":      ep.Host + strings.TrimSuffix(ep.Path, "/"),
		"containerName": fu.Container,
		"blobName":      blob,
		"sasToken":      "?" + BlobSAS(fu.AccountName, fu.AccountKey, fu.Container, blob, "rcw", now.Add(-5*time.Minute), expiry).Encode(),
	})
	return nil
}

func newCorrelationID() string {
	b := make([]byte, 24)
	_, _ = rand.Read(b)
	return base64.StdEncoding.EncodeToString(b)
}

// BlobSASVersion is the storage service version of the SAS the hub signs.
const BlobSASVersion = "2020-12-06"

// BlobSAS signs a service SAS for one blob (sr=b) of version 2020-12-06
// with the storage account key: HMAC-SHA256 over the permissions, start,
// expiry, canonicalized resource (/blob/<account>/<container>/<blob>),
// identifier, IP range, protocol, version, resource, snapshot time,
// encryption scope and the five response header overrides, one per line.
func BlobSAS(account string, key []byte, container, blob, perms string, start, expiry time.Time) url.Values {
	st, se := start.UTC().Format(time.RFC3339), expiry.UTC().Format(time.RFC3339)
	toSign := strings.Join([]string{
		perms, st, se,
		"/blob/" + account + "/" + container + "/" + blob,
		"",      // signedIdentifier
		"",      // signedIP
		"https", // signedProtocol
		BlobSASVersion,
		"b",                // signedResource
		"",                 // signedSnapshotTime
		"",                 // signedEncryptionScope
		"", "", "", "", "", // rscc, rscd, rsce, rscl, rsct
	}, "\n")
	m := hmac.New(sha256.New, key)
	m.Write([]byte(toSign))
	return url.Values{
		"sv": {BlobSASVersion}, "sr": {"b"}, "sp": {perms}, "st": {st}, "se": {se}, "spr": {"https"},
		"sig": {base64.StdEncoding.EncodeToString(m.Sum(nil))},
	}
}

func (h *Hub) restFileNotification(w http.ResponseWriter, r *http.Request) error {
	var in struct {
		CorrelationID     *string `json:"correlationId"`
		IsSuccess         *bool   `json:"isSuccess"`
		StatusCode        int     `json:"statusCode"`
		StatusDescription string  `json:"statusDescription"`
	}
	if err := readJSON(r, &in); err != nil {
		return err
	}
	switch {
	case in.CorrelationID == nil || *in.CorrelationID == "":
		return apiErr(400, "ArgumentInvalid", 400004, "/correlationId: required")
	case in.IsSuccess == nil:
		return apiErr(400, "ArgumentInvalid", 400004, "/isSuccess: required")
	}
	deviceID, moduleID := r.PathValue("id"), r.PathValue("mid")
	h.mu.Lock()
	up, ok := h.uploads[*in.CorrelationID]
	if ok && up.deviceID == deviceID && up.moduleID == moduleID {
		delete(h.uploads, *in.CorrelationID)
	}
	h.mu.Unlock()
	if !ok || up.deviceID != deviceID || up.moduleID != moduleID {
		return apiErr(400, "ArgumentInvalid", 400004, "/correlationId: no file upload of %s has this correlation id", idKey(deviceID, moduleID))
	}
	fu := h.opts.FileUpload
	n := FileUploadNotification{
		DeviceID: deviceID, ModuleID: moduleID, BlobName: up.blobName,
		BlobURI:       strings.TrimSuffix(fu.BlobEndpoint, "/") + "/" + fu.Container + "/" + up.blobName,
		CorrelationID: *in.CorrelationID, IsSuccess: *in.IsSuccess, StatusCode: in.StatusCode, StatusDescription: in.StatusDescription,
		EnqueuedTimeUtc: time.Now().UTC(), LastUpdatedTime: time.Now().UTC(),
	}
	if *in.IsSuccess {
		ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
		size, mod, err := h.blobProperties(ctx, up.blobName)
		cancel()
		if err != nil {
			// The device says it uploaded; the hub cannot see the blob.
			h.log.Warn("file upload notification: blob properties", "device", idKey(deviceID, moduleID), "blob", up.blobName, "error", err)
		} else {
			n.BlobSizeInBytes, n.LastUpdatedTime = size, mod
		}
	}
	body, _ := json.Marshal(n)
	props := map[string]string{
		"iothub-message-source":       FileNotificationSource,
		"iothub-connection-device-id": deviceID,
		"content-type":                "application/json",
	}
	if moduleID != "" {
		props["iothub-connection-module-id"] = moduleID
	}
	h.events.add(Event{DeviceID: deviceID, ModuleID: moduleID, Properties: props, Body: body})
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// blobProperties reads a blob's size and modification time with a
// read-only SAS of the hub's own.
func (h *Hub) blobProperties(ctx context.Context, blob string) (int64, time.Time, error) {
	fu := h.opts.FileUpload
	now := time.Now()
	sasq := BlobSAS(fu.AccountName, fu.AccountKey, fu.Container, blob, "r", now.Add(-5*time.Minute), now.Add(5*time.Minute))
	segs := strings.Split(blob, "/")
	for i, s := range segs {
		segs[i] = url.PathEscape(s)
	}
	target := strings.TrimSuffix(fu.BlobEndpoint, "/") + "/" + url.PathEscape(fu.Container) + "/" + strings.Join(segs, "/") + "?" + sasq.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, target, nil)
	if err != nil {
		return 0, time.Time{}, err
	}
	req.Header.Set("x-ms-version", BlobSASVersion)
	resp, err := h.blobClient().Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // the URL carries the SAS
		}
		return 0, time.Time{}, err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, time.Time{}, fmt.Errorf("HEAD blob: status %d", resp.StatusCode)
	}
	size, _ := strconv.ParseInt(resp.Header.Get("Content-Length"), 10, 64)
	mod, _ := http.ParseTime(resp.Header.Get("Last-Modified"))
	return size, mod.UTC(), nil
}

func (h *Hub) blobClient() *http.Client {
	h.blobOnce.Do(func() {
		roots, err := x509.SystemCertPool()
		if err != nil || roots == nil {
			roots = x509.NewCertPool()
		}
		if fu := h.opts.FileUpload; fu != nil && len(fu.CAPEM) > 0 {
			roots.AppendCertsFromPEM(fu.CAPEM)
		}
		h.blobHTTP = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}}}
	})
	return h.blobHTTP
}
