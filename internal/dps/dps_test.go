package dps

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twinlet/twinlet/internal/sas"
)

// scripted is a stand-in DPS that answers from a script, one answer per
// request. The end-to-end tests (cmd/twinlet) run against twinhub's real
// DPS; this one exists to produce the exact sequences of throttling,
// server errors and Retry-After values the client must handle, which a
// faithful emulator has no reason to produce on demand.
type scripted struct {
	mu      sync.Mutex
	answers []answer
	reqs    []seen
}

type answer struct {
	status     int
	retryAfter string
	body       string
}

type seen struct {
	method, path, auth string
	at                 time.Time
	body               []byte
}

func (s *scripted) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var body []byte
	if r.Body != nil {
		body = make([]byte, 4096)
		n, _ := r.Body.Read(body)
		body = body[:n]
	}
	s.reqs = append(s.reqs, seen{r.Method, r.URL.Path, r.Header.Get("Authorization"), time.Now(), body})
	if len(s.answers) == 0 {
		w.WriteHeader(500)
		return
	}
	a := s.answers[0]
	s.answers = s.answers[1:]
	if a.retryAfter != "" {
		w.Header().Set("Retry-After", a.retryAfter)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(a.status)
	w.Write([]byte(a.body))
}

func (s *scripted) requests() []seen {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]seen(nil), s.reqs...)
}

func start(t *testing.T, answers ...answer) (*scripted, Config) {
	t.Helper()
	s := &scripted{answers: answers}
	srv := httptest.NewTLSServer(s)
	t.Cleanup(srv.Close)
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	cfg := Config{
		Endpoint: "example.com", // httptest's certificate covers example.com
		Addr:     strings.TrimPrefix(srv.URL, "https://"),
		IDScope:  "0ne00000001", RegistrationID: "dev-1",
		Attestation: SymmetricKey{Key: []byte("0123456789abcdef0123456789abcdef")},
		CAPEM:       ca, MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond,
		PollInterval: 10 * time.Millisecond,
	}
	return s, cfg
}

const assigned = `{"operationId":"op1","status":"assigned","registrationState":{"registrationId":"dev-1","assignedHub":"hub.example","deviceId":"dev-1","status":"assigned","substatus":"initialAssignment","payload":{"a":1}}}`

func TestRegisterPollsUntilAssigned(t *testing.T) {
	s, cfg := start(t,
		answer{202, "0", `{"operationId":"op1","status":"assigning"}`},
		answer{202, "1", `{"operationId":"op1","status":"assigning"}`},
		answer{200, "", assigned},
	)
	cfg.Payload = json.RawMessage(`{"site":"b7"}`)
	res, err := Register(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if res.AssignedHub != "hub.example" || res.DeviceID != "dev-1" || res.Substatus != "initialAssignment" || string(res.Payload) != `{"a":1}` {
		t.Fatalf("result %+v", res)
	}
	if string(res.Key) != "0123456789abcdef0123456789abcdef" {
		t.Fatal("the individual key is the hub key")
	}
	reqs := s.requests()
	if len(reqs) != 3 {
		t.Fatalf("%d requests", len(reqs))
	}
	if reqs[0].method != "PUT" || reqs[0].path != "/0ne00000001/registrations/dev-1/register" {
		t.Fatalf("register %s %s", reqs[0].method, reqs[0].path)
	}
	var body map[string]any
	json.Unmarshal(reqs[0].body, &body)
	if body["registrationId"] != "dev-1" || body["payload"].(map[string]any)["site"] != "b7" {
		t.Fatalf("register body %s", reqs[0].body)
	}
	if reqs[1].method != "GET" || reqs[1].path != "/0ne00000001/registrations/dev-1/operations/op1" {
		t.Fatalf("poll %s %s", reqs[1].method, reqs[1].path)
	}
	// Every request carries a registration token signed with the key.
	for _, r := range reqs {
		tok, err := sas.VerifyString(r.auth, []byte("0123456789abcdef0123456789abcdef"), "0ne00000001/registrations/dev-1", time.Now())
		if err != nil || tok.KeyName != "registration" {
			t.Fatalf("token %v %+v", err, tok)
		}
	}
	// Retry-After: 0 polls at once; Retry-After: 1 waits a second.
	if gap := reqs[2].at.Sub(reqs[1].at); gap < 900*time.Millisecond {
		t.Fatalf("Retry-After 1 not honoured: polled after %s", gap)
	}
}

func TestRetryableAnswersAreRetriedBoundedly(t *testing.T) {
	s, cfg := start(t,
		answer{429, "0", `{"errorCode":429001,"message":"throttled"}`},
		answer{503, "", `{"errorCode":503000,"message":"busy"}`},
		answer{200, "", assigned},
	)
	if _, err := Register(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	if n := len(s.requests()); n != 3 {
		t.Fatalf("%d requests, want 3", n)
	}

	s, cfg = start(t, answer{503, "", ""}, answer{503, "", ""}, answer{503, "", ""}, answer{503, "", ""})
	cfg.MaxAttempts = 3
	_, err := Register(context.Background(), cfg)
	if err == nil || !strings.Contains(err.Error(), "giving up after 3 attempts") || !IsRetryable(err) {
		t.Fatalf("err %v", err)
	}
	if n := len(s.requests()); n != 3 {
		t.Fatalf("%d requests, want 3 (bounded)", n)
	}
}

func TestFatalAnswersAreNotRetried(t *testing.T) {
	for _, tc := range []struct {
		name string
		a    answer
		want string
	}{
		{"unauthorized", answer{401, "", `{"errorCode":401002,"trackingId":"t-1","message":"Unauthorized","timestampUtc":"2026-01-01T00:00:00Z"}`}, "status 401 (error 401002): Unauthorized [tracking id t-1]"},
		{"not found", answer{404, "", `{"errorCode":404201,"message":"Device registration not found."}`}, "status 404 (error 404201): Device registration not found."},
		{"bad request", answer{400, "", `not json`}, "status 400: not json"},
		{"disabled", answer{200, "", `{"operationId":"o","status":"disabled","registrationState":{"status":"disabled","errorCode":401100,"errorMessage":"enrollment disabled"}}`}, "registration disabled (error 401100): enrollment disabled"},
		{"failed", answer{200, "", `{"operationId":"o","status":"failed","registrationState":{"status":"failed","errorCode":400208,"errorMessage":"no linked hub"}}`}, "registration failed (error 400208): no linked hub"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, cfg := start(t, tc.a, answer{200, "", assigned})
			_, err := Register(context.Background(), cfg)
			var e *Error
			if !errors.As(err, &e) || !strings.Contains(err.Error(), tc.want) || IsRetryable(err) {
				t.Fatalf("err %v, want %q", err, tc.want)
			}
			if n := len(s.requests()); n != 1 {
				t.Fatalf("%d requests, want 1", n)
			}
		})
	}
}

func TestGroupKeyDerivation(t *testing.T) {
	group := []byte("group-key-group-key-group-key-32")
	s, cfg := start(t, answer{200, "", assigned})
	cfg.Attestation = GroupKey{Key: group}
	res, err := Register(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	derived := DeriveKey(group, "dev-1")
	if string(res.Key) != string(derived) {
		t.Fatal("the hub key is the derived key")
	}
	if _, err := sas.VerifyString(s.requests()[0].auth, derived, "0ne00000001/registrations/dev-1", time.Now()); err != nil {
		t.Fatalf("token not signed with the derived key: %v", err)
	}
	// The documented derivation, checked against an independent value:
	// base64(HMAC-SHA256(key, id)) as `printf id | openssl dgst -sha256 -hmac key -binary | base64` prints it.
	got := base64.StdEncoding.EncodeToString(DeriveKey([]byte("key"), "id"))
	if got != "PgWhqbAsNUil4bvc415YR48QOz2Vi6A5eXt8m8YXrRk=" {
		t.Fatalf("derived %s", got)
	}
}

func TestConfigErrors(t *testing.T) {
	_, cfg := start(t)
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"no scope", func(c *Config) { c.IDScope = "" }, "ID scope is required"},
		{"no attestation", func(c *Config) { c.Attestation = nil }, "no attestation"},
		{"bad id", func(c *Config) { c.RegistrationID = "a b" }, `character ' ' at 1`},
		{"bad end", func(c *Config) { c.RegistrationID = "ab." }, "must end with"},
		{"bad payload", func(c *Config) { c.Payload = json.RawMessage("{") }, "payload is not JSON"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := cfg
			tc.mod(&c)
			_, err := Register(context.Background(), c)
			if err == nil || !strings.Contains(err.Error(), tc.want) || IsRetryable(err) {
				t.Fatalf("err %v, want %q", err, tc.want)
			}
		})
	}
}

