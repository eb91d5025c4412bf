package iothub

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// Signer produces SAS tokens for a device or module identity. The shared
// key signer keeps the key in memory; a TPM signer keeps it in the chip.
type Signer interface {
	// Sign returns a complete SAS token ("SharedAccessSignature sr=…")
	// for resourceURI valid until expiry.
	Sign(ctx context.Context, resourceURI string, expiry time.Time) (string, error)
}

// KeySigner signs with a symmetric key held in memory.
type KeySigner struct {
	Key []byte
	// KeyName is the policy name (skn) for policy keys; empty for
	// identity keys.
	KeyName string
}

// Sign implements Signer.
func (s KeySigner) Sign(_ context.Context, resourceURI string, expiry time.Time) (string, error) {
	if len(s.Key) == 0 {
		return "", fmt.Errorf("sign %s: no key", resourceURI)
	}
	return NewSASToken(resourceURI, s.Key, s.KeyName, expiry), nil
}

// maxKeyFile bounds a key file: a connection string is a few hundred bytes.
const maxKeyFile = 64 << 10

func describeMode(m os.FileMode) string {
	if m.IsDir() {
		return "a directory"
	}
	return m.Type().String()
}

// ReadKeyFile reads a device connection string from a file that must not
// be readable or writable by group or others (mode 0600 or stricter),
// since it holds a key.
func ReadKeyFile(path string) (ConnectionString, error) {
	f, err := os.Open(path)
	if err != nil {
		return ConnectionString{}, fmt.Errorf("key file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return ConnectionString{}, fmt.Errorf("key file: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return ConnectionString{}, fmt.Errorf("key file %s: refused: mode %04o lets group or others read it (chmod 600 %s)", path, fi.Mode().Perm(), path)
	}
	if !fi.Mode().IsRegular() {
		return ConnectionString{}, fmt.Errorf("key file %s: not a regular file (%s)", path, describeMode(fi.Mode()))
	}
	buf, err := io.ReadAll(io.LimitReader(f, maxKeyFile+1))
	if err != nil {
		return ConnectionString{}, fmt.Errorf("key file: %w", err)
	}
	if len(buf) > maxKeyFile {
		return ConnectionString{}, fmt.Errorf("key file %s: too large (more than %d bytes) for a connection string", path, maxKeyFile)
	}
	cs, err := ParseConnectionString(strings.TrimSpace(string(buf)))
	if err != nil {
		return ConnectionString{}, fmt.Errorf("key file %s: %w", path, err)
	}
	return cs, nil
}
