package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/twinlet/twinlet/internal/hub"
	"github.com/twinlet/twinlet/internal/identity"
	"github.com/twinlet/twinlet/internal/iothub"
	"github.com/twinlet/twinlet/internal/testutil"
	"github.com/twinlet/twinlet/internal/tpm/tpmtest"
)

// Re-executed with TWINLET_TEST_IDENTITY_CLIENT=SOCKET, this test binary
// is the other application: it asks the socket for its identity and
// prints the status and body.
func init() {
	sock := os.Getenv("TWINLET_TEST_IDENTITY_CLIENT")
	if sock == "" {
		return
	}
	c := http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	resp, err := c.Get("http://twinlet/identity")
	if err != nil {
		fmt.Println(0, err)
		os.Exit(0)
	}
	b, _ := io.ReadAll(resp.Body)
	fmt.Printf("%d\n%s", resp.StatusCode, b)
	os.Exit(0)
}

// staticSigner hands the device client the token the identity socket
// issued, as an application using a SAS-token connection string does.
type staticSigner string

func (s staticSigner) Sign(context.Context, string, time.Time) (string, error) { return string(s), nil }

// TestIdentitiesForOtherApplications: a module's key is stored in a
// swtpm slot with `twinlet tpm`; `twinlet run` serves it on the identity
// socket; an application running as a mapped uid gets a token and
// connects to twinhub as the module with it; an unmapped uid is refused.
func TestIdentitiesForOtherApplications(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run the application as another uid")
	}
	sw := tpmtest.Start(t)
	h, err := hub.New(hub.Options{Dir: t.TempDir(), MQTTAddr: "127.0.0.1:0", HTTPSAddr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if _, err := h.CreateDevice("kiosk-17"); err != nil {
		t.Fatal(err)
	}
	mod, err := h.CreateModule("kiosk-17", "collector")
	if err != nil {
		t.Fatal(err)
	}
	if code, out, errs := tpmCLI(t, mod.String(), "--tpm", sw.TCTI, "slot-set-connection-string", "3"); code != 0 {
		t.Fatalf("%s%s", out, errs)
	}

	// A directory and a copy of this binary every uid can reach.
	dir, err := os.MkdirTemp("", "twinlet-identity-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o755)
	self, _ := os.ReadFile(os.Args[0])
	app := filepath.Join(dir, "app")
	os.WriteFile(app, self, 0o755)
	sock := filepath.Join(dir, "identity.sock")

	conf := filepath.Join(t.TempDir(), "twinlet.yaml")
	os.WriteFile(conf, []byte(fmt.Sprintf("identitySocket: %s\nidentities:\n  collector: {module: collector, slot: 3, tcti: %q, users: ['4242']}\n", sock, sw.TCTI)), 0o600)
	s := newSandbox(t)
	args := s.args("run")
	args[2] = conf
	argv, _ := json.Marshal(args)
	agent := exec.Command(os.Args[0], "-test.run=^$")
	agent.Env = append(os.Environ(), "TWINLET_TEST_CHILD="+string(argv))
	var logs testutil.SyncBuffer
	agent.Stdout, agent.Stderr = &logs, &logs
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { agent.Process.Kill(); agent.Wait() }()
	testutil.Eventually(t, "identity socket", func() bool { _, err := os.Stat(sock); return err == nil })

	ask := func(uid uint32) (int, string) {
		cmd := exec.Command(app, "-test.run=^$")
		cmd.Env = []string{"TWINLET_TEST_IDENTITY_CLIENT=" + sock}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("app as %d: %v %s", uid, err, out)
		}
		var code int
		first, rest, _ := strings.Cut(string(out), "\n")
		fmt.Sscan(first, &code)
		return code, rest
	}
	code, body := ask(4242)
	if code != 200 {
		t.Fatalf("mapped uid: %d %s\n%s", code, body, logs.String())
	}
	var r identity.Response
	json.Unmarshal([]byte(body), &r)
	if r.DeviceID != "kiosk-17" || r.ModuleID != "collector" || strings.Contains(body, base64Key(mod.SharedAccessKey)) {
		t.Fatalf("response %s", body)
	}
	if code, _ := ask(4343); code != 403 {
		t.Fatalf("unmapped uid: %d", code)
	}
	testutil.Eventually(t, "refusal logged", func() bool { return strings.Contains(logs.String(), "uid=4343") })

	// The token is good with the hub: connect as the module with it.
	_, port, _ := net.SplitHostPort(h.MQTTAddr())
	ca, _ := os.ReadFile(h.CAFile())
	dc, err := iothub.NewDeviceClient(iothub.DeviceConfig{HostName: r.HostName, DeviceID: r.DeviceID, ModuleID: r.ModuleID,
		Signer: staticSigner(r.SASToken), CAPEM: ca, Addr: net.JoinHostPort(r.HostName, port)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); dc.Run(ctx) }()
	defer func() { cancel(); <-done }()
	testutil.Eventually(t, "module connected with the issued token", dc.Connected)
}
