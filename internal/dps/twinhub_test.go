package dps

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"strings"
	"testing"
	"time"

	"github.com/twinlet/twinlet/internal/hub"
)

// startTwinhub runs twinhub's DPS on loopback over TLS.
func startTwinhub(t testing.TB, o hub.Options) *hub.Hub {
	t.Helper()
	o.MQTTAddr, o.HTTPSAddr, o.DPSHostname = "127.0.0.1:0", "127.0.0.1:0", "dps.localhost"
	h, err := hub.New(o)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

func groupEnrollment(t testing.TB, h *hub.Hub, id string) []byte {
	t.Helper()
	key := make([]byte, 32)
	rand.Read(key)
	g := hub.EnrollmentGroup{EnrollmentGroupID: id}
	g.Attestation = hub.Attestation{Type: hub.AttestationSymmetricKey, SymmetricKey: &hub.SymmetricKey{
		PrimaryKey: base64.StdEncoding.EncodeToString(key), SecondaryKey: base64.StdEncoding.EncodeToString(key[:16])}}
	g.ProvisioningStatus = "enabled"
	if _, err := h.PutEnrollmentGroup(g, "*"); err != nil {
		t.Fatal(err)
	}
	return key
}

func twinhubConfig(h *hub.Hub, regID string, a Attestation) Config {
	return Config{Endpoint: h.DPSHostname(), Addr: h.HTTPSAddr(), IDScope: h.IDScope(), RegistrationID: regID,
		Attestation: a, CAPEM: h.CAPEM()}
}

// TestTwinhubPolling: against twinhub's DPS told to keep an operation
// assigning for two polls with Retry-After 1 s, the client polls exactly
// twice more, a second apart, and the derived key then opens the hub.
func TestTwinhubPolling(t *testing.T) {
	h := startTwinhub(t, hub.Options{DPSRetryAfter: time.Second, DPSAssigningPolls: 2})
	key := groupEnrollment(t, h, "g")
	start := time.Now()
	res, err := Register(context.Background(), twinhubConfig(h, "poller", GroupKey{Key: key}))
	if err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el < 2*time.Second {
		t.Fatalf("done after %s: Retry-After 1s was not honoured on 2 polls", el)
	}
	if n := h.DPSStats().ByRegistration["poller"]; n != 4 { // register, 2 × assigning, assigned
		t.Fatalf("%d requests, want 4", n)
	}
	if res.AssignedHub != h.Hostname() || res.DeviceID != "poller" {
		t.Fatalf("result %+v", res)
	}
	cs, err := h.ConnectionString("poller", "")
	if err != nil {
		t.Fatal(err)
	}
	if string(cs.SharedAccessKey) != string(res.Key) {
		t.Fatal("the hub holds another key than the derived one")
	}
}

// BenchmarkRegister is one symmetric-key registration (register and, with
// twinhub's default of no assigning polls, the final poll) against
// twinhub over TLS on loopback, a new TLS connection each time as a
// device makes it.
func BenchmarkRegister(b *testing.B) {
	h := startTwinhub(b, hub.Options{DPSRetryAfter: -1})
	key := groupEnrollment(b, h, "bench")
	cfg := twinhubConfig(h, "bench-device", GroupKey{Key: key})
	b.ResetTimer()
	for b.Loop() {
		if _, err := Register(context.Background(), cfg); err != nil {
			b.Fatal(err)
		}
	}
}

// TestUntrustedServerIsNotRetried: without twinhub's CA the TLS check
// fails, which no retry can fix: one attempt, a clear error.
func TestUntrustedServerIsNotRetried(t *testing.T) {
	h := startTwinhub(t, hub.Options{DPSRetryAfter: -1})
	key := groupEnrollment(t, h, "g")
	cfg := twinhubConfig(h, "d", GroupKey{Key: key})
	cfg.CAPEM = nil
	start := time.Now()
	_, err := Register(context.Background(), cfg)
	if err == nil || IsRetryable(err) || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("err %v", err)
	}
	if strings.Contains(err.Error(), "giving up") {
		t.Fatalf("retried: %v (after %s)", err, time.Since(start))
	}
}
