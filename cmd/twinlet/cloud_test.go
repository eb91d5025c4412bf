package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"flag"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twinlet/twinlet/internal/hub"
	"github.com/twinlet/twinlet/internal/iothub"
	"github.com/twinlet/twinlet/internal/testutil"
)

func freePort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestRunConnected runs `twinlet run` against an embedded hub with a key
// file: a desired patch becomes Ready in the reported properties, and the
// metrics endpoint serves.
func TestRunConnected(t *testing.T) {
	h, err := hub.New(hub.Options{Dir: t.TempDir(), MQTTAddr: "127.0.0.1:0", HTTPSAddr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	cs, err := h.CreateDevice("kiosk-17")
	if err != nil {
		t.Fatal(err)
	}
	s := newSandbox(t)
	key := filepath.Join(t.TempDir(), "device.key")
	os.WriteFile(key, []byte(cs.String()+"\n"), 0o644)
	_, port, _ := net.SplitHostPort(h.MQTTAddr())
	metrics := freePort(t)
	args := s.args("run", "--key-file", key, "--ca-file", h.CAFile(), "--hub-port", port, "--metrics-addr", metrics)

	// A key file others can read is refused.
	if code, _, errs := twinlet(t, args...); code != 1 || !strings.Contains(errs, "chmod 600") {
		t.Fatalf("open key file: %d %s", code, errs)
	}
	os.Chmod(key, 0o600)

	argv, _ := json.Marshal(args)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "TWINLET_TEST_CHILD="+string(argv))
	var logs testutil.SyncBuffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()

	p := hub.TwinPatch{}
	p.Properties = &struct {
		Desired map[string]any `json:"desired,omitempty"`
	}{Desired: map[string]any{"hostname": map[string]any{"name": "from-the-cloud"}}}
	if _, err := h.UpdateTwin("kiosk-17", "", p, false, ""); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, "reported Ready", func() bool {
		tw, _ := h.Twin("kiosk-17", "")
		b, _ := json.Marshal(tw.Properties.Reported)
		return strings.Contains(string(b), `"name":"from-the-cloud"`) && strings.Contains(string(b), `"state":"Ready"`)
	})
	if s.file("etc/hostname") != "from-the-cloud\n" {
		t.Fatalf("hostname = %q", s.file("etc/hostname"))
	}
	testutil.Eventually(t, "metrics", func() bool {
		resp, err := http.Get("http://" + metrics + "/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		m := string(b)
		return strings.Contains(m, `twinlet_hub_connected 1`) &&
			strings.Contains(m, `twinlet_reconciles_total{reason="Applied",section="hostname",state="Ready"}`) &&
			strings.Contains(m, `twinlet_reconcile_duration_seconds_count{section="hostname"}`) &&
			strings.Contains(m, `twinlet_section_failed{section="hostname"} 0`) &&
			strings.Contains(m, `twinlet_queue_depth `) &&
			strings.Contains(m, `twinlet_reported_patch_seconds_count `) &&
			strings.Contains(m, `twinlet_reported_patches_queued 0`)
	})
	if strings.Contains(logs.String(), base64Key(cs.SharedAccessKey)) {
		t.Fatal("the device key was logged")
	}
}

func base64Key(k []byte) string { return base64.StdEncoding.EncodeToString(k) }

// TestKeepAliveFromTheConfig: connection.keepAlive reaches the device
// client, also when --key-file replaces the file's credential, and its
// absence leaves iothub's default; a bad value stops `twinlet run` with
// its file:line.
func TestKeepAliveFromTheConfig(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "device.key")
	os.WriteFile(key, []byte("HostName=hub.example;DeviceId=kiosk-17;SharedAccessKey="+base64.StdEncoding.EncodeToString([]byte("k"))+"\n"), 0o600)
	resolve := func(conf string) iothub.DeviceConfig {
		t.Helper()
		p := filepath.Join(dir, "twinlet.yaml")
		os.WriteFile(p, []byte(conf), 0o644)
		fs := flag.NewFlagSet("twinlet run", flag.ContinueOnError)
		var c common
		c.register(fs)
		fs.StringVar(&c.keyFile, "key-file", "", "")
		if err := fs.Parse([]string{"--config", p, "--key-file", key}); err != nil {
			t.Fatal(err)
		}
		cfg, err := c.resolve(fs)
		if err != nil {
			t.Fatal(err)
		}
		dc, err := deviceConfig(cfg, &tpmSet{})
		if err != nil {
			t.Fatal(err)
		}
		return dc
	}
	if dc := resolve("connection:\n  keyFile: /nonexistent.key\n  keepAlive: 600s\n"); dc.KeepAlive != 10*time.Minute {
		t.Fatalf("keepAlive 600s, --key-file: the device client got %v", dc.KeepAlive)
	}
	if dc := resolve("root: /\n"); dc.KeepAlive != 0 {
		t.Fatalf("no keepAlive: the device client got %v, want 0 (iothub.DefaultKeepAlive)", dc.KeepAlive)
	}
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("idleTrim: 30s\nconnection:\n  keepAlive: 30m\n"), 0o644)
	s := newSandbox(t)
	args := append(s.args("run"), "--config", bad)
	if code, _, errs := twinlet(t, args...); code != 1 || !strings.Contains(errs, bad+":3: connection.keepAlive: 30m0s is not between 1s and 1177s") {
		t.Fatalf("keepAlive 30m: exit %d, %s", code, errs)
	}
}
