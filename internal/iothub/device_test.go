package iothub_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twinlet/twinlet/internal/hub"
	"github.com/twinlet/twinlet/internal/iothub"
	"github.com/twinlet/twinlet/internal/iothub/iothubtest"
	"github.com/twinlet/twinlet/internal/testutil"
)

// recorder collects what a device client hands to its callbacks.
type recorder struct {
	mu      sync.Mutex
	twins   []int64
	patches []int64
	desired map[string]json.RawMessage
	// gaps lists patches that did not follow the version before them: a
	// desired change the client lost.
	gaps []string
}

func (r *recorder) onTwin(d map[string]json.RawMessage, v int64, _ map[string]json.RawMessage) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.twins = append(r.twins, v)
	r.desired = d
}

func (r *recorder) onDesired(p map[string]json.RawMessage, v int64) {
	r.mu.Lock()
	last := r.lastLocked()
	r.patches = append(r.patches, v)
	r.mu.Unlock()
	if v != last+1 {
		r.mu.Lock()
		r.gaps = append(r.gaps, fmt.Sprintf("%d after %d", v, last))
		r.mu.Unlock()
	}
}

func (r *recorder) lastVersion() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lastLocked()
}

// lastLocked is the newest version seen, by twin read or by patch; the
// twin reads and patches arrive in order, so it is the last one.
func (r *recorder) lastLocked() int64 {
	var last int64
	if n := len(r.twins); n > 0 {
		last = r.twins[n-1]
	}
	if n := len(r.patches); n > 0 && r.patches[n-1] > last {
		last = r.patches[n-1]
	}
	return last
}

func startDevice(t *testing.T, h *hub.Hub, id string, mod func(*iothub.DeviceConfig)) (*iothub.DeviceClient, *recorder) {
	t.Helper()
	cs, err := h.CreateDevice(id)
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	cfg := iothub.DeviceConfig{
		HostName: cs.HostName, DeviceID: cs.DeviceID, Signer: iothub.KeySigner{Key: cs.SharedAccessKey},
		CAPEM: h.CAPEM(), Addr: h.MQTTAddr(), MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
		RequestTimeout: 5 * time.Second,
		OnTwin:         rec.onTwin, OnDesired: rec.onDesired,
		OnMethod: func(ctx context.Context, name string, payload []byte) (int, []byte) {
			if name == "echo" {
				return 200, payload
			}
			return 404, []byte(`{"error":"unknown method"}`)
		},
	}
	if mod != nil {
		mod(&cfg)
	}
	c, err := iothub.NewDeviceClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	testutil.Eventually(t, "connected", c.Connected)
	return c, rec
}

func patchDesired(t *testing.T, h *hub.Hub, id string, desired map[string]any) {
	t.Helper()
	p := hub.TwinPatch{}
	p.Properties = &struct {
		Desired map[string]any `json:"desired,omitempty"`
	}{Desired: desired}
	if _, err := h.UpdateTwin(id, "", p, false, ""); err != nil {
		t.Fatal(err)
	}
}

func TestDeviceClientTwinAndMethods(t *testing.T) {
	h := iothubtest.StartHub(t)
	c, rec := startDevice(t, h, "d1", nil)
	ctx := context.Background()

	ver, err := c.PatchReported(ctx, []byte(`{"hostname":{"name":"k1"}}`))
	if err != nil || ver < 2 {
		t.Fatalf("patch reported: %d %v", ver, err)
	}
	tw, _ := h.Twin("d1", "")
	if hn, _ := tw.Properties.Reported["hostname"].(map[string]any); hn["name"] != "k1" {
		t.Fatalf("reported = %v", tw.Properties.Reported)
	}
	// Bad JSON is a 400 that must not be retried.
	_, err = c.PatchReported(ctx, []byte(`{not json`))
	var se *iothub.StatusError
	if !errors.As(err, &se) || se.Status != 400 || se.Retryable() {
		t.Fatalf("bad patch: %v", err)
	}

	patchDesired(t, h, "d1", map[string]any{"hostname": map[string]any{"name": "k2"}})
	testutil.Eventually(t, "desired patch", func() bool { return rec.lastVersion() >= 2 })

	res, err := h.InvokeMethod(ctx, "d1", "", "echo", json.RawMessage(`{"x":1}`), 5*time.Second, 0)
	if err != nil || res.Status != 200 || string(res.Payload) != `{"x":1}` {
		t.Fatalf("method: %+v %v", res, err)
	}
}

func TestDeviceClientReconnectsAndRereadsTwin(t *testing.T) {
	h := iothubtest.StartHub(t)
	c, rec := startDevice(t, h, "d1", nil)
	// Changes made while the device is away are picked up by the re-read.
	h.SetDeviceStatus("d1", false)
	testutil.Eventually(t, "dropped", func() bool { return !c.Connected() })
	patchDesired(t, h, "d1", map[string]any{"a": 1})
	patchDesired(t, h, "d1", map[string]any{"a": 2})
	h.SetDeviceStatus("d1", true)
	testutil.Eventually(t, "reconnected with the newest twin", func() bool { return c.Connected() && rec.lastVersion() == 3 })
	rec.mu.Lock()
	got := string(rec.desired["a"])
	rec.mu.Unlock()
	if got != "2" {
		t.Fatalf("desired after reconnect: a=%s", got)
	}
	// A plain drop is healed too.
	n := c.Reconnects.Load()
	h.DropConnections("d1")
	testutil.Eventually(t, "reconnect after drop", func() bool { return c.Reconnects.Load() > n && c.Connected() })
}