func TestIdentityStore(t *testing.T) {
	dir := t.TempDir()
	st := Store{Dir: dir}
	if _, _, ok, err := st.Current(); ok || err != nil {
		t.Fatalf("empty store: %v %v", ok, err)
	}
	res := &Result{AssignedHub: "h1", DeviceID: "d1", RegistrationID: "d1", Key: []byte("k1")}
	old := NewIdentity(res, "", "", time.Now())
	if err := st.Save(old); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(filepath.Join(dir, IdentityFile))
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %o", fi.Mode().Perm())
	}
	res2 := &Result{AssignedHub: "h2", DeviceID: "d1", RegistrationID: "d1", Key: []byte("k2")}
	if err := st.SavePending(NewIdentity(res2, "", "", time.Now())); err != nil {
		t.Fatal(err)
	}
	// The pending identity is tried first; the old one is still kept.
	id, pending, ok, err := st.Current()
	if err != nil || !ok || !pending || id.HostName != "h2" {
		t.Fatalf("current %+v %v %v %v", id, pending, ok, err)
	}
	if in, ok, _ := st.InUse(); !ok || in.HostName != "h1" {
		t.Fatalf("in use %+v", in)
	}
	if err := st.Promote(); err != nil {
		t.Fatal(err)
	}
	if in, ok, _ := st.InUse(); !ok || in.HostName != "h2" {
		t.Fatalf("after promote %+v", in)
	}
	if _, pending, _, _ := st.Current(); pending {
		t.Fatal("still pending after promote")
	}
	// A file others can read is refused.
	os.Chmod(filepath.Join(dir, IdentityFile), 0o644)
	if _, _, _, err := st.Current(); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("err %v", err)
	}
}

func TestReadKeyFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "k")
	os.WriteFile(p, []byte(base64.StdEncoding.EncodeToString([]byte("secret"))+"\n"), 0o640)
	if _, err := ReadKeyFile(p); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("err %v", err)
	}
	os.Chmod(p, 0o600)
	if k, err := ReadKeyFile(p); err != nil || string(k) != "secret" {
		t.Fatalf("%q %v", k, err)
	}
	os.WriteFile(p, []byte("not base64!"), 0o600)
	if _, err := ReadKeyFile(p); err == nil || !strings.Contains(err.Error(), "not a base64 key") {
		t.Fatalf("err %v", err)
	}
}
