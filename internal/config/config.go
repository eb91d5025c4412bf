// Package config reads the agent configuration file (twinlet.yaml). It is
// strict: an unknown key is an error with its line, and a file that group
// or others can write is refused.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/twinlet/twinlet/internal/policy"
)

// DefaultPath is where the agent looks for its configuration.
const DefaultPath = "/etc/twinlet/twinlet.yaml"

// Config is the agent configuration. Flags override it.
type Config struct {
	// Root is the directory providers act on; "/" on a device.
	Root string `yaml:"root"`
	// StateDir holds the agent's state.
	StateDir string `yaml:"stateDir"`
	// PolicyDir holds local policy files.
	PolicyDir string `yaml:"policyDir"`
	// AllowedRoots bound what the files provider may touch.
	AllowedRoots []string `yaml:"allowedRoots"`
	// Resync is the drift-healing interval.
	Resync time.Duration `yaml:"resync"`
	// Log sets the log format and level.
	Log struct {
		Format string `yaml:"format"` // text | json
		Level  string `yaml:"level"`  // debug | info | warn | error
	} `yaml:"log"`
	// Connection is the IoT Hub connection; empty for offline operation.
	Connection Connection `yaml:"connection"`
	// Identity is "device" (default) or "module" (the module "twinlet").
	Identity string `yaml:"identity"`
	// MetricsAddr serves Prometheus metrics when set.
	MetricsAddr string `yaml:"metricsAddr"`
	// Identities are IoT Hub identities the agent holds for other
	// applications, by name; they get them from IdentitySocket.
	Identities map[string]AppIdentity `yaml:"identities"`
	// IdentitySocket is the Unix socket serving Identities
	// (default /run/twinlet/identity.sock when there are identities).
	IdentitySocket string `yaml:"identitySocket"`
}

// AppIdentity is one application's identity: a TPM slot or a key file,
// and the local users (uids or names) it is served to.
type AppIdentity struct {
	// Module, when set, must be the module id stored in the slot or file.
	Module string `yaml:"module"`
	// Slot is a TPM slot (0-9) holding the key and the URI.
	Slot *int `yaml:"slot"`
	// TCTI is the slot's TPM; default connection.tpm.tcti, else the device.
	TCTI string `yaml:"tcti"`
	// KeyFile holds a connection string instead (mode 0600).
	KeyFile string `yaml:"keyFile"`
	// Users are the uids or user names the identity is served to.
	Users []string `yaml:"users"`
}

// Connection says how to reach IoT Hub. At most one credential is set.
type Connection struct {
	// ConnectionString is a device or module connection string.
	ConnectionString string `yaml:"connectionString"`
	// KeyFile holds a connection string; it must be mode 0600.
	KeyFile string `yaml:"keyFile"`
	// X509 names a client certificate and key.
	X509 *X509 `yaml:"x509"`
	// TPM takes the identity from a TPM slot: its key signs in the TPM,
	// its NV index holds host/devices/id[/modules/m].
	TPM *TPMSlot `yaml:"tpm"`
	// HostName and DeviceID complete an X.509 identity.
	HostName string `yaml:"hostName"`
	DeviceID string `yaml:"deviceId"`
	ModuleID string `yaml:"moduleId"`
	// CAFile adds a CA to the system roots (an emulator's, a proxy's).
	CAFile string `yaml:"caFile"`
	// Port overrides 8883 (tests, emulators).
	Port int `yaml:"port"`
	// DPS provisions the identity through the Device Provisioning
	// Service (see dps.go); the identity is kept in the state directory.
	DPS *DPS `yaml:"dps"`
}

// X509 is a client certificate and its key (PEM files).
type X509 struct {
	CertFile string `yaml:"certFile"`
	KeyFile  string `yaml:"keyFile"`
}

// TPMSlot names a TPM and one of its slots (0-9), see internal/tpm.
type TPMSlot struct {
	// TCTI is the TPM, as tpm2-tools names it; default device:/dev/tpmrm0.
	TCTI string `yaml:"tcti"`
	Slot int    `yaml:"slot"`
}

// Defaults returns the built-in configuration.
func Defaults() Config {
	c := Config{Root: "/", StateDir: "/var/lib/twinlet", PolicyDir: "/etc/twinlet/policy.d", Resync: 5 * time.Minute}
	c.Log.Format, c.Log.Level = "text", "info"
	return c
}

// Load reads path over the defaults. A missing file at the default path is
// fine; a missing file that was asked for is an error.
func Load(path string, explicit bool) (Config, error) {
	c := Defaults()
	if path == "" {
		return c, nil
	}
	data, err := policy.ReadSecure(path)
	if errors.Is(err, os.ErrNotExist) && !explicit {
		return c, nil
	}
	if err != nil {
		return c, fmt.Errorf("config: %w", err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, errEOF(err)) {
		return c, fmt.Errorf("config %s: %s", path, trimYAML(err))
	}
	if err := c.Check(); err != nil {
		return c, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

func errEOF(err error) error {
	if err != nil && err.Error() == "EOF" {
		return err
	}
	return errors.New("not eof")
}

func trimYAML(err error) string {
	s := err.Error()
	s = string(bytes.TrimPrefix([]byte(s), []byte("yaml: ")))
	return s
}

// Check validates values a type cannot.
func (c *Config) Check() error {
	switch c.Log.Format {
	case "", "text", "json":
	default:
		return fmt.Errorf("log.format: %q is not text or json", c.Log.Format)
	}
	switch c.Log.Level {
	case "", "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("log.level: %q is not debug, info, warn or error", c.Log.Level)
	}
	switch c.Identity {
	case "", "device", "module":
	default:
		return fmt.Errorf("identity: %q is not device or module", c.Identity)
	}
	if c.Resync < 0 {
		return fmt.Errorf("resync: must not be negative")
	}
	n := 0
	if c.Connection.ConnectionString != "" {
		n++
	}
	if c.Connection.KeyFile != "" {
		n++
	}
	if c.Connection.X509 != nil {
		n++
	}
	if c.Connection.TPM != nil {
		n++
		if s := c.Connection.TPM.Slot; s < 0 || s > 9 {
			return fmt.Errorf("connection.tpm.slot: %d is not a slot 0-9", s)
		}
	}
	if n > 1 {
		return fmt.Errorf("connection: set only one of connectionString, keyFile, x509, tpm")
	}
	if c.Connection.DPS != nil {
		if n > 0 {
			return fmt.Errorf("connection: dps provisions the identity; do not set connectionString, keyFile or x509 with it")
		}
		if err := c.Connection.DPS.check(); err != nil {
			return fmt.Errorf("connection.dps.%w", err)
		}
	}
	users := map[string]string{}
	for _, name := range slices.Sorted(maps.Keys(c.Identities)) {
		id := c.Identities[name]
		switch {
		case (id.Slot == nil) == (id.KeyFile == ""):
			return fmt.Errorf("identities.%s: set one of slot, keyFile", name)
		case id.Slot != nil && (*id.Slot < 0 || *id.Slot > 9):
			return fmt.Errorf("identities.%s.slot: %d is not a slot 0-9", name, *id.Slot)
		case id.KeyFile != "" && id.TCTI != "":
			return fmt.Errorf("identities.%s.tcti: only with slot", name)
		}
		for _, u := range id.Users {
			if u == "" {
				return fmt.Errorf("identities.%s.users: empty user", name)
			}
			if prev, ok := users[u]; ok {
				return fmt.Errorf("identities.%s.users: %q is already served identity %s (a user gets one identity)", name, u, prev)
			}
			users[u] = name
		}
	}
	return nil
}