func TestDeviceClientRenewsTokens(t *testing.T) {
	h := iothubtest.StartHub(t)
	// A 2 s token: renewed (a reconnect with a fresh token) every 1.6 s.
	c, rec := startDevice(t, h, "d1", func(cfg *iothub.DeviceConfig) { cfg.TokenLifetime = 2 * time.Second })
	// Keep changing desired, each change waited for, across at least three
	// renewals; changes made while the client reconnects arrive by the
	// twin read that follows the connect.
	for i := 1; c.Renewals.Load() < 3; i++ {
		patchDesired(t, h, "d1", map[string]any{"n": i})
		tw, _ := h.Twin("d1", "")
		want := tw.Properties.Desired["$version"].(int64)
		testutil.Eventually(t, fmt.Sprintf("desired version %d", want), func() bool { return rec.lastVersion() >= want })
		if i > 10000 {
			t.Fatal("no renewals")
		}
	}
	// Every renewal is followed by a twin read.
	testutil.Eventually(t, "a twin read after each renewal", func() bool {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		return len(rec.twins) >= 4
	})
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.gaps) > 0 {
		t.Fatalf("desired patches lost: %v", rec.gaps)
	}
	// Renewal comes before expiry: the hub never had to cut the client off.
	if n, r := c.Reconnects.Load(), c.Renewals.Load(); n > r+1 {
		t.Fatalf("%d connects for %d renewals: connections were lost", n, r)
	}
	if string(rec.desired["n"]) == "" {
		t.Fatal("no desired document")
	}
}

func TestDeviceClientModuleIdentity(t *testing.T) {
	h := iothubtest.StartHub(t)
	if _, err := h.CreateDevice("d1"); err != nil {
		t.Fatal(err)
	}
	cs, err := h.CreateModule("d1", "twinlet")
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	c, err := iothub.NewDeviceClient(iothub.DeviceConfig{HostName: cs.HostName, DeviceID: "d1", ModuleID: "twinlet",
		Signer: iothub.KeySigner{Key: cs.SharedAccessKey}, CAPEM: h.CAPEM(), Addr: h.MQTTAddr(),
		OnTwin: rec.onTwin, OnDesired: rec.onDesired, MinBackoff: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	defer func() { cancel(); <-done }()
	testutil.Eventually(t, "module connected", func() bool { return c.Connected() && h.Connected("d1", "twinlet") })
	p := hub.TwinPatch{}
	p.Properties = &struct {
		Desired map[string]any `json:"desired,omitempty"`
	}{Desired: map[string]any{"hostname": map[string]any{"name": "m"}}}
	if _, err := h.UpdateTwin("d1", "twinlet", p, false, ""); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, "module desired patch", func() bool { return rec.lastVersion() >= 2 })
	if _, err := c.PatchReported(ctx, []byte(`{"hostname":{"name":"m"}}`)); err != nil {
		t.Fatal(err)
	}
	mt, _ := h.Twin("d1", "twinlet")
	dt, _ := h.Twin("d1", "")
	if mt.Properties.Reported["hostname"] == nil || dt.Properties.Reported["hostname"] != nil {
		t.Fatalf("reported went to the wrong twin: module %v device %v", mt.Properties.Reported, dt.Properties.Reported)
	}
}

func TestDeviceClientThrottled(t *testing.T) {
	h := iothubtest.StartHub(t)
	c, _ := startDevice(t, h, "d1", nil)
	h.SetFaults(hub.Faults{ThrottleReportedPatch: 1})
	_, err := c.PatchReported(context.Background(), []byte(`{"a":1}`))
	var se *iothub.StatusError
	if !errors.As(err, &se) || !se.Throttled() || !se.Retryable() {
		t.Fatalf("err = %v", err)
	}
}

func TestReadKeyFileRefusesOpenModes(t *testing.T) {
	p := filepath.Join(t.TempDir(), "key")
	os.WriteFile(p, []byte("HostName=h;DeviceId=d;SharedAccessKey=a2V5\n"), 0o644)
	if _, err := iothub.ReadKeyFile(p); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("err = %v", err)
	}
	os.Chmod(p, 0o600)
	cs, err := iothub.ReadKeyFile(p)
	if err != nil || cs.DeviceID != "d" {
		t.Fatalf("cs=%+v err=%v", cs, err)
	}
}

func TestDeviceClientX509(t *testing.T) {
	h := iothubtest.StartHub(t)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "x1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(der)
	if err := h.CreateX509Device("x1", strings.ToUpper(hex.EncodeToString(sum[:]))); err != nil {
		t.Fatal(err)
	}
	cert := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	rec := &recorder{}
	c, err := iothub.NewDeviceClient(iothub.DeviceConfig{HostName: h.Hostname(), DeviceID: "x1", Certificate: &cert,
		CAPEM: h.CAPEM(), Addr: h.MQTTAddr(), OnTwin: rec.onTwin, MinBackoff: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	defer func() { cancel(); <-done }()
	testutil.Eventually(t, "x509 device connected", c.Connected)
	if _, err := c.PatchReported(ctx, []byte(`{"ok":true}`)); err != nil {
		t.Fatal(err)
	}
}
