package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/twinlet/twinlet/internal/hub"
	"github.com/twinlet/twinlet/internal/testutil"
	"github.com/twinlet/twinlet/internal/tpm"
	"github.com/twinlet/twinlet/internal/tpm/tpmblob"
	"github.com/twinlet/twinlet/internal/tpm/tpmtest"
)

// TestRunWithTPMSlot: the device key lives only in a swtpm slot, stored
// from a connection string or activated from a DPS-style blob made for
// this TPM; `twinlet run` with connection.tpm connects to twinhub over TLS
// with tokens signed in the TPM and reports Ready.
func TestRunWithTPMSlot(t *testing.T) {
	for _, how := range []string{"connection-string", "activation-blob"} {
		t.Run(how, func(t *testing.T) { runWithTPMSlot(t, how) })
	}
}

func runWithTPMSlot(t *testing.T, how string) {
	sw := tpmtest.Start(t)
	h, err := hub.New(hub.Options{Dir: t.TempDir(), MQTTAddr: "127.0.0.1:0", HTTPSAddr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	cs, err := h.CreateDevice("kiosk-tpm")
	if err != nil {
		t.Fatal(err)
	}
	tp, err := tpm.Open(sw.TCTI)
	if err != nil {
		t.Fatal(err)
	}
	switch how {
	case "connection-string":
		if err := tp.SetSlotConnectionString(4, cs); err != nil {
			t.Fatal(err)
		}
	case "activation-blob":
		ek, err := tp.EndorsementKeyPublic()
		if err != nil {
			t.Fatal(err)
		}
		srk, err := tp.StorageRootKeyPublic()
		if err != nil {
			t.Fatal(err)
		}
		blob, err := tpmblob.Make(ek, srk, cs.SharedAccessKey)
		if err != nil {
			t.Fatal(err)
		}
		if err := tp.ActivateIdentityKey(blob, 4); err != nil {
			t.Fatal(err)
		}
		if err := tp.SetSlotURI(4, tpm.Identity{HostName: cs.HostName, DeviceID: cs.DeviceID}); err != nil {
			t.Fatal(err)
		}
	}
	tp.Close() // swtpm serves one client at a time: the agent's now

	_, port, _ := net.SplitHostPort(h.MQTTAddr())
	conf := filepath.Join(t.TempDir(), "twinlet.yaml")
	os.WriteFile(conf, []byte(fmt.Sprintf("connection:\n  tpm: {tcti: %q, slot: 4}\n  caFile: %s\n  port: %s\n", sw.TCTI, h.CAFile(), port)), 0o600)
	s := newSandbox(t)
	args := s.args("run")
	args[2] = conf // --config

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
	}{Desired: map[string]any{"hostname": map[string]any{"name": "tpm-backed"}}}
	if _, err := h.UpdateTwin("kiosk-tpm", "", p, false, ""); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, "reported Ready", func() bool {
		tw, _ := h.Twin("kiosk-tpm", "")
		b, _ := json.Marshal(tw.Properties.Reported)
		return strings.Contains(string(b), `"name":"tpm-backed"`) && strings.Contains(string(b), `"state":"Ready"`)
	})
	if s.file("etc/hostname") != "tpm-backed\n" {
		t.Fatalf("hostname = %q", s.file("etc/hostname"))
	}
	if strings.Contains(logs.String(), base64Key(cs.SharedAccessKey)) {
		t.Fatal("the device key was logged")
	}
}

// An empty slot is a clear error at start, naming the slot and the fix.
func TestRunWithEmptyTPMSlot(t *testing.T) {
	sw := tpmtest.Start(t)
	conf := filepath.Join(t.TempDir(), "twinlet.yaml")
	os.WriteFile(conf, []byte(fmt.Sprintf("connection:\n  tpm: {tcti: %q, slot: 6}\n", sw.TCTI)), 0o600)
	s := newSandbox(t)
	args := s.args("run")
	args[2] = conf
	code, _, errs := twinlet(t, args...)
	if code == 0 || !strings.Contains(errs, "connection.tpm: tpm: slot 6: no URI") || !strings.Contains(errs, "slot-set-connection-string 6") {
		t.Fatalf("exit %d: %s", code, errs)
	}
}
