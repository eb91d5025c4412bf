package agent_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twinlet/twinlet/internal/agent"
	"github.com/twinlet/twinlet/internal/hub"
	"github.com/twinlet/twinlet/internal/hub/azurite/azuritetest"
	"github.com/twinlet/twinlet/internal/iothub"
	"github.com/twinlet/twinlet/internal/testutil"
	"github.com/twinlet/twinlet/providers"
	_ "github.com/twinlet/twinlet/providers/diagnostics"
	"github.com/twinlet/twinlet/reconciler"
)

// agentUploader hands the agent, once built, to the reconciler as its
// uploader (the reconciler is built first), as twinlet run does.
type agentUploader struct {
	mu sync.Mutex
	a  *agent.Agent
}

func (u *agentUploader) UploadFile(ctx context.Context, name string, r io.ReaderAt, size int64) (providers.UploadResult, error) {
	u.mu.Lock()
	a := u.a
	u.mu.Unlock()
	if a == nil {
		return providers.UploadResult{}, providers.ErrNoUploader
	}
	return a.UploadFile(ctx, name, r, size)
}

// TestDiagnosticsThroughTheAgent runs the whole chain: local policy
// defines the collectors, a desired request and the direct method
// diagnostics.collect upload bundles through the agent's device identity
// to twinhub and Azurite, the result is reported in the twin; with the
// storage down a request is reported UploadFailed and retried with the
// reconciler's backoff until it is uploaded; a bad payload is 400 with the
// pointer.
func TestDiagnosticsThroughTheAgent(t *testing.T) {
	az := azuritetest.Start(t)
	az.CreateContainer("diag")
	fu, err := hub.ParseStorageConnectionString(az.ConnectionString())
	if err != nil {
		t.Fatal(err)
	}
	fu.Container, fu.CAPEM = "diag", az.CAPEM
	dir := t.TempDir()
	root, stateDir, policyDir := filepath.Join(dir, "root"), filepath.Join(dir, "state"), filepath.Join(dir, "policy")
	for _, d := range []string{filepath.Join(root, "var/log/app"), policyDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(root, "var/log/app/a.log"), []byte("agent log\n"), 0o644)
	os.WriteFile(filepath.Join(policyDir, "diag.yaml"), []byte(`apiVersion: twinlet.dev/v1
kind: DevicePolicy
metadata: {name: diag}
spec:
  mode: default
  diagnostics:
    collectors:
      logs: {files: {paths: ["/var/log/app/*.log"]}}
`), 0o600)
	h, err := hub.New(hub.Options{MQTTAddr: "127.0.0.1:0", HTTPSAddr: "127.0.0.1:0", FileUpload: &fu})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	cs, err := h.CreateDevice("kiosk-17")
	if err != nil {
		t.Fatal(err)
	}
	info, _ := providers.Lookup("diagnostics")
	up := &agentUploader{}
	var notify func([]byte)
	var nmu sync.Mutex
	r, err := reconciler.New(reconciler.Options{Root: root, StateDir: stateDir, PolicyDir: policyDir, Logger: slog.New(slog.DiscardHandler),
		Providers: []providers.Info{info}, Uploader: up,
		OnReport: func(doc []byte) {
			nmu.Lock()
			f := notify
			nmu.Unlock()
			if f != nil {
				f(doc)
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	cfg := iothub.DeviceConfig{HostName: cs.HostName, DeviceID: cs.DeviceID, Signer: iothub.KeySigner{Key: cs.SharedAccessKey},
		CAPEM: append(h.CAPEM(), az.CAPEM...), Addr: h.MQTTAddr(), MinBackoff: 20 * time.Millisecond, MaxBackoff: 300 * time.Millisecond, RequestTimeout: 5 * time.Second}
	a, err := agent.New(r, cfg, agent.Options{StateDir: stateDir, Coalesce: 20 * time.Millisecond, FileUploadAddr: h.HTTPSAddr()})
	if err != nil {
		t.Fatal(err)
	}
	up.mu.Lock()
	up.a = a
	up.mu.Unlock()
	nmu.Lock()
	notify = a.Notify
	nmu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		r.Run(ctx, reconciler.RunOptions{Resync: time.Hour, PolicyPoll: 100 * time.Millisecond, Backoff: reconciler.Backoff{Base: 100 * time.Millisecond, Max: 500 * time.Millisecond}})
	}()
	go func() { defer wg.Done(); a.Run(ctx) }()
	t.Cleanup(func() { cancel(); wg.Wait() })
	testutil.Eventually(t, "connected", a.Client().Connected)

	reported := func(keys ...string) any {
		tw, err := h.Twin("kiosk-17", "")
		if err != nil {
			return nil
		}
		b, _ := json.Marshal(tw.Properties.Reported)
		var v any
		json.Unmarshal(b, &v)
		for _, k := range keys {
			m, ok := v.(map[string]any)
			if !ok {
				return nil
			}
			v = m[k]
		}
		return v
	}
	desire := func(requests map[string]any) {
		p := hub.TwinPatch{}
		p.Properties = &struct {
			Desired map[string]any `json:"desired,omitempty"`
		}{Desired: map[string]any{"diagnostics": map[string]any{"requests": requests}}}
		if _, err := h.UpdateTwin("kiosk-17", "", p, false, ""); err != nil {
			t.Fatal(err)
		}
	}

	desire(map[string]any{"r1": map[string]any{"uploadName": "case/r1.tar.gz"}})
	testutil.Eventually(t, "r1 reported Uploaded", func() bool {
		return reported("diagnostics", "requests", "r1", "state") == "Uploaded"
	})
	if got := reported("diagnostics", "requests", "r1", "blobName"); got != "kiosk-17/case/r1.tar.gz" {
		t.Errorf("reported blobName %v", got)
	}
	if _, err := az.Download("diag", "kiosk-17/case/r1.tar.gz"); err != nil {
		t.Fatal(err)
	}

	call := func(payload string) (int, string) {
		t.Helper()
		res, err := h.InvokeMethod(context.Background(), "kiosk-17", "", "diagnostics.collect", json.RawMessage(payload), 60*time.Second, 0)
		if err != nil {
			t.Fatal(err)
		}
		return res.Status, string(res.Payload)
	}
	if st, body := call(`{"uploadName": "now.tar.gz"}`); st != 200 || !strings.Contains(body, `"blobName":"kiosk-17/now.tar.gz"`) {
		t.Fatalf("diagnostics.collect: %d %s", st, body)
	}
	if _, err := az.Download("diag", "kiosk-17/now.tar.gz"); err != nil {
		t.Fatal(err)
	}
	if st, body := call(`{"uploadName": 5}`); st != 400 || !strings.Contains(body, "/uploadName") {
		t.Fatalf("bad payload: %d %s", st, body)
	}

	// Storage down: reported UploadFailed, then retried with backoff.
	az.Stop()
	desire(map[string]any{"r2": map[string]any{}})
	testutil.Eventually(t, "r2 reported UploadFailed", func() bool {
		return reported("diagnostics", "requests", "r2", "state") == "UploadFailed" &&
			reported("diagnostics", "lastUpload", "result") == "Failed"
	})
	az.Restart()
	az.CreateContainer("diag")
	testutil.Eventually(t, "r2 uploaded by a retry", func() bool {
		return reported("diagnostics", "requests", "r2", "state") == "Uploaded"
	})
	if n := reported("diagnostics", "requests", "r2", "attempts"); fmt.Sprint(n) == "1" {
		t.Errorf("r2 uploaded at the first attempt with the storage down: %v", n)
	}
	if _, err := az.Download("diag", "kiosk-17/diagnostics-r2.tar.gz"); err != nil {
		t.Fatal(err)
	}
}
