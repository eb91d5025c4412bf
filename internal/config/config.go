// Package config reads the agent configuration file (twinlet.yaml). It is
// strict: an unknown key is an error with its line, and a file that group
// or others can write is refused.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"os"
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
	// Workers is how many sections are reconciled side by side; 0 means
	// the reconciler's default (4).
	Workers int `yaml:"workers"`
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
}

// Connection says how to reach IoT Hub. At most one credential is set.
type Connection struct {
	// ConnectionString is a device or module connection string.
	ConnectionString string `yaml:"connectionString"`
	// KeyFile holds a connection string; it must be mode 0600.
	KeyFile string `yaml:"keyFile"`
	// X509 names a client certificate and key.
	X509 *X509 `yaml:"x509"`
	// HostName and DeviceID complete an X.509 identity.
	HostName string `yaml:"hostName"`
	DeviceID string `yaml:"deviceId"`
	ModuleID string `yaml:"moduleId"`
	// CAFile adds a CA to the system roots (an emulator's, a proxy's).
	CAFile string `yaml:"caFile"`
	// Port overrides 8883 (tests, emulators).
	Port int `yaml:"port"`
}

// X509 is a client certificate and its key (PEM files).
type X509 struct {
	CertFile string `yaml:"certFile"`
	KeyFile  string `yaml:"keyFile"`
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
	if c.Workers < 0 || c.Workers > 64 {
		return fmt.Errorf("workers: %d is not between 1 and 64 (0 for the default, 4)", c.Workers)
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
	if n > 1 {
		return fmt.Errorf("connection: set only one of connectionString, keyFile, x509")
	}
	return nil
}
