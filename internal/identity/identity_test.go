package identity_test

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/twinlet/twinlet/internal/identity"
	"github.com/twinlet/twinlet/internal/iothub"
	"github.com/twinlet/twinlet/internal/sas"
	"github.com/twinlet/twinlet/internal/testutil"
	"github.com/twinlet/twinlet/internal/tpm"
	"github.com/twinlet/twinlet/internal/tpm/tpmtest"
)

// TestMain doubles as the client application: re-executed with
// TWINLET_IDENTITY_CLIENT=SOCKET (as another uid), it asks the socket for
// its identity and prints the status code and body.
func TestMain(m *testing.M) {
	if sock := os.Getenv("TWINLET_IDENTITY_CLIENT"); sock != "" {
		path := "/identity"
		if q := os.Getenv("TWINLET_IDENTITY_QUERY"); q != "" {
			path += "?" + q
		}
		code, body, err := get(sock, path)
		if err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
		fmt.Printf("%d\n%s", code, body)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func get(sock, path string) (int, string, error) {
	c := http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}, Timeout: 30 * time.Second}
	resp, err := c.Get("http://twinlet" + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

// world makes a directory every uid may enter, holding a copy of this
// test binary (go test's build directory is root-only) for the clients.
func world(t *testing.T) (dir, client string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a client as another uid")
	}
	dir, err := os.MkdirTemp("", "twinlet-identity-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	self, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	client = filepath.Join(dir, "client.test")
	if err := os.WriteFile(client, self, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir, client
}

// asUID runs the client as uid (and gid) and returns status and body.
func asUID(t *testing.T, client, sock string, uid uint32, query ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(client, "-test.run=^$")
	cmd.Env = []string{"TWINLET_IDENTITY_CLIENT=" + sock, "TWINLET_IDENTITY_QUERY=" + strings.Join(query, "&")}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("client as uid %d: %v\n%s", uid, err, out)
	}
	var code int
	var body string
	first, rest, _ := strings.Cut(string(out), "\n")
	fmt.Sscan(first, &code)
	body = rest
	return code, body
}

func serve(t *testing.T, sock string, entries []identity.Entry, logs io.Writer) {
	t.Helper()
	s, err := identity.New(sock, entries, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := s.Listen()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
		if _, err := os.Stat(sock); !os.IsNotExist(err) {
			t.Error("socket left behind")
		}
	})
}

func TestSocketServesOnlyMappedUIDs(t *testing.T) {
	dir, client := world(t)
	sock := filepath.Join(dir, "run", "identity.sock")
	key := make([]byte, 32)
	rand.Read(key)
	var logs testutil.SyncBuffer
	serve(t, sock, []identity.Entry{
		{Name: "telemetry", HostName: "hub.example", DeviceID: "kiosk-17", ModuleID: "telemetry", Signer: iothub.KeySigner{Key: key}, UIDs: []uint32{4242, 4243}},
	}, &logs)

	code, body := asUID(t, client, sock, 4242)
	if code != 200 {
		t.Fatalf("mapped uid: %d %s", code, body)
	}
	var r identity.Response
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		t.Fatal(err)
	}
	if r.Name != "telemetry" || r.HostName != "hub.example" || r.DeviceID != "kiosk-17" || r.ModuleID != "telemetry" {
		t.Fatalf("response %+v", r)
	}
	tok1, err := sas.Parse(r.SASToken)
	if err != nil {
		t.Fatal(err)
	}
	if err := sas.Verify(tok1, key, "hub.example/devices/kiosk-17/modules/telemetry", time.Now()); err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(r.ConnectionString, ";SharedAccessSignature="+r.SASToken) || !strings.HasPrefix(r.ConnectionString, "HostName=hub.example;DeviceId=kiosk-17;ModuleId=telemetry;") {
		t.Fatalf("connection string %q", r.ConnectionString)
	}
	if strings.Contains(body, base64.StdEncoding.EncodeToString(key)) {
		t.Fatal("the key crossed the socket")
	}

	// The lifetime asked for, within bounds.
	if code, body := asUID(t, client, sock, 4243, "ttl=60"); code != 200 {
		t.Fatalf("ttl=60: %d %s", code, body)
	} else {
		var r2 identity.Response
		json.Unmarshal([]byte(body), &r2)
		if d := time.Until(time.Unix(r2.ExpiresOn, 0)); d > 61*time.Second || d < 50*time.Second {
			t.Fatalf("ttl=60 expires in %s", d)
		}
	}
	for _, q := range []string{"ttl=0", "ttl=86401", "ttl=x"} {
		if code, body := asUID(t, client, sock, 4242, q); code != 400 || !strings.Contains(body, "ttl") {
			t.Fatalf("%s: %d %s", q, code, body)
		}
	}

	// An unmapped uid is refused and logged; so is root.
	if code, body := asUID(t, client, sock, 4444); code != 403 || !strings.Contains(body, "uid 4444 maps to no identity") {
		t.Fatalf("unmapped uid: %d %s", code, body)
	}
	if code, _, err := get(sock, "/identity"); err != nil || code != 403 {
		t.Fatalf("root: %d %v", code, err)
	}
	testutil.Eventually(t, "refusal logged", func() bool {
		return strings.Contains(logs.String(), "uid maps to no identity") && strings.Contains(logs.String(), "uid=4444")
	})
	if strings.Contains(logs.String(), r.SASToken) {
		t.Fatal("the token was logged")
	}
}

