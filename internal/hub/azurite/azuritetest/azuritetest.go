// Package azuritetest starts Azurite, Microsoft's Azure Storage emulator
// (the npm package pinned in internal/hub/azurite, installed by `make
// azurite`), for tests: its blob service on a free loopback port, over
// HTTPS with a server certificate of a CA made for the test, data in
// memory, stopped when the test ends.
package azuritetest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob"

	"github.com/twinlet/twinlet/internal/testutil"
)

// Azurite's well-known development account.
const (
	AccountName = "devstoreaccount1"
	AccountKey  = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)

// Azurite is a running blob service.
type Azurite struct {
	// Port is the blob service's port on 127.0.0.1.
	Port int
	// CAPEM is the CA of the server certificate.
	CAPEM []byte

	t              testing.TB
	node, main     string
	dir            string
	certFile, keyF string
	stop           func()
}

// Key is the account key, decoded.
func Key() []byte {
	k, _ := base64.StdEncoding.DecodeString(AccountKey)
	return k
}

// Endpoint is the blob service URL, path style: https://127.0.0.1:N/devstoreaccount1.
func (a *Azurite) Endpoint() string {
	return fmt.Sprintf("https://127.0.0.1:%d/%s", a.Port, AccountName)
}

// ConnectionString is the account's storage connection string.
func (a *Azurite) ConnectionString() string {
	return "DefaultEndpointsProtocol=https;AccountName=" + AccountName + ";AccountKey=" + AccountKey + ";BlobEndpoint=" + a.Endpoint() + ";"
}

// mainJS is the Azurite blob service's entry point in the project's
// node_modules.
func mainJS() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(filepath.Dir(file)), "node_modules", "azurite", "dist", "src", "blob", "main.js")
}

// Start starts Azurite for t and stops it at cleanup. It skips the test,
// naming the make target, when Node.js or the Azurite package is missing.
func Start(t testing.TB) *Azurite {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node is not installed: run `make azurite` (Azurite, the Azure Storage emulator)")
	}
	main := mainJS()
	if _, err := os.Stat(main); err != nil {
		t.Skip("Azurite is not installed: run `make azurite` (npm ci in internal/hub/azurite)")
	}
	a := &Azurite{t: t, node: node, main: main, dir: t.TempDir()}
	a.makeCert()
	t.Cleanup(a.Stop)
	var lastErr error
	for range 10 {
		port, err := freePort()
		if err != nil {
			lastErr = err
			continue
		}
		if lastErr = a.start(port); lastErr == nil {
			return a
		}
	}
	t.Fatalf("azurite: %v", lastErr)
	return nil
}

// makeCert writes a server certificate for 127.0.0.1 and localhost,
// signed by a CA made here.
func (a *Azurite) makeCert() {
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "azuritetest CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		a.t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), DNSNames: []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		a.t.Fatal(err)
	}
	kDER, _ := x509.MarshalPKCS8PrivateKey(key)
	a.CAPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	a.certFile, a.keyF = filepath.Join(a.dir, "cert.pem"), filepath.Join(a.dir, "key.pem")
	if err := os.WriteFile(a.certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		a.t.Fatal(err)
	}
	if err := os.WriteFile(a.keyF, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kDER}), 0o600); err != nil {
		a.t.Fatal(err)
	}
}

func (a *Azurite) start(port int) error {
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, a.node, a.main,
		"--blobHost", "127.0.0.1", "--blobPort", strconv.Itoa(port),
		"--cert", a.certFile, "--key", a.keyF,
		"--inMemoryPersistence", "--loose", "--skipApiVersionCheck", "--disableTelemetry", "--silent")
	cmd.Dir = a.dir
	out := &testutil.SyncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		cancel()
		return fmt.Errorf("start azurite: %w", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	a.stop = func() { cancel(); <-exited }
	if !a.waitReady(port, exited) {
		a.Stop()
		return fmt.Errorf("azurite on port %d did not start: %s", port, out.String())
	}
	a.Port = port
	return nil
}

// waitReady waits until the blob service answers HTTPS on port.
func (a *Azurite) waitReady(port int, exited <-chan struct{}) bool {
	c := a.httpClient()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return false
		default:
		}
		resp, err := c.Get(fmt.Sprintf("https://127.0.0.1:%d/%s?comp=list", port, AccountName))
		if err == nil {
			resp.Body.Close()
			return true
		}
		time.Sleep(100 * time.Millisecond)
	}
	return false
}

// Stop stops Azurite (its in-memory data is lost). Safe to call twice.
func (a *Azurite) Stop() {
	if a.stop != nil {
		a.stop()
		a.stop = nil
	}
}

// Restart starts a stopped Azurite again on the same port, empty.
func (a *Azurite) Restart() {
	a.t.Helper()
	a.Stop()
	if err := a.start(a.Port); err != nil {
		a.t.Fatalf("azurite restart: %v", err)
	}
}

func (a *Azurite) httpClient() *http.Client {
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(a.CAPEM)
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}}}
}

// Client is an azblob client (Microsoft's Go SDK) of the account with its
// shared key, trusting the test CA.
func (a *Azurite) Client() *azblob.Client {
	a.t.Helper()
	cred, err := azblob.NewSharedKeyCredential(AccountName, AccountKey)
	if err != nil {
		a.t.Fatal(err)
	}
	c, err := azblob.NewClientWithSharedKeyCredential(a.Endpoint()+"/", cred, &azblob.ClientOptions{
		ClientOptions: policy.ClientOptions{Transport: a.httpClient()},
	})
	if err != nil {
		a.t.Fatal(err)
	}
	return c
}

// CreateContainer creates a container with the SDK.
func (a *Azurite) CreateContainer(name string) {
	a.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := a.Client().CreateContainer(ctx, name, nil); err != nil {
		a.t.Fatalf("create container %s: %v", name, err)
	}
}

// Download reads a blob back with the SDK.
func (a *Azurite) Download(container, blob string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	resp, err := a.Client().DownloadStream(ctx, container, blob, nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return io.ReadAll(resp.Body)
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}
