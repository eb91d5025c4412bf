package iothub_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twinlet/twinlet/internal/hub"
	"github.com/twinlet/twinlet/internal/iothub"
	"github.com/twinlet/twinlet/internal/iothub/iothubtest"
	"github.com/twinlet/twinlet/internal/testutil"
)

// settles waits until the number of goroutines is back to at most base,
// and fails with a dump of what is left otherwise.
func settles(t *testing.T, what string, base int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Fatalf("%s: %d goroutines, %d before:\n%s", what, runtime.NumGoroutine(), base, buf)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestMethodHandlersCancelledOnShutdown: a direct method still running
// when the client stops has its context cancelled, and Run returns only
// after it did.
func TestMethodHandlersCancelledOnShutdown(t *testing.T) {
	h := iothubtest.StartHub(t)
	cs, err := h.CreateDevice("d1")
	if err != nil {
		t.Fatal(err)
	}
	entered, returned := make(chan struct{}), make(chan struct{})
	c, err := iothub.NewDeviceClient(iothub.DeviceConfig{
		HostName: cs.HostName, DeviceID: cs.DeviceID, Signer: iothub.KeySigner{Key: cs.SharedAccessKey},
		CAPEM: h.CAPEM(), Addr: h.MQTTAddr(), MinBackoff: 20 * time.Millisecond, RequestTimeout: 20 * time.Second,
		OnMethod: func(ctx context.Context, name string, payload []byte) (int, []byte) {
			close(entered)
			<-ctx.Done()
			close(returned)
			return 503, []byte(`{"error":"shutting down"}`)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	testutil.Eventually(t, "connected", c.Connected)
	invoked := make(chan struct{})
	go func() {
		defer close(invoked)
		h.InvokeMethod(context.Background(), "d1", "", "slow", json.RawMessage(`{}`), 20*time.Second, 0)
	}()
	<-entered
	cancel()
	<-done
	select {
	case <-returned:
	default:
		t.Fatal("Run returned while a method handler was still running")
	}
	<-invoked
}

// holdingProxy accepts one TCP connection and forwards it to upstream
// only once released; done is closed when that connection is over.
type holdingProxy struct {
	ln       net.Listener
	accepted chan struct{}
	release  chan struct{}
	done     chan struct{}
}

func newHoldingProxy(t *testing.T, upstream string) *holdingProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &holdingProxy{ln: ln, accepted: make(chan struct{}), release: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		in, err := ln.Accept()
		ln.Close()
		if err != nil {
			return
		}
		defer in.Close()
		close(p.accepted)
		<-p.release
		out, err := net.Dial("tcp", upstream)
		if err != nil {
			return
		}
		defer out.Close()
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); io.Copy(out, in); out.(*net.TCPConn).CloseWrite() }()
		go func() { defer wg.Done(); io.Copy(in, out); in.(*net.TCPConn).CloseWrite() }()
		wg.Wait()
	}()
	t.Cleanup(func() { ln.Close() })
	return p
}

// TestAbandonedConnectIsDisconnected: a connect given up (here: the
// client stops while the hub has not answered yet) must not leave a paho
// client behind that completes the connect later and stays connected, and
// Run returns only once paho let go of it.
func TestAbandonedConnectIsDisconnected(t *testing.T) {
	h := iothubtest.StartHub(t)
	cs, err := h.CreateDevice("d1")
	if err != nil {
		t.Fatal(err)
	}
	base := runtime.NumGoroutine()
	p := newHoldingProxy(t, h.MQTTAddr())
	c, err := iothub.NewDeviceClient(iothub.DeviceConfig{
		HostName: cs.HostName, DeviceID: cs.DeviceID, Signer: iothub.KeySigner{Key: cs.SharedAccessKey},
		CAPEM: h.CAPEM(), Addr: p.ln.Addr().String(), RequestTimeout: 20 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	<-p.accepted
	cancel()
	// The hub answers only now, while the client stops.
	close(p.release)
	<-done
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		t.Fatalf("the abandoned connection is still open (hub sees the device connected: %v)", h.Connected("d1", ""))
	}
	settles(t, "after an abandoned connect", base)
}

// TestFailedTwinReadDoesNotStallPatches: when the re-read a version gap
// asks for fails, desired changes must still arrive (before, patches were
// buffered until the next reconnect).
func TestFailedTwinReadDoesNotStallPatches(t *testing.T) {
	h := iothubtest.StartHub(t)
	var logs testutil.SyncBuffer
	c, rec := startDevice(t, h, "d1", func(cfg *iothub.DeviceConfig) {
		cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	})
	testutil.Eventually(t, "first twin read", func() bool { rec.mu.Lock(); defer rec.mu.Unlock(); return len(rec.twins) > 0 })
	h.SetFaults(hub.Faults{ThrottleTwinGet: 1})
	c.Inject("$iothub/twin/PATCH/properties/desired/?$version=50", []byte(`{"gap":true}`))
	testutil.Eventually(t, "a throttled re-read", func() bool { return strings.Contains(logs.String(), "429") })
	h.SetFaults(hub.Faults{})
	patchDesired(t, h, "d1", map[string]any{"after": 1})
	tw, _ := h.Twin("d1", "")
	want := tw.Properties.Desired["$version"].(int64)
	testutil.Eventually(t, fmt.Sprintf("desired version %d", want), func() bool { return rec.lastVersion() >= want })
}

// TestReadKeyFileReadsWholeFile: the whole file is read, however the
// bytes come, and a read error is reported, not parsed as empty.
func TestReadKeyFileReadsWholeFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "key")
	cs := "HostName=h;DeviceId=d;SharedAccessKey=a2V5"
	os.WriteFile(p, []byte(strings.Repeat("\n", 5000)+cs+"\n"), 0o600)
	if got, err := iothub.ReadKeyFile(p); err != nil || got.DeviceID != "d" {
		t.Fatalf("padded key file: %+v, %v", got, err)
	}
	os.WriteFile(p, []byte(strings.Repeat(" ", 1<<20)), 0o600)
	if _, err := iothub.ReadKeyFile(p); err == nil || !strings.Contains(err.Error(), "too large") {
		t.Fatalf("huge key file: err = %v", err)
	}
	sub := filepath.Join(dir, "sub")
	os.Mkdir(sub, 0o700)
	if _, err := iothub.ReadKeyFile(sub); err == nil || !strings.Contains(err.Error(), "directory") {
		t.Fatalf("directory: err = %v", err)
	}
}