// A slot's token is signed in the TPM: the identity's key stays in swtpm.
func TestSocketTokenSignedInTPM(t *testing.T) {
	dir, client := world(t)
	sw := tpmtest.Start(t)
	tp, err := tpm.Open(sw.TCTI)
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Close()
	key := make([]byte, 32)
	rand.Read(key)
	cs := iothub.ConnectionString{HostName: "hub.example", DeviceID: "kiosk-17", ModuleID: "collector", SharedAccessKey: key}
	if err := tp.SetSlotConnectionString(2, cs); err != nil {
		t.Fatal(err)
	}
	id, err := tp.SlotURI(2)
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "identity.sock")
	serve(t, sock, []identity.Entry{{Name: "collector", HostName: id.HostName, DeviceID: id.DeviceID, ModuleID: id.ModuleID, Signer: tp.Signer(2), UIDs: []uint32{5000}}}, io.Discard)
	code, body := asUID(t, client, sock, 5000)
	if code != 200 {
		t.Fatalf("%d %s", code, body)
	}
	var r identity.Response
	json.Unmarshal([]byte(body), &r)
	tok1, _ := sas.Parse(r.SASToken)
	if err := sas.Verify(tok1, key, "hub.example/devices/kiosk-17/modules/collector", time.Now()); err != nil {
		t.Fatal(err)
	}
}

func TestNewAndListenRefuse(t *testing.T) {
	s := iothub.KeySigner{Key: []byte("k")}
	if _, err := identity.New("", []identity.Entry{
		{Name: "a", HostName: "h", DeviceID: "d", Signer: s, UIDs: []uint32{7}},
		{Name: "b", HostName: "h", DeviceID: "d", Signer: s, UIDs: []uint32{7}},
	}, nil); err == nil || !strings.Contains(err.Error(), "uid 7 already maps to identity a") {
		t.Fatalf("one uid, two identities: %v", err)
	}
	p := filepath.Join(t.TempDir(), "identity.sock")
	os.WriteFile(p, []byte("precious"), 0o600)
	srv, err := identity.New(p, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Listen(); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("listen over a file: %v", err)
	}
	if b, _ := os.ReadFile(p); string(b) != "precious" {
		t.Fatal("the file was replaced")
	}
	open := filepath.Join(t.TempDir(), "open")
	os.Mkdir(open, 0o777)
	os.Chmod(open, 0o777)
	srv, _ = identity.New(filepath.Join(open, "identity.sock"), nil, nil)
	if _, err := srv.Listen(); err == nil || !strings.Contains(err.Error(), "writable by group or others") {
		t.Fatalf("listen in a world-writable directory: %v", err)
	}
}
