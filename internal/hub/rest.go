package hub

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/twinlet/twinlet/internal/hub/query"
	"github.com/twinlet/twinlet/internal/sas"
)

// maxBody bounds request bodies (a twin is at most ~50 KB, a method
// payload 128 KB).
const maxBody = 1 << 20

// apiError is an error the REST API reports in the service's envelope.
type apiError struct {
	status int
	name   string // iothub-errorcode
	code   int    // numeric code, e.g. 404001
	msg    string
}

func (e *apiError) Error() string { return fmt.Sprintf("%d %s: %s", e.code, e.name, e.msg) }

func apiErr(status int, name string, code int, format string, a ...any) *apiError {
	return &apiError{status, name, code, fmt.Sprintf(format, a...)}
}

// toAPIError maps the Go API's errors to the service's codes.
func toAPIError(err error) *apiError {
	var ae *apiError
	var nf *notFoundError
	var le *limitError
	switch {
	case errors.As(err, &ae):
		return ae
	case errors.As(err, &nf):
		if nf.moduleID != "" {
			return apiErr(404, "ModuleNotFound", 404010, "%s", err)
		}
		return apiErr(404, "DeviceNotFound", 404001, "%s", err)
	case errors.Is(err, ErrAlreadyExists):
		if strings.HasPrefix(err.Error(), "module") {
			return apiErr(409, "ModuleAlreadyExistsOnDevice", 409301, "%s", err)
		}
		return apiErr(409, "DeviceAlreadyExists", 409001, "%s", err)
	case errors.Is(err, ErrPreconditionFailed):
		return apiErr(412, "PreconditionFailed", 412001, "%s", err)
	case errors.Is(err, ErrDeviceNotOnline):
		return apiErr(404, "DeviceNotOnline", 404103, "%s", err)
	case errors.Is(err, ErrTimeout):
		return apiErr(504, "GatewayTimeout", 504101, "%s", err)
	case errors.As(err, &le), errors.Is(err, ErrInvalid):
		return apiErr(400, "ArgumentInvalid", 400004, "%s", err)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return apiErr(503, "ServiceUnavailable", 503001, "%s", err)
	}
	return apiErr(500, "ServerError", 500001, "%s", err)
}

func trackingID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func writeError(w http.ResponseWriter, err error) {
	ae := toAPIError(err)
	w.Header().Set("iothub-errorcode", ae.name)
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(ae.status)
	_ = json.NewEncoder(w).Encode(map[string]any{
		"Message":          "ErrorCode:" + ae.name + ";" + ae.msg,
		"ExceptionMessage": "Tracking ID:" + trackingID() + "-G:0-TimeStamp:" + time.Now().UTC().Format("01/02/2006 15:04:05"),
		"errorCode":        ae.code,
	})
}

func writeJSON(w http.ResponseWriter, status int, etag string, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	if etag != "" {
		w.Header().Set("ETag", `"`+etag+`"`)
	}
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func readJSON(r *http.Request, v any) error {
	b, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		return apiErr(400, "IotHubFormatError", 400006, "read body: %v", err)
	}
	if len(b) > maxBody {
		return apiErr(413, "MessageTooLarge", 413001, "body is larger than %d bytes", maxBody)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return apiErr(400, "IotHubFormatError", 400006, "body is not valid JSON: %v", err)
	}
	return nil
}

// route is a REST handler with the right it needs (any of rights).
type route struct {
	rights []string
	fn     func(w http.ResponseWriter, r *http.Request) error
}

