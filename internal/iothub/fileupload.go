package iothub

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// This file is the device side of IoT Hub file upload, over HTTPS with the
// device's own credentials (a SAS token signed for the device, or its
// X.509 client certificate), as the device SDKs do:
//
//  1. POST https://<hub>/devices/<id>/files?api-version=… {blobName}
//     → {correlationId, hostName, containerName, blobName, sasToken}
//  2. PUT https://<hostName>/<containerName>/<blobName><sasToken>
//     (x-ms-blob-type: BlockBlob; Put Block + Put Block List for content
//     larger than one block)
//  3. POST https://<hub>/devices/<id>/files/notifications?api-version=…
//     {correlationId, isSuccess, statusCode, statusDescription}

// DefaultBlockSize is the content size above which an upload is split into
// blocks (Put Block, Put Block List) instead of one Put Blob.
const DefaultBlockSize = 4 << 20

// FileUploadConfig configures a FileUploader.
type FileUploadConfig struct {
	// Device is the identity and the credentials, as for the MQTT client:
	// HostName, DeviceID, ModuleID, Signer or Certificate, CAPEM.
	Device DeviceConfig
	// HTTPSAddr overrides the hub address dialled for the file-upload
	// requests (default HostName:443); the server name checked stays
	// HostName.
	HTTPSAddr string
	// BlockSize is the size of one block of a block upload; 0 means
	// DefaultBlockSize. Content of at most one block goes in one Put Blob.
	BlockSize int
	// Timeout bounds each HTTP request; 0 means 5 minutes.
	Timeout time.Duration
}

// FileUploader uploads files to the storage account linked to the hub.
type FileUploader struct {
	cfg       FileUploadConfig
	hub, blob *http.Client
}

// UploadResult describes a completed upload.
type UploadResult struct {
	// CorrelationID is the hub's id of the upload.
	CorrelationID string `json:"correlationId"`
	// HostName and ContainerName locate the blob the hub chose.
	HostName      string `json:"hostName"`
	ContainerName string `json:"containerName"`
	// BlobName is the blob's name in the container (the hub prefixes the
	// device id).
	BlobName string `json:"blobName"`
	// Size is the number of bytes uploaded.
	Size int64 `json:"size"`
	// Blocks is the number of blocks (0 for a single Put Blob).
	Blocks int `json:"blocks,omitempty"`
}

// UploadError is a failed step of an upload. Retryable tells a transient
// failure (a network error, 408, 429, 5xx) from one that will fail again
// as is (a 4xx: bad credentials, a blob name the hub refuses).
type UploadError struct {
	Step      string // "sas", "blob", "notify"
	Status    int    // HTTP status, 0 for a network error
	Message   string
	Retryable bool
	Err       error
}

func (e *UploadError) Error() string {
	s := "file upload: " + e.Step
	if e.Status != 0 {
		s += fmt.Sprintf(": status %d", e.Status)
	}
	if e.Message != "" {
		s += ": " + e.Message
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *UploadError) Unwrap() error { return e.Err }

// NewFileUploader checks cfg and returns an uploader.
func NewFileUploader(cfg FileUploadConfig) (*FileUploader, error) {
	d := cfg.Device
	if d.HostName == "" || d.DeviceID == "" {
		return nil, errors.New("file upload: HostName and DeviceID are required")
	}
	if d.Signer == nil && d.Certificate == nil {
		return nil, errors.New("file upload: a Signer or a Certificate is required")
	}
	if cfg.BlockSize <= 0 {
		cfg.BlockSize = DefaultBlockSize
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Minute
	}
	dc := &DeviceClient{cfg: d}
	tc, err := dc.tlsConfig()
	if err != nil {
		return nil, err
	}
	addr := cfg.HTTPSAddr
	if addr == "" {
		addr = net.JoinHostPort(d.HostName, "443")
	}
	dialer := &net.Dialer{Timeout: 30 * time.Second}
	hubTransport := &http.Transport{
		TLSClientConfig: tc,
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, network, addr)
		},
		ForceAttemptHTTP2: false,
	}
	// The storage account is another server: the same roots (CAPEM added
	// to the system's), its own server name, no client certificate.
	blobTLS := &tls.Config{RootCAs: tc.RootCAs, MinVersion: tls.VersionTLS12}
	blobTransport := &http.Transport{TLSClientConfig: blobTLS, DialContext: dialer.DialContext, Proxy: http.ProxyFromEnvironment}
	return &FileUploader{
		cfg:  cfg,
		hub:  &http.Client{Transport: hubTransport, Timeout: cfg.Timeout},
		blob: &http.Client{Transport: blobTransport, Timeout: cfg.Timeout},
	}, nil
}

