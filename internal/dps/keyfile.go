package dps

import (
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"os"
	"strings"
)

// ReadKeyFile reads a base64 symmetric key from a file that group and
// others cannot read or write (mode 0600 or stricter).
func ReadKeyFile(path string) ([]byte, error) {
	data, err := readSecret(path)
	if err != nil {
		return nil, err
	}
	key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(data)))
	if err != nil {
		return nil, fmt.Errorf("key file %s: not a base64 key: %w", path, err)
	}
	if len(key) == 0 {
		return nil, fmt.Errorf("key file %s: empty", path)
	}
	return key, nil
}

// LoadCertificate reads a PEM certificate (chain) and its private key; the
// key file must be mode 0600 or stricter.
func LoadCertificate(certFile, keyFile string) (*tls.Certificate, error) {
	keyPEM, err := readSecret(keyFile)
	if err != nil {
		return nil, err
	}
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("certificate: %w", err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("certificate %s with key %s: %w", certFile, keyFile, err)
	}
	return &cert, nil
}

func readSecret(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("key file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("key file: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("key file %s: refused: mode %04o lets group or others read it (chmod 600 %s)", path, fi.Mode().Perm(), path)
	}
	data, err := io.ReadAll(io.LimitReader(f, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("key file %s: %w", path, err)
	}
	return data, nil
}