func (h *Hub) restHandler() http.Handler {
	mux := http.NewServeMux()
	read := []string{RightRegistryRead}
	write := []string{RightRegistryWrite}
	svc := []string{RightServiceConnect}
	twinRead := []string{RightRegistryRead, RightServiceConnect}
	handle := func(pattern string, rights []string, fn func(http.ResponseWriter, *http.Request) error) {
		mux.Handle(pattern, h.serviceEndpoint(route{rights, fn}))
	}
	handle("PUT /devices/{id}", write, h.restPutIdentity)
	handle("GET /devices/{id}", read, h.restGetIdentity)
	handle("DELETE /devices/{id}", write, h.restDeleteIdentity)
	handle("GET /devices", read, h.restListIdentities)
	// azure-iothub's Registry.list asks for "/devices/" (and modules alike).
	handle("GET /devices/{$}", read, h.restListIdentities)
	handle("POST /devices", write, h.restBulk)
	handle("POST /devices/query", twinRead, h.restQuery)
	handle("GET /devices/{id}/modules", read, h.restListIdentities)
	handle("GET /devices/{id}/modules/{$}", read, h.restListIdentities)
	handle("PUT /devices/{id}/modules/{mid}", write, h.restPutIdentity)
	handle("GET /devices/{id}/modules/{mid}", read, h.restGetIdentity)
	handle("DELETE /devices/{id}/modules/{mid}", write, h.restDeleteIdentity)
	handle("GET /twins/{id}", twinRead, h.restGetTwin)
	handle("PATCH /twins/{id}", svc, h.restUpdateTwin)
	handle("PUT /twins/{id}", svc, h.restUpdateTwin)
	handle("GET /twins/{id}/modules/{mid}", twinRead, h.restGetTwin)
	handle("PATCH /twins/{id}/modules/{mid}", svc, h.restUpdateTwin)
	handle("PUT /twins/{id}/modules/{mid}", svc, h.restUpdateTwin)
	handle("POST /twins/{id}/methods", svc, h.restInvoke)
	handle("POST /twins/{id}/modules/{mid}/methods", svc, h.restInvoke)
	handle("GET /statistics/devices", read, h.restDeviceStats)
	handle("GET /statistics/service", svc, h.restServiceStats)
	h.adminRoutes(mux)
	h.configurationRoutes(mux)
	h.fileUploadRoutes(mux)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, apiErr(404, "NotFound", 404000, "no such endpoint: %s %s", r.Method, r.URL.Path))
	})
	return mux
}

// serviceEndpoint checks api-version, authorization and faults before a
// service handler.
func (h *Hub) serviceEndpoint(rt route) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("api-version") == "" {
			writeError(w, apiErr(400, "InvalidProtocolVersion", 400001, "the api-version query parameter is required"))
			return
		}
		if err := h.authorize(r, rt.rights); err != nil {
			writeError(w, err)
			return
		}
		h.faults.delay()
		if !h.faults.admit(opREST) {
			writeError(w, apiErr(429, "ThrottlingException", 429001, "throttled by fault injection"))
			return
		}
		if err := rt.fn(w, r); err != nil {
			h.log.Debug("rest error", "method", r.Method, "path", r.URL.Path, "error", err)
			writeError(w, err)
		}
	})
}

// authorize verifies a shared access policy token with one of rights.
func (h *Hub) authorize(r *http.Request, rights []string) error {
	raw := r.Header.Get("Authorization")
	if raw == "" {
		return apiErr(401, "IotHubUnauthorizedAccess", 401002, "missing Authorization header")
	}
	tok, err := sas.Parse(raw)
	if err != nil {
		return apiErr(401, "IotHubUnauthorizedAccess", 401002, "%v", err)
	}
	if tok.KeyName == "" {
		return apiErr(401, "IotHubUnauthorizedAccess", 401002, "a shared access policy token (skn) is required")
	}
	p, ok := h.policy(tok.KeyName)
	if !ok {
		return apiErr(401, "IotHubUnauthorizedAccess", 401002, "unknown policy %q", tok.KeyName)
	}
	var verr error
	for _, k := range []string{p.PrimaryKey, p.SecondaryKey} {
		key, _ := base64.StdEncoding.DecodeString(k)
		if verr = sas.Verify(tok, key, h.hostname, time.Now()); verr == nil {
			break
		}
	}
	if verr != nil {
		return apiErr(401, "IotHubUnauthorizedAccess", 401002, "%v", verr)
	}
	for _, right := range rights {
		if p.has(right) {
			return nil
		}
	}
	return apiErr(401, "IotHubUnauthorizedAccess", 401002, "policy %s lacks %s", tok.KeyName, strings.Join(rights, " or "))
}

func (h *Hub) restPutIdentity(w http.ResponseWriter, r *http.Request) error {
	var in Identity
	if err := readJSON(r, &in); err != nil {
		return err
	}
	id, mid := r.PathValue("id"), r.PathValue("mid")
	if in.DeviceID != "" && in.DeviceID != id || in.ModuleID != "" && in.ModuleID != mid {
		return apiErr(400, "ArgumentInvalid", 400004, "body names %s, path names %s", idKey(in.DeviceID, in.ModuleID), idKey(id, mid))
	}
	in.DeviceID, in.ModuleID = id, mid
	out, err := h.putIdentity(in, normalizeIfMatch(r.Header.Get("If-Match")))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, out.Etag, out)
	return nil
}