// Close releases idle connections.
func (u *FileUploader) Close() {
	u.hub.CloseIdleConnections()
	u.blob.CloseIdleConnections()
}

// sasInfo is the hub's answer to POST /devices/{id}/files.
type sasInfo struct {
	CorrelationID string `json:"correlationId"`
	HostName      string `json:"hostName"`
	ContainerName string `json:"containerName"`
	BlobName      string `json:"blobName"`
	SASToken      string `json:"sasToken"`
}

// Notification is the body of POST /devices/{id}/files/notifications.
type Notification struct {
	CorrelationID     string `json:"correlationId"`
	IsSuccess         bool   `json:"isSuccess"`
	StatusCode        int    `json:"statusCode"`
	StatusDescription string `json:"statusDescription"`
}

// Upload uploads size bytes of content as blobName: it asks the hub for a
// blob SAS URI, writes the blob, and notifies the hub of the outcome (a
// failed blob write is notified as isSuccess false, and returned).
func (u *FileUploader) Upload(ctx context.Context, blobName string, content io.ReaderAt, size int64) (UploadResult, error) {
	if blobName == "" || strings.ContainsAny(blobName, "\\?#") || strings.HasPrefix(blobName, "/") || len(blobName) > 1024 {
		return UploadResult{}, &UploadError{Step: "sas", Message: fmt.Sprintf("blob name %q: 1 to 1024 characters, no leading '/', no '\\', '?' or '#'", blobName)}
	}
	var info sasInfo
	if err := u.hubRequest(ctx, "sas", "/files", map[string]string{"blobName": blobName}, &info); err != nil {
		return UploadResult{}, err
	}
	if info.CorrelationID == "" || info.HostName == "" || info.ContainerName == "" || info.BlobName == "" {
		return UploadResult{}, &UploadError{Step: "sas", Message: "the hub's answer lacks correlationId, hostName, containerName or blobName"}
	}
	res := UploadResult{CorrelationID: info.CorrelationID, HostName: info.HostName, ContainerName: info.ContainerName, BlobName: info.BlobName, Size: size}
	blocks, putErr := u.putBlob(ctx, info, content, size)
	res.Blocks = blocks
	n := Notification{CorrelationID: info.CorrelationID, IsSuccess: putErr == nil, StatusCode: 201, StatusDescription: "uploaded"}
	if putErr != nil {
		n.StatusCode, n.StatusDescription = 500, truncate(putErr.Error(), 256)
		var ue *UploadError
		if errors.As(putErr, &ue) && ue.Status != 0 {
			n.StatusCode = ue.Status
		}
	}
	// The notification is sent even when the context ended the blob
	// write, so that the hub frees the correlation id.
	nctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	notifyErr := u.hubRequest(nctx, "notify", "/files/notifications", n, nil)
	if putErr != nil {
		return res, putErr
	}
	return res, notifyErr
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

func (u *FileUploader) devicePath() string {
	d := u.cfg.Device
	p := "/devices/" + url.PathEscape(d.DeviceID)
	if d.ModuleID != "" {
		p += "/modules/" + url.PathEscape(d.ModuleID)
	}
	return p
}

// hubRequest POSTs body as JSON to the device path + suffix and decodes
// the answer into out (when not nil).
func (u *FileUploader) hubRequest(ctx context.Context, step, suffix string, body, out any) error {
	d := u.cfg.Device
	b, err := json.Marshal(body)
	if err != nil {
		return &UploadError{Step: step, Err: err}
	}
	target := "https://" + d.HostName + u.devicePath() + suffix + "?api-version=" + APIVersion
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(b))
	if err != nil {
		return &UploadError{Step: step, Err: err}
	}
	req.Header.Set("Content-Type", "application/json; charset=utf-8")
	if d.Signer != nil && d.Certificate == nil {
		tok, err := d.Signer.Sign(ctx, DeviceResource(d.HostName, d.DeviceID, d.ModuleID), time.Now().Add(time.Hour))
		if err != nil {
			return &UploadError{Step: step, Message: "sign", Err: err, Retryable: true}
		}
		req.Header.Set("Authorization", tok)
	}
	resp, err := u.hub.Do(req)
	if err != nil {
		return &UploadError{Step: step, Err: err, Retryable: true}
	}
	defer resp.Body.Close()
	rb, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode/100 != 2 {
		return &UploadError{Step: step, Status: resp.StatusCode, Message: truncate(strings.TrimSpace(string(rb)), 300), Retryable: retryableStatus(resp.StatusCode)}
	}
	if out != nil {
		if err := json.Unmarshal(rb, out); err != nil {
			return &UploadError{Step: step, Message: "the hub's answer is not JSON", Err: err}
		}
	}
	return nil
}

