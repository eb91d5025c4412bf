package iothub

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/twinlet/twinlet/internal/version"
)

// DPSServiceAPIVersion is the Device Provisioning Service api-version the
// DPS service client speaks.
const DPSServiceAPIVersion = "2021-10-01"

// DPS service collections.
const (
	DPSEnrollments      = "enrollments"
	DPSEnrollmentGroups = "enrollmentGroups"
	DPSRegistrations    = "registrations"
)

// DPSServiceClient calls the Device Provisioning Service's service API
// (enrollments, enrollment groups, registration records) with a shared
// access policy such as provisioningserviceowner. Documents are passed as
// JSON in the service's shape; errors are *ServiceError. It never logs,
// and its errors hold no key or token.
type DPSServiceClient struct {
	cs   ConnectionString
	base string
	hc   *http.Client
	now  func() time.Time

	mu       sync.Mutex
	token    string
	tokenExp time.Time
}

// NewDPSServiceClient returns a client for the DPS of cs
// ("HostName=…;SharedAccessKeyName=…;SharedAccessKey=…"). WithRootCAs and
// WithServiceAddr apply as for ServiceClient.
func NewDPSServiceClient(cs ConnectionString, opts ...ServiceOption) (*DPSServiceClient, error) {
	if cs.HostName == "" || cs.SharedAccessKeyName == "" || len(cs.SharedAccessKey) == 0 || cs.DeviceID != "" {
		return nil, fmt.Errorf("dps service client: need a DPS policy connection string (HostName, SharedAccessKeyName, SharedAccessKey)")
	}
	cfg := serviceConfig{now: time.Now}
	for _, o := range opts {
		o(&cfg)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: cfg.roots, MinVersion: tls.VersionTLS12}
	if cfg.addr != "" {
		if _, _, err := net.SplitHostPort(cfg.addr); err != nil {
			return nil, fmt.Errorf("dps service client: address %q: %w", cfg.addr, err)
		}
		addr := cfg.addr
		var d net.Dialer
		tr.Proxy = nil
		tr.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
			return d.DialContext(ctx, network, addr)
		}
	}
	return &DPSServiceClient{cs: cs, base: "https://" + cs.HostName, hc: &http.Client{Transport: tr}, now: cfg.now}, nil
}

// HostName is the DPS host name.
func (c *DPSServiceClient) HostName() string { return c.cs.HostName }

// Close releases idle connections.
func (c *DPSServiceClient) Close() { c.hc.CloseIdleConnections() }

func (c *DPSServiceClient) authToken() (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	if c.token != "" && c.tokenExp.Sub(now) > serviceTokenRenew {
		return c.token, nil
	}
	exp := now.Add(serviceTokenTTL)
	c.token, c.tokenExp = NewSASToken(c.cs.HostName, c.cs.SharedAccessKey, c.cs.SharedAccessKeyName, exp), exp
	return c.token, nil
}

func (c *DPSServiceClient) do(ctx context.Context, method, path string, body any, hdr map[string]string) (json.RawMessage, http.Header, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, nil, fmt.Errorf("%s %s: encode body: %w", method, path, err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path+"?api-version="+DPSServiceAPIVersion, rd)
	if err != nil {
		return nil, nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	tok, err := c.authToken()
	if err != nil {
		return nil, nil, err
	}
	req.Header.Set("Authorization", tok)
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "twinlet/"+version.Version)
	if body != nil {
		req.Header.Set("Content-Type", "application/json; charset=utf-8")
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse))
	if err != nil {
		return nil, nil, fmt.Errorf("%s %s: read response: %w", method, path, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, nil, fmt.Errorf("%s %s: %w", method, path, parseServiceError(resp.StatusCode, resp.Header, data))
	}
	return data, resp.Header, nil
}

func dpsPath(collection, id string) string { return "/" + collection + "/" + url.PathEscape(id) }

// Get reads one enrollment, enrollment group or registration record.
func (c *DPSServiceClient) Get(ctx context.Context, collection, id string) (json.RawMessage, error) {
	b, _, err := c.do(ctx, http.MethodGet, dpsPath(collection, id), nil, nil)
	return b, err
}

// Put creates or replaces an enrollment or enrollment group; a non-empty
// etag makes it conditional (If-Match).
func (c *DPSServiceClient) Put(ctx context.Context, collection, id string, doc any, etag string) (json.RawMessage, error) {
	var hdr map[string]string
	if etag != "" {
		hdr = map[string]string{"If-Match": ifMatch(etag)}
	}
	b, _, err := c.do(ctx, http.MethodPut, dpsPath(collection, id), doc, hdr)
	return b, err
}

// Delete removes an enrollment, group or registration record; a non-empty
// etag makes it conditional.
func (c *DPSServiceClient) Delete(ctx context.Context, collection, id, etag string) error {
	var hdr map[string]string
	if etag != "" {
		hdr = map[string]string{"If-Match": ifMatch(etag)}
	}
	_, _, err := c.do(ctx, http.MethodDelete, dpsPath(collection, id), nil, hdr)
	return err
}

// Query lists a collection page by page, following the continuation
// token: the enrollments, the enrollment groups, or (collection
// DPSRegistrations) the registration records of the group groupID.
func (c *DPSServiceClient) Query(ctx context.Context, collection, groupID string, pageSize int) ([]json.RawMessage, error) {
	path := "/" + collection + "/query"
	if collection == DPSRegistrations {
		path = dpsPath(collection, groupID) + "/query"
	}
	var out []json.RawMessage
	cont := ""
	for {
		hdr := map[string]string{}
		if pageSize > 0 {
			hdr["x-ms-max-item-count"] = strconv.Itoa(pageSize)
		}
		if cont != "" {
			hdr["x-ms-continuation"] = cont
		}
		b, h, err := c.do(ctx, http.MethodPost, path, map[string]string{"query": "*"}, hdr)
		if err != nil {
			return nil, err
		}
		var page []json.RawMessage
		if err := json.Unmarshal(b, &page); err != nil {
			return nil, fmt.Errorf("POST %s: decode response: %w", path, err)
		}
		out = append(out, page...)
		next := h.Get("x-ms-continuation")
		if next == "" || next == cont || len(page) == 0 {
			return out, nil
		}
		cont = next
	}
}