// TestCallbacksInOrderAcrossDrops: through a burst of desired changes and
// dropped connections, the callbacks never overlap and the versions they
// see never go back, and the last change arrives.
func TestCallbacksInOrderAcrossDrops(t *testing.T) {
	h := iothubtest.StartHub(t)
	var mu sync.Mutex
	var inFlight atomic.Int32
	var seen []int64
	var problems []string
	check := func(kind string, v int64) {
		if inFlight.Add(1) != 1 {
			mu.Lock()
			problems = append(problems, kind+" callback overlapping another")
			mu.Unlock()
		}
		// A callback takes time (the agent's used to write the state
		// directory): a window in which another delivery would overlap.
		time.Sleep(100 * time.Microsecond)
		mu.Lock()
		if n := len(seen); n > 0 && v < seen[n-1] {
			problems = append(problems, fmt.Sprintf("%s version %d after %d", kind, v, seen[n-1]))
		}
		seen = append(seen, v)
		mu.Unlock()
		inFlight.Add(-1)
	}
	startDevice(t, h, "d1", func(cfg *iothub.DeviceConfig) {
		cfg.OnTwin = func(_ map[string]json.RawMessage, v int64, _ map[string]json.RawMessage) { check("twin", v) }
		cfg.OnDesired = func(_ map[string]json.RawMessage, v int64) { check("patch", v) }
	})
	// Twin reads answered late: patches keep arriving while the client
	// reads the twin after each reconnect.
	h.SetFaults(hub.Faults{Delay: 5 * time.Millisecond})
	for i := 1; i <= 3000; i++ {
		patchDesired(t, h, "d1", map[string]any{"n": i})
		if i%300 == 0 {
			h.DropConnections("d1")
		}
	}
	tw, _ := h.Twin("d1", "")
	want := tw.Properties.Desired["$version"].(int64)
	testutil.Eventually(t, "the last desired version", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen) > 0 && seen[len(seen)-1] == want
	})
	mu.Lock()
	defer mu.Unlock()
	if len(problems) > 0 {
		t.Fatalf("%d problems, first: %v", len(problems), problems[:min(5, len(problems))])
	}
}
