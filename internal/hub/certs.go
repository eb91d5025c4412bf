package hub

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/twinlet/twinlet/internal/atomicfile"
)

// pki is the hub's certificate authority and its TLS server certificate.
type pki struct {
	caPEM  []byte
	caCert *x509.Certificate
	caKey  *ecdsa.PrivateKey
	server tls.Certificate
	caFile string // empty in memory mode
}

func serialNumber() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err))
	}
	return n
}

func newCA(now time.Time) (*x509.Certificate, *ecdsa.PrivateKey, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("generate CA key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serialNumber(),
		Subject:               pkix.Name{CommonName: "twinhub local CA", Organization: []string{"twinlet"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("create CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, nil, err
	}
	return cert, key, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

func newServerCert(ca *x509.Certificate, caKey *ecdsa.PrivateKey, hostnames []string, now time.Time) (certPEM, keyPEM []byte, err error) {
	hostname := hostnames[0]
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate server key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serialNumber(),
		Subject:      pkix.Name{CommonName: hostname},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.AddDate(5, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1"), net.IPv6loopback},
	}
	if ip := net.ParseIP(hostname); ip != nil {
		tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
	} else {
		tmpl.DNSNames = []string{hostname}
	}
	for _, n := range hostnames[1:] {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	if hostname != "localhost" {
		tmpl.DNSNames = append(tmpl.DNSNames, "localhost")
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, nil, fmt.Errorf("create server certificate: %w", err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), nil
}

// loadPKI reads the CA and server certificate from dir, creating what is
// missing; a server certificate that does not cover every host name is
// reissued. An empty dir keeps everything in memory.
func loadPKI(dir string, hostnames []string, now time.Time) (*pki, error) {
	p := &pki{}
	var caKeyPEM []byte
	if dir != "" {
		p.caFile = filepath.Join(dir, "ca.pem")
		var err error
		p.caPEM, err = os.ReadFile(p.caFile)
		if err == nil {
			caKeyPEM, err = os.ReadFile(filepath.Join(dir, "ca-key.pem"))
		}
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("load CA: %w", err)
		}
	}
	if p.caPEM != nil && caKeyPEM != nil {
		cb, _ := pem.Decode(p.caPEM)
		kb, _ := pem.Decode(caKeyPEM)
		if cb == nil || kb == nil {
			return nil, fmt.Errorf("load CA from %s: not PEM", dir)
		}
		var err error
		if p.caCert, err = x509.ParseCertificate(cb.Bytes); err != nil {
			return nil, fmt.Errorf("load CA: %w", err)
		}
		if p.caKey, err = x509.ParseECPrivateKey(kb.Bytes); err != nil {
			return nil, fmt.Errorf("load CA key: %w", err)
		}
	} else {
		var err error
		p.caCert, p.caKey, p.caPEM, err = newCA(now)
		if err != nil {
			return nil, err
		}
		if dir != "" {
			kder, err := x509.MarshalECPrivateKey(p.caKey)
			if err != nil {
				return nil, err
			}
			if err := atomicfile.Write(filepath.Join(dir, "ca-key.pem"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
				return nil, err
			}
			if err := atomicfile.Write(p.caFile, p.caPEM, 0o644); err != nil {
				return nil, err
			}
		}
	}

	certFile, keyFile := filepath.Join(dir, "server.pem"), filepath.Join(dir, "server-key.pem")
	if dir != "" {
		if c, err := tls.LoadX509KeyPair(certFile, keyFile); err == nil {
			if leaf, err := x509.ParseCertificate(c.Certificate[0]); err == nil &&
				coversAll(leaf, hostnames) && now.Before(leaf.NotAfter) &&
				leaf.CheckSignatureFrom(p.caCert) == nil {
				p.server = c
				return p, nil
			}
		}
	}
	certPEM, keyPEM, err := newServerCert(p.caCert, p.caKey, hostnames, now)
	if err != nil {
		return nil, err
	}
	if dir != "" {
		if err := atomicfile.Write(keyFile, keyPEM, 0o600); err != nil {
			return nil, err
		}
		if err := atomicfile.Write(certFile, certPEM, 0o644); err != nil {
			return nil, err
		}
	}
	p.server, err = tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("server key pair: %w", err)
	}
	return p, nil
}

func coversAll(leaf *x509.Certificate, hostnames []string) bool {
	for _, n := range hostnames {
		if leaf.VerifyHostname(n) != nil {
			return false
		}
	}
	return true
}
