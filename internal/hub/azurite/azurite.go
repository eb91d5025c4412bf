// Package azurite runs Azurite, Microsoft's Azure Storage emulator (the
// npm package pinned in this directory's package.json, installed by `make
// azurite`), for twinhub's file upload in tests and the demo: its blob
// service on a loopback port, over HTTPS with a server certificate of a CA
// made for it, data in memory.
package azurite

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
	"errors"
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
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob"
)

// Azurite's well-known development account.
const (
	AccountName = "devstoreaccount1"
	AccountKey  = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)

// ErrNotInstalled is returned by Start when Node.js or the Azurite package
// is missing (`make azurite` installs them).
var ErrNotInstalled = errors.New("azurite is not installed: run `make azurite` (npm ci in internal/hub/azurite)")

// Key is the account key, decoded.
func Key() []byte {
	k, _ := base64.StdEncoding.DecodeString(AccountKey)
	return k
}

// MainJS is the Azurite blob service's entry point in this source tree's
// node_modules.
func MainJS() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "node_modules", "azurite", "dist", "src", "blob", "main.js")
}

// Server is a running blob service.
type Server struct {
	// Port is the blob service's port on 127.0.0.1.
	Port int
	// CAPEM is the CA of the server certificate.
	CAPEM []byte
	// Log holds Azurite's output.
	Log *Buffer

	node, main, dir string
	certFile, keyF  string
	stop            func()
}

// Buffer is an output buffer safe for concurrent use.
type Buffer struct {
	mu sync.Mutex
	b  []byte
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.b = append(b.b, p...)
	return len(p), nil
}

func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.b)
}

// Start starts Azurite on a free loopback port, with its certificate and
// key in dir. Stop it with Stop.
func Start(dir string) (*Server, error) {
	node, err := exec.LookPath("node")
	if err != nil {
		return nil, ErrNotInstalled
	}
	main := MainJS()
	if _, err := os.Stat(main); err != nil {
		return nil, ErrNotInstalled
	}
	s := &Server{node: node, main: main, dir: dir, Log: &Buffer{}}
	if err := s.makeCert(); err != nil {
		return nil, err
	}
	var lastErr error
	for range 10 {
		port, err := freePort()
		if err != nil {
			lastErr = err
			continue
		}
		if lastErr = s.start(port); lastErr == nil {
			return s, nil
		}
	}
	return nil, fmt.Errorf("azurite: %w", lastErr)
}

// Endpoint is the blob service URL, path style: https://127.0.0.1:N/devstoreaccount1.
func (s *Server) Endpoint() string {
	return fmt.Sprintf("https://127.0.0.1:%d/%s", s.Port, AccountName)
}

// ConnectionString is the account's storage connection string.
func (s *Server) ConnectionString() string {
	return "DefaultEndpointsProtocol=https;AccountName=" + AccountName + ";AccountKey=" + AccountKey + ";BlobEndpoint=" + s.Endpoint() + ";"
}

// makeCert writes a server certificate for 127.0.0.1 and localhost,
// signed by a CA made here.
func (s *Server) makeCert() error {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "twinlet azurite CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(7 * 24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(7 * 24 * time.Hour), DNSNames: []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return err
	}
	kDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	s.CAPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	s.certFile, s.keyF = filepath.Join(s.dir, "azurite-cert.pem"), filepath.Join(s.dir, "azurite-key.pem")
	if err := os.WriteFile(s.certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		return err
	}
	return os.WriteFile(s.keyF, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kDER}), 0o600)
}

func (s *Server) start(port int) error {
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, s.node, s.main,
		"--blobHost", "127.0.0.1", "--blobPort", strconv.Itoa(port),
		"--cert", s.certFile, "--key", s.keyF,
		"--inMemoryPersistence", "--loose", "--skipApiVersionCheck", "--disableTelemetry", "--silent")
	cmd.Dir = s.dir
	cmd.Stdout, cmd.Stderr = s.Log, s.Log
	if err := cmd.Start(); err != nil {
		cancel()
		return fmt.Errorf("start azurite: %w", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	s.stop = func() { cancel(); <-exited }
	if !s.waitReady(port, exited) {
		s.Stop()
		return fmt.Errorf("azurite on port %d did not start: %s", port, s.Log)
	}
	s.Port = port
	return nil
}

// waitReady waits until the blob service answers HTTPS on port.
func (s *Server) waitReady(port int, exited <-chan struct{}) bool {
	c := s.HTTPClient()
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
func (s *Server) Stop() {
	if s.stop != nil {
		s.stop()
		s.stop = nil
	}
}

// Restart starts a stopped Azurite again on the same port, empty.
func (s *Server) Restart() error {
	s.Stop()
	return s.start(s.Port)
}

// HTTPClient trusts the server's CA.
func (s *Server) HTTPClient() *http.Client {
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(s.CAPEM)
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}}}
}

// Client is an azblob client (Microsoft's Go SDK) of the account with its
// shared key, trusting the server's CA.
func (s *Server) Client() (*azblob.Client, error) {
	cred, err := azblob.NewSharedKeyCredential(AccountName, AccountKey)
	if err != nil {
		return nil, err
	}
	return azblob.NewClientWithSharedKeyCredential(s.Endpoint()+"/", cred, &azblob.ClientOptions{
		ClientOptions: policy.ClientOptions{Transport: s.HTTPClient()},
	})
}

// CreateContainer creates a container with the SDK.
func (s *Server) CreateContainer(ctx context.Context, name string) error {
	c, err := s.Client()
	if err != nil {
		return err
	}
	_, err = c.CreateContainer(ctx, name, nil)
	return err
}

// Download reads a blob back with the SDK.
func (s *Server) Download(ctx context.Context, container, blob string) ([]byte, error) {
	c, err := s.Client()
	if err != nil {
		return nil, err
	}
	resp, err := c.DownloadStream(ctx, container, blob, nil)
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