func (h *Hub) restGetIdentity(w http.ResponseWriter, r *http.Request) error {
	out, err := h.getIdentity(r.PathValue("id"), r.PathValue("mid"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, out.Etag, out)
	return nil
}

func (h *Hub) restDeleteIdentity(w http.ResponseWriter, r *http.Request) error {
	if err := h.deleteIdentity(r.PathValue("id"), r.PathValue("mid"), normalizeIfMatch(r.Header.Get("If-Match"))); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (h *Hub) restListIdentities(w http.ResponseWriter, r *http.Request) error {
	out, err := h.listIdentities(r.PathValue("id"))
	if err != nil {
		return err
	}
	if top, err := strconv.Atoi(r.URL.Query().Get("top")); err == nil && top > 0 && top < len(out) {
		out = out[:top]
	}
	writeJSON(w, http.StatusOK, "", out)
	return nil
}

func (h *Hub) restGetTwin(w http.ResponseWriter, r *http.Request) error {
	t, err := h.Twin(r.PathValue("id"), r.PathValue("mid"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, t.Etag, t)
	return nil
}

func (h *Hub) restUpdateTwin(w http.ResponseWriter, r *http.Request) error {
	var p TwinPatch
	if err := readJSON(r, &p); err != nil {
		return err
	}
	t, err := h.UpdateTwin(r.PathValue("id"), r.PathValue("mid"), p, r.Method == http.MethodPut, normalizeIfMatch(r.Header.Get("If-Match")))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, t.Etag, t)
	return nil
}

// methodRequest is the body of POST /twins/{id}/methods.
type methodRequest struct {
	MethodName               string          `json:"methodName"`
	Payload                  json.RawMessage `json:"payload"`
	ResponseTimeoutInSeconds *int            `json:"responseTimeoutInSeconds"`
	ConnectTimeoutInSeconds  *int            `json:"connectTimeoutInSeconds"`
}

func (h *Hub) restInvoke(w http.ResponseWriter, r *http.Request) error {
	var m methodRequest
	if err := readJSON(r, &m); err != nil {
		return err
	}
	if m.MethodName == "" {
		return apiErr(400, "ArgumentInvalid", 400004, "methodName is required")
	}
	if len(m.Payload) > 128*1024 {
		return apiErr(413, "MessageTooLarge", 413001, "payload is larger than 128 KB")
	}
	resp, conn := time.Duration(0), time.Duration(0)
	if m.ResponseTimeoutInSeconds != nil {
		if *m.ResponseTimeoutInSeconds < 5 || *m.ResponseTimeoutInSeconds > 300 {
			return apiErr(400, "ArgumentInvalid", 400004, "responseTimeoutInSeconds must be between 5 and 300")
		}
		resp = time.Duration(*m.ResponseTimeoutInSeconds) * time.Second
	}
	if m.ConnectTimeoutInSeconds != nil {
		if *m.ConnectTimeoutInSeconds < 0 || *m.ConnectTimeoutInSeconds > 300 {
			return apiErr(400, "ArgumentInvalid", 400004, "connectTimeoutInSeconds must be between 0 and 300")
		}
		conn = time.Duration(*m.ConnectTimeoutInSeconds) * time.Second
	}
	res, err := h.InvokeMethod(r.Context(), r.PathValue("id"), r.PathValue("mid"), m.MethodName, m.Payload, resp, conn)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, "", res)
	return nil
}

func (h *Hub) restDeviceStats(w http.ResponseWriter, _ *http.Request) error {
	h.mu.Lock()
	total, enabled := 0, 0
	for _, r := range h.records {
		if r.Identity.ModuleID == "" {
			total++
			if r.Identity.Status == "enabled" {
				enabled++
			}
		}
	}
	h.mu.Unlock()
	writeJSON(w, http.StatusOK, "", map[string]int{"totalDeviceCount": total, "enabledDeviceCount": enabled, "disabledDeviceCount": total - enabled})
	return nil
}

func (h *Hub) restServiceStats(w http.ResponseWriter, _ *http.Request) error {
	h.mu.Lock()
	n := 0
	for k := range h.conns {
		if !strings.Contains(k, "/") {
			n++
		}
	}
	h.mu.Unlock()
	writeJSON(w, http.StatusOK, "", map[string]int{"connectedDeviceCount": n})
	return nil
}

// Query pagination of the service.
const (
	defaultPageSize = 100
	maxPageSize     = 1000
)

func (h *Hub) restQuery(w http.ResponseWriter, r *http.Request) error {
	var body struct {
		Query string `json:"query"`
	}
	if err := readJSON(r, &body); err != nil {
		return err
	}
	rows, itemType, err := h.Query(body.Query)
	if err != nil {
		return err
	}
	size := defaultPageSize
	if v := r.Header.Get("x-ms-max-item-count"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			return apiErr(400, "ArgumentInvalid", 400004, "x-ms-max-item-count must be a positive integer")
		}
		size = min(n, maxPageSize)
	}
	off := 0
	if c := r.Header.Get("x-ms-continuation"); c != "" {
		b, err := base64.RawURLEncoding.DecodeString(c)
		n, err2 := strconv.Atoi(strings.TrimPrefix(string(b), "offset:"))
		if err != nil || err2 != nil || n < 0 || !strings.HasPrefix(string(b), "offset:") {
			return apiErr(400, "ArgumentInvalid", 400004, "invalid x-ms-continuation")
		}
		off = min(n, len(rows))
	}
	end := min(off+size, len(rows))
	if end < len(rows) {
		w.Header().Set("x-ms-continuation", base64.RawURLEncoding.EncodeToString([]byte("offset:"+strconv.Itoa(end))))
	}
	w.Header().Set("x-ms-item-type", itemType)
	writeJSON(w, http.StatusOK, "", rows[off:end])
	return nil
}