func retryableStatus(s int) bool { return s == 408 || s == 429 || s >= 500 }

// blobURL is https://<hostName>/<container>/<blob><sas> with extra query
// parameters (comp, blockid) added.
func blobURL(info sasInfo, extra url.Values) (string, error) {
	u, err := url.Parse("https://" + info.HostName + "/" + url.PathEscape(info.ContainerName) + "/" + escapeBlobName(info.BlobName))
	if err != nil {
		return "", err
	}
	q, err := url.ParseQuery(strings.TrimPrefix(info.SASToken, "?"))
	if err != nil {
		return "", fmt.Errorf("sas token: %w", err)
	}
	for k, v := range extra {
		q[k] = v
	}
	u.RawQuery = q.Encode()
	return u.String(), nil
}

// escapeBlobName escapes each '/'-separated segment of a blob name.
func escapeBlobName(name string) string {
	segs := strings.Split(name, "/")
	for i, s := range segs {
		segs[i] = url.PathEscape(s)
	}
	return strings.Join(segs, "/")
}

// storageVersion is the x-ms-version of the blob requests.
const storageVersion = "2020-12-06"

func (u *FileUploader) putBlob(ctx context.Context, info sasInfo, content io.ReaderAt, size int64) (int, error) {
	bs := int64(u.cfg.BlockSize)
	if size <= bs {
		target, err := blobURL(info, nil)
		if err != nil {
			return 0, &UploadError{Step: "blob", Err: err}
		}
		return 0, u.blobRequest(ctx, target, io.NewSectionReader(content, 0, size), size, map[string]string{"x-ms-blob-type": "BlockBlob", "Content-Type": "application/octet-stream"})
	}
	var ids []string
	for off, i := int64(0), 0; off < size; off, i = off+bs, i+1 {
		n := min(bs, size-off)
		id := base64.StdEncoding.EncodeToString(fmt.Appendf(nil, "twinlet-block-%08d", i))
		target, err := blobURL(info, url.Values{"comp": {"block"}, "blockid": {id}})
		if err != nil {
			return 0, &UploadError{Step: "blob", Err: err}
		}
		if err := u.blobRequest(ctx, target, io.NewSectionReader(content, off, n), n, nil); err != nil {
			return len(ids), err
		}
		ids = append(ids, id)
	}
	type blockList struct {
		XMLName xml.Name `xml:"BlockList"`
		Latest  []string `xml:"Latest"`
	}
	body, _ := xml.Marshal(blockList{Latest: ids})
	body = append([]byte(xml.Header), body...)
	target, err := blobURL(info, url.Values{"comp": {"blocklist"}})
	if err != nil {
		return len(ids), &UploadError{Step: "blob", Err: err}
	}
	return len(ids), u.blobRequest(ctx, target, bytes.NewReader(body), int64(len(body)), map[string]string{"x-ms-blob-content-type": "application/octet-stream", "Content-Type": "application/xml"})
}

func (u *FileUploader) blobRequest(ctx context.Context, target string, body io.Reader, n int64, headers map[string]string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, target, body)
	if err != nil {
		return &UploadError{Step: "blob", Err: err}
	}
	req.ContentLength = n
	req.Header.Set("x-ms-version", storageVersion)
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := u.blob.Do(req)
	if err != nil {
		// The URL carries the SAS: report the error without it.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return &UploadError{Step: "blob", Err: err, Retryable: true}
	}
	defer resp.Body.Close()
	rb, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	if resp.StatusCode != http.StatusCreated {
		return &UploadError{Step: "blob", Status: resp.StatusCode, Message: truncate(strings.TrimSpace(string(rb)), 300), Retryable: retryableStatus(resp.StatusCode)}
	}
	return nil
}
