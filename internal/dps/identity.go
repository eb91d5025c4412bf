package dps

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/twinlet/twinlet/internal/atomicfile"
	"github.com/twinlet/twinlet/internal/iothub"
)

// Identity files in a state directory: the identity in use, and the one
// just provisioned that has not connected yet. The old identity is kept
// until the new one has connected (Promote).
const (
	IdentityFile        = "identity.json"
	PendingIdentityFile = "identity.next.json"
)

// Auth kinds of an Identity.
const (
	AuthKey  = "sas"
	AuthX509 = "x509"
	AuthTPM  = "tpm"
)

// Identity is a provisioned IoT Hub identity as stored on the device
// (mode 0600: it may hold a key).
type Identity struct {
	// HostName and DeviceID name the identity in its hub.
	HostName string `json:"hostName"`
	DeviceID string `json:"deviceId"`
	// Auth is "sas" (Key), "x509" (CertFile, KeyFile) or "tpm" (Slot).
	Auth string `json:"auth"`
	// ConnectionString holds the device key for "sas".
	ConnectionString string `json:"connectionString,omitempty"`
	// CertFile and KeyFile are the client certificate for "x509".
	CertFile string `json:"certFile,omitempty"`
	KeyFile  string `json:"keyFile,omitempty"`
	// Slot is the TPM slot holding the key for "tpm".
	Slot int `json:"slot"`
	// RegistrationID, Substatus and Payload are what DPS said.
	RegistrationID string          `json:"registrationId"`
	Substatus      string          `json:"substatus,omitempty"`
	Payload        json.RawMessage `json:"payload,omitempty"`
	// ProvisionedAt is when DPS assigned it.
	ProvisionedAt time.Time `json:"provisionedAt"`
}

// NewIdentity turns a registration result into the identity to store;
// certFile and keyFile name the X.509 credential's files.
func NewIdentity(res *Result, certFile, keyFile string, now time.Time) Identity {
	id := Identity{
		HostName: res.AssignedHub, DeviceID: res.DeviceID, RegistrationID: res.RegistrationID,
		Substatus: res.Substatus, Payload: res.Payload, ProvisionedAt: now.UTC(),
	}
	switch {
	case res.Key != nil:
		id.Auth = AuthKey
		id.ConnectionString = iothub.ConnectionString{HostName: res.AssignedHub, DeviceID: res.DeviceID, SharedAccessKey: res.Key}.String()
	case res.Certificate != nil:
		id.Auth, id.CertFile, id.KeyFile = AuthX509, certFile, keyFile
	default:
		id.Auth, id.Slot = AuthTPM, res.Slot
	}
	return id
}

// Save writes the identity to path atomically with mode 0600.
func (id Identity) Save(path string) error {
	data, err := json.MarshalIndent(id, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("identity: %w", err)
	}
	return atomicfile.Write(path, append(data, '\n'), 0o600)
}

// LoadIdentity reads an identity file, refusing one that group or others
// can read or write.
func LoadIdentity(path string) (Identity, error) {
	var id Identity
	f, err := os.Open(path)
	if err != nil {
		return id, fmt.Errorf("identity: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return id, fmt.Errorf("identity: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return id, fmt.Errorf("identity %s: refused: mode %04o lets group or others read it (chmod 600 %s)", path, fi.Mode().Perm(), path)
	}
	data, err := io.ReadAll(io.LimitReader(f, 1<<20))
	if err != nil {
		return id, fmt.Errorf("identity %s: %w", path, err)
	}
	if err := json.Unmarshal(data, &id); err != nil {
		return id, fmt.Errorf("identity %s: %w", path, err)
	}
	if id.HostName == "" || id.DeviceID == "" {
		return id, fmt.Errorf("identity %s: hostName and deviceId are required", path)
	}
	switch id.Auth {
	case AuthKey:
		if _, err := iothub.ParseConnectionString(id.ConnectionString); err != nil {
			return id, fmt.Errorf("identity %s: connectionString: %w", path, err)
		}
	case AuthX509:
		if id.CertFile == "" || id.KeyFile == "" {
			return id, fmt.Errorf("identity %s: certFile and keyFile are required for x509", path)
		}
	case AuthTPM:
		if id.Slot < 0 || id.Slot > 9 {
			return id, fmt.Errorf("identity %s: slot %d is not 0-9", path, id.Slot)
		}
	default:
		return id, fmt.Errorf("identity %s: auth %q is not sas, x509 or tpm", path, id.Auth)
	}
	return id, nil
}

// Store is the identity files of a state directory.
type Store struct{ Dir string }

// Current returns the identity to connect with: the pending one if there
// is one (it is tried first; the old one stays until it connected), else
// the one in use. ok is false when the device was never provisioned.
func (s Store) Current() (id Identity, pending, ok bool, err error) {
	if id, err := LoadIdentity(filepath.Join(s.Dir, PendingIdentityFile)); err == nil {
		return id, true, true, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return id, false, false, err
	}
	id, err = LoadIdentity(filepath.Join(s.Dir, IdentityFile))
	if errors.Is(err, os.ErrNotExist) {
		return id, false, false, nil
	}
	return id, false, err == nil, err
}

// InUse returns the identity that last connected, if any.
func (s Store) InUse() (Identity, bool, error) {
	id, err := LoadIdentity(filepath.Join(s.Dir, IdentityFile))
	if errors.Is(err, os.ErrNotExist) {
		return id, false, nil
	}
	return id, err == nil, err
}

// SavePending stores a freshly provisioned identity beside the one in use.
func (s Store) SavePending(id Identity) error {
	return id.Save(filepath.Join(s.Dir, PendingIdentityFile))
}

// Save stores the identity as the one in use and drops a pending one.
func (s Store) Save(id Identity) error {
	if err := id.Save(filepath.Join(s.Dir, IdentityFile)); err != nil {
		return err
	}
	return s.DropPending()
}

// Promote makes the pending identity the one in use, atomically: once it
// has connected, the old one is no longer needed.
func (s Store) Promote() error {
	from, to := filepath.Join(s.Dir, PendingIdentityFile), filepath.Join(s.Dir, IdentityFile)
	if err := os.Rename(from, to); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("identity: promote: %w", err)
	}
	return atomicfile.SyncDir(s.Dir)
}

// DropPending removes a pending identity (one that never connected).
func (s Store) DropPending() error {
	err := os.Remove(filepath.Join(s.Dir, PendingIdentityFile))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("identity: %w", err)
	}
	return nil
}