// Query runs an IoT Hub query over the twins and returns all result rows,
// ordered by identity, and the x-ms-item-type of the result ("Twin" for
// SELECT * rows, else "Raw"). A syntax error is ErrInvalid and says where.
func (h *Hub) Query(q string) ([]map[string]any, string, error) {
	parsed, err := query.Parse(q)
	if err != nil {
		return nil, "", apiErr(400, "ArgumentInvalid", 400004, "query: %v", err)
	}
	modules := parsed.From == "devices.modules"
	h.mu.Lock()
	recs := make([]*record, 0, len(h.records))
	for _, r := range h.records {
		if (r.Identity.ModuleID != "") == modules {
			recs = append(recs, r)
		}
	}
	sort.Slice(recs, func(i, j int) bool { return recs[i].key() < recs[j].key() })
	twins := make([]Twin, len(recs))
	for i, r := range recs {
		twins[i] = r.twin()
	}
	h.mu.Unlock()

	var docs []map[string]any
	for _, t := range twins {
		doc, err := twinDoc(t)
		if err != nil {
			return nil, "", err
		}
		if parsed.Match(doc) {
			docs = append(docs, doc)
		}
	}
	var rows []map[string]any
	itemType := "Raw"
	if parsed.IsAggregate() {
		rows = parsed.Aggregate(docs)
	} else {
		rows = make([]map[string]any, 0, len(docs))
		for _, d := range docs {
			p := parsed.Project(d)
			if reflect.ValueOf(p).UnsafePointer() == reflect.ValueOf(d).UnsafePointer() {
				itemType = "Twin"
			}
			rows = append(rows, p)
		}
		if len(docs) == 0 {
			probe := map[string]any{}
			if p := parsed.Project(probe); reflect.ValueOf(p).UnsafePointer() == reflect.ValueOf(probe).UnsafePointer() {
				itemType = "Twin"
			}
		}
	}
	if top := parsed.Top(); top > 0 && top < len(rows) {
		rows = rows[:top]
	}
	if rows == nil {
		rows = []map[string]any{}
	}
	return rows, itemType, nil
}

// twinDoc is a twin as the query language sees it: plain decoded JSON.
func twinDoc(t Twin) (map[string]any, error) {
	b, err := json.Marshal(t)
	if err != nil {
		return nil, err
	}
	var doc map[string]any
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, err
	}
	return doc, nil
}
