// Package config reads the agent configuration file (twinlet.yaml). It is
// strict: an unknown key or a bad value is an error with its file:line,
// and a file (or a key file it names) that someone other than root or the
// agent's user could change is refused (policy.Trusted, sshd's
// StrictModes).
package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/twinlet/twinlet/internal/extprov"
	"github.com/twinlet/twinlet/internal/policy"
	"github.com/twinlet/twinlet/providers"
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
	// ProviderDirs hold the manifests of external providers, read in
	// order (a later directory's file replaces an earlier one's of the
	// same name); nil means /usr/lib/twinlet/providers.d then
	// /etc/twinlet/providers.d, an empty list none.
	ProviderDirs []string `yaml:"providerDirs"`
	// AllowedRoots bound what the files provider may touch.
	AllowedRoots []string `yaml:"allowedRoots"`
	// Resync is the drift-healing interval.
	Resync time.Duration `yaml:"resync"`
	// IdleTrim is how long `twinlet run` waits after its last reconcile
	// before it hands back the memory it is not using (the free heap and
	// the pages of its executable; see internal/memtrim); 0 never trims.
	IdleTrim time.Duration `yaml:"idleTrim"`
	// Workers is how many sections are reconciled side by side; 0 means
	// the reconciler's default (4).
	Workers int `yaml:"workers"`
	// Timeouts replace, per section, how long one provider call may take
	// (an observe, an apply of one change): its provider's own, 2 minutes
	// unless it declares more (packages: 30 minutes for an install).
	Timeouts map[string]time.Duration `yaml:"timeouts"`
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
	// Cloud is the cloud scope: what the twin may change. Only this
	// local file sets it; local policy is never limited by it.
	Cloud Cloud `yaml:"cloud"`

	src *source // where the values were read, for located errors
}

// source is the file a Config was read from.
type source struct {
	file string
	doc  *yaml.Node // the document's top-level mapping
	mode fs.FileMode
}

// at returns "file:line: " for the node at keys (mapping keys, or
// sequence indexes as decimal strings), as far down as it exists; "" when
// the config was not read from a file.
func (c *Config) at(keys ...string) string {
	if c.src == nil {
		return ""
	}
	line, n := 0, c.src.doc
	if n != nil {
		line = n.Line
	}
	for _, k := range keys {
		if n == nil {
			break
		}
		var next *yaml.Node
		switch n.Kind {
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				if n.Content[i].Value == k {
					line, next = n.Content[i].Line, n.Content[i+1]
					break
				}
			}
		case yaml.SequenceNode:
			if i, err := strconv.Atoi(k); err == nil && i >= 0 && i < len(n.Content) {
				next = n.Content[i]
				line = next.Line
			}
		}
		n = next
	}
	if line == 0 {
		return c.src.file + ": "
	}
	return fmt.Sprintf("%s:%d: ", c.src.file, line)
}

// Cloud is the cloud scope of the agent config:
//
//	cloud:
//	  sections: [hostname, timezone, files]   # absent: every section
//	  files:
//	    deny: ["/etc/ssh/**"]     # replaces the provider's default denials
//	    allow: ["/etc/kiosk/**"]  # when set, the only paths the twin may set
//	    privileged: false         # setuid/setgid files from the twin
//	  sysctl:
//	    allow: ["net.**"]
//
// A section's deny list, when given, replaces the provider's defaults
// (Info.CloudDeny), so an operator can open a path deliberately; when
// absent, the defaults stay. Rules may name only sections whose provider
// implements providers.CloudScoper. Globs as in providers.MatchGlob.
type Cloud struct {
	// Sections lists the sections the twin may set; nil means every
	// section, an empty list none.
	Sections []string
	// Rules are the per-section rules, with Deny filled from the
	// provider's defaults when the file gives none.
	Rules map[string]providers.ScopeRules

	denySet map[string]bool // sections whose deny the file gave
}

// UnmarshalYAML decodes the cloud block strictly: unknown keys and values
// of the wrong kind are errors with their line.
func (c *Cloud) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return nil
	}
	if n.Kind != yaml.MappingNode {
		return fmt.Errorf("line %d: cloud: want a mapping of sections and per-section rules", n.Line)
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Value == "sections" {
			list, err := stringList(v, "cloud.sections")
			if err != nil {
				return err
			}
			c.Sections = list
			continue
		}
		if c.Rules == nil {
			c.Rules, c.denySet = map[string]providers.ScopeRules{}, map[string]bool{}
		}
		if _, dup := c.Rules[k.Value]; dup {
			return fmt.Errorf("line %d: cloud.%s: given twice", k.Line, k.Value)
		}
		if v.Kind != yaml.MappingNode {
			return fmt.Errorf("line %d: cloud.%s: want a mapping with deny, allow and privileged", v.Line, k.Value)
		}
		var r providers.ScopeRules
		for j := 0; j+1 < len(v.Content); j += 2 {
			rk, rv := v.Content[j], v.Content[j+1]
			where := "cloud." + k.Value + "." + rk.Value
			var err error
			switch rk.Value {
			case "deny":
				r.Deny, err = stringList(rv, where)
				c.denySet[k.Value] = true
			case "allow":
				r.Allow, err = stringList(rv, where)
			case "privileged":
				if rv.Kind != yaml.ScalarNode || rv.Tag != "!!bool" {
					return fmt.Errorf("line %d: %s: want true or false", rv.Line, where)
				}
				err = rv.Decode(&r.Privileged)
			default:
				return fmt.Errorf("line %d: cloud.%s: unknown key %q (deny, allow, privileged)", rk.Line, k.Value, rk.Value)
			}
			if err != nil {
				return err
			}
		}
		c.Rules[k.Value] = r
	}
	return nil
}

// stringList decodes a sequence of strings; an empty sequence is an empty,
// non-nil list.
func stringList(n *yaml.Node, where string) ([]string, error) {
	if n.Kind != yaml.SequenceNode {
		return nil, fmt.Errorf("line %d: %s: want a list", n.Line, where)
	}
	out := make([]string, 0, len(n.Content))
	for _, e := range n.Content {
		if e.Kind != yaml.ScalarNode || e.Tag != "!!str" {
			return nil, fmt.Errorf("line %d: %s: want a string, got %s", e.Line, where, strings.TrimPrefix(e.Tag, "!!"))
		}
		out = append(out, e.Value)
	}
	return out, nil
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
	// HTTPSPort overrides 443 for the HTTPS requests of file upload
	// (tests, emulators such as twinhub).
	HTTPSPort int `yaml:"httpsPort"`
	// KeepAlive is the MQTT keep-alive, whole seconds from 1s to
	// MaxKeepAlive; 0 means iothub.DefaultKeepAlive. The agent pings
	// after three quarters of it without traffic, the hub drops the
	// connection after 1.5 times it: a longer one wakes an idle device
	// less often, a shorter one keeps a NAT that forgets quiet
	// connections sooner from dropping it.
	KeepAlive time.Duration `yaml:"keepAlive"`
	// DPS provisions the identity through the Device Provisioning
	// Service (see dps.go); the identity is kept in the state directory.
	DPS *DPS `yaml:"dps"`
}

// MaxKeepAlive is the longest keep-alive IoT Hub honours: it gives up on
// a device after 1.5 times its keep-alive, but never later than 1767 s
// (29.45 min), so that beyond 1177 s the hub would not wait as long as
// the keep-alive it was told.
const MaxKeepAlive = 1177 * time.Second

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
	c := Config{Root: "/", StateDir: "/var/lib/twinlet", PolicyDir: "/etc/twinlet/policy.d", Resync: 5 * time.Minute,
		IdleTrim: 30 * time.Second}
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
	data, fi, err := policy.ReadTrusted(path)
	if errors.Is(err, os.ErrNotExist) && !explicit {
		return c, nil
	}
	if err != nil {
		return c, fmt.Errorf("config: %w", err)
	}
	return parse(path, data, fi.Mode())
}

// parse decodes and checks a config file's content over the defaults;
// mode is the file's, for the checks that depend on it.
func parse(path string, data []byte, mode fs.FileMode) (Config, error) {
	c := Defaults()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, errEOF(err)) {
		return c, fmt.Errorf("config %s: %s", path, trimYAML(err))
	}
	c.src = &source{file: path, mode: mode}
	var doc yaml.Node
	if yaml.Unmarshal(data, &doc) == nil && doc.Kind == yaml.DocumentNode && len(doc.Content) == 1 {
		c.src.doc = doc.Content[0]
	}
	if err := c.Check(); err != nil {
		return c, fmt.Errorf("config %w", err)
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

// Check validates values a type cannot: the settings, the allowed roots
// (as paths; CheckAllowedRoots also looks at the root), the cloud block
// and the files the config names. When the config was read from a file,
// errors start with its file:line.
func (c *Config) Check() error {
	switch c.Log.Format {
	case "", "text", "json":
	default:
		return fmt.Errorf("%slog.format: %q is not text or json", c.at("log", "format"), c.Log.Format)
	}
	switch c.Log.Level {
	case "", "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("%slog.level: %q is not debug, info, warn or error", c.at("log", "level"), c.Log.Level)
	}
	switch c.Identity {
	case "", "device", "module":
	default:
		return fmt.Errorf("%sidentity: %q is not device or module", c.at("identity"), c.Identity)
	}
	if c.Resync < 0 {
		return fmt.Errorf("%sresync: must not be negative", c.at("resync"))
	}
	if c.IdleTrim < 0 {
		return fmt.Errorf("%sidleTrim: must not be negative", c.at("idleTrim"))
	}
	for i, d := range c.ProviderDirs {
		if !path.IsAbs(d) {
			return fmt.Errorf("%sproviderDirs[%d]: %q is not an absolute path", c.at("providerDirs", strconv.Itoa(i)), i, d)
		}
	}
	for i, r := range c.AllowedRoots {
		if err := CheckAllowedRoot("", r); err != nil {
			return fmt.Errorf("%sallowedRoots[%d]: %w", c.at("allowedRoots", strconv.Itoa(i)), i, err)
		}
	}

	if c.Workers < 0 || c.Workers > 64 {
		return fmt.Errorf("workers: %d is not between 1 and 64 (0 for the default, 4)", c.Workers)
	}
	for _, id := range slices.Sorted(maps.Keys(c.Timeouts)) {
		if _, ok := providers.Lookup(id); !ok && !c.declared(id) {
			return fmt.Errorf("%stimeouts.%s: unknown section %q (known: %s)", c.at("timeouts", id), id, id, knownSections())
		}
		if d := c.Timeouts[id]; d < time.Second || d > 24*time.Hour {
			return fmt.Errorf("%stimeouts.%s: %v is not between 1s and 24h", c.at("timeouts", id), id, d)
		}
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
		return fmt.Errorf("%sconnection: set only one of connectionString, keyFile, x509, tpm", c.at("connection"))
	}
	if err := c.checkKeepAlive(); err != nil {
		return err
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
	if err := c.checkCloud(); err != nil {
		return err
	}
	return c.checkFiles()
}

// checkKeepAlive checks connection.keepAlive: absent (or 0, which the
// file may not give) means the default; otherwise whole seconds from 1s
// to MaxKeepAlive, the unit the CONNECT packet carries.
func (c *Config) checkKeepAlive() error {
	d := c.Connection.KeepAlive
	if d == 0 && !c.given("connection", "keepAlive") {
		return nil
	}
	at := c.at("connection", "keepAlive")
	switch {
	case d < time.Second || d > MaxKeepAlive:
		return fmt.Errorf("%sconnection.keepAlive: %v is not between 1s and %ds (IoT Hub drops a device after 1.5 × its keep-alive, at most after 1767s)", at, d, MaxKeepAlive/time.Second)
	case d%time.Second != 0:
		return fmt.Errorf("%sconnection.keepAlive: %v is not whole seconds (MQTT sends the keep-alive in seconds)", at, d)
	}
	return nil
}

// given reports whether the file the config was read from sets the
// value at keys (mapping keys only).
func (c *Config) given(keys ...string) bool {
	if c.src == nil || c.src.doc == nil {
		return false
	}
	n := c.src.doc
	for _, k := range keys {
		if n.Kind != yaml.MappingNode {
			return false
		}
		var next *yaml.Node
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == k {
				next = n.Content[i+1]
			}
		}
		if next == nil {
			return false
		}
		n = next
	}
	return true
}

// CheckAllowedRoots checks the allowed roots against the root they will
// be used under (after flags have set both): see CheckAllowedRoot.
func (c *Config) CheckAllowedRoots() error {
	for i, r := range c.AllowedRoots {
		if err := CheckAllowedRoot(c.Root, r); err != nil {
			return fmt.Errorf("%sallowedRoots[%d]: %w", c.at("allowedRoots", strconv.Itoa(i)), i, err)
		}
	}
	return nil
}

// refusedRoots are device paths that can never be allowed roots of the
// files provider: the kernel's file systems.
var refusedRoots = []string{"/proc", "/sys", "/dev"}

// CheckAllowedRoot says why the device path p cannot be an allowed root
// of the files provider: it must be absolute and clean, not "/" (the whole
// device), not /proc, /sys, /dev or below them, and, when root is given
// and p exists under it, a directory reached without any symbolic link
// (files follows none, so a root through a link could never be used, and
// one leading outside the root must not look allowed).
func CheckAllowedRoot(root, p string) error {
	switch {
	case !path.IsAbs(p):
		return fmt.Errorf("%q is not an absolute device path", p)
	case path.Clean(p) != p:
		return fmt.Errorf("%q is not clean (want %q)", p, path.Clean(p))
	case p == "/":
		return errors.New(`"/" would let the files provider change every file of the device; name the directories it may manage`)
	}
	for _, r := range refusedRoots {
		if p == r || strings.HasPrefix(p, r+"/") {
			return fmt.Errorf("%s is refused: %s is a kernel file system, not files to manage", p, r)
		}
	}
	if root == "" {
		return nil
	}
	d, err := (&providers.Env{Root: root}).OpenRoot()
	if err != nil {
		return nil // the root itself is reported where it is used
	}
	defer d.Close()
	rel, _ := providers.Rel(p)
	sub, err := d.Walk(rel, false, 0)
	switch {
	case err == nil:
		sub.Close()
		return nil
	case errors.Is(err, fs.ErrNotExist):
		return nil // created when first needed
	case errors.Is(err, providers.ErrSymlink), providers.IsOutsideRoot(err):
		return fmt.Errorf("%s is refused: it goes through a symbolic link under the root %s (%v), which could lead outside it; name the real directory", p, root, err)
	case errors.Is(err, syscall.ENOTDIR):
		return fmt.Errorf("%s is refused: it is not a directory under the root %s", p, root)
	}
	return fmt.Errorf("%s: %w", p, err)
}

// checkCloud checks the cloud block: known sections, rules only for
// providers that honour them, good globs; and fills in default denials.
func (c *Config) checkCloud() error {
	seen := map[string]bool{}
	for i, id := range c.Cloud.Sections {
		if _, ok := providers.Lookup(id); !ok && !c.declared(id) {
			return fmt.Errorf("%scloud.sections[%d]: unknown section %q (known: %s)", c.at("cloud", "sections", strconv.Itoa(i)), i, id, knownSections())
		}
		if seen[id] {
			return fmt.Errorf("%scloud.sections[%d]: %q is listed twice", c.at("cloud", "sections", strconv.Itoa(i)), i, id)
		}
		seen[id] = true
	}
	for id, r := range c.Cloud.Rules {
		info, ok := providers.Lookup(id)
		if !ok && c.declared(id) {
			// An external provider's: checked by CheckExternalCloud
			// once it has described itself.
			ok, info = true, providers.Info{ID: id, New: func() providers.Provider { return externalScoper{} }}
		}
		if !ok {
			return fmt.Errorf("%scloud.%s: unknown section %q (known: %s)", c.at("cloud", id), id, id, knownSections())
		}
		if _, ok := info.New().(providers.CloudScoper); !ok {
			return fmt.Errorf("%scloud.%s: section %s has no cloud rules (only %s have); use cloud.sections to keep the twin from setting it", c.at("cloud", id), id, id, strings.Join(scopedSections(), ", "))
		}
		for field, globs := range map[string][]string{"deny": r.Deny, "allow": r.Allow} {
			for i, g := range globs {
				if err := providers.CheckGlob(g); err != nil {
					return fmt.Errorf("%scloud.%s.%s[%d]: %v", c.at("cloud", id, field, strconv.Itoa(i)), id, field, i, err)
				}
			}
		}
		if !c.Cloud.denySet[id] {
			r.Deny = info.CloudDeny
			c.Cloud.Rules[id] = r
		}
	}
	return nil
}

// declared reports whether a manifest in the provider directories
// declares an external provider of the section id.
func (c *Config) declared(id string) bool {
	dirs := c.ProviderDirs
	if dirs == nil {
		dirs = extprov.DefaultDirs
	}
	return extprov.Declares(dirs, id)
}

// externalScoper stands for an external provider in checkCloud until it
// has described itself.
type externalScoper struct{ providers.Provider }

func (externalScoper) CloudScope(providers.ScopeRules, json.RawMessage) []providers.FieldError {
	return nil
}

// CheckExternalCloud finishes the cloud block's check for the sections of
// external providers, once they have described themselves (infos): a
// rule for a section whose provider was refused, or that has no cloud
// rules, is an error; a section without deny gets the provider's default
// denials.
func (c *Config) CheckExternalCloud(infos []providers.Info) error {
	byID := map[string]providers.Info{}
	for _, info := range infos {
		byID[info.ID] = info
	}
	for _, id := range slices.Sorted(maps.Keys(c.Cloud.Rules)) {
		if _, builtin := providers.Lookup(id); builtin {
			continue
		}
		info, ok := byID[id]
		if !ok {
			return fmt.Errorf("%scloud.%s: the external provider of section %s was refused (see the log or twinlet providers list)", c.at("cloud", id), id, id)
		}
		if _, ok := info.New().(providers.CloudScoper); !ok {
			return fmt.Errorf("%scloud.%s: the external provider of section %s has no cloud rules (it does not describe cloudScope); use cloud.sections to keep the twin from setting it", c.at("cloud", id), id, id)
		}
		if r := c.Cloud.Rules[id]; !c.Cloud.denySet[id] {
			r.Deny = info.CloudDeny
			c.Cloud.Rules[id] = r
		}
	}
	return nil
}

func knownSections() string {
	var ids []string
	for _, info := range providers.All() {
		ids = append(ids, info.ID)
	}
	return strings.Join(ids, ", ")
}

func scopedSections() []string {
	var ids []string
	for _, info := range providers.All() {
		if _, ok := info.New().(providers.CloudScoper); ok {
			ids = append(ids, info.ID)
		}
	}
	return ids
}

// checkFiles refuses an inline connection string in a config file that
// others can read, and key, certificate and CA files that others could
// change (or read, for keys). Files that do not exist are left to the
// code that opens them.
func (c *Config) checkFiles() error {
	conn := c.Connection
	if conn.ConnectionString != "" && c.src != nil && c.src.mode.Perm()&0o077 != 0 {
		return fmt.Errorf("%sconnection.connectionString: refused: an inline connection string needs the config file to be mode 0600, and %s is %04o (chmod 600 %s, or move it to a keyFile)",
			c.at("connection", "connectionString"), c.src.file, c.src.mode.Perm(), c.src.file)
	}
	type named struct {
		keys   []string
		file   string
		secret bool
	}
	files := []named{{[]string{"connection", "keyFile"}, conn.KeyFile, true}, {[]string{"connection", "caFile"}, conn.CAFile, false}}
	if conn.X509 != nil {
		files = append(files, named{[]string{"connection", "x509", "keyFile"}, conn.X509.KeyFile, true}, named{[]string{"connection", "x509", "certFile"}, conn.X509.CertFile, false})
	}
	for _, f := range files {
		if f.file == "" {
			continue
		}
		if err := CheckFile(f.file, f.secret); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%s%s: %w", c.at(f.keys...), strings.Join(f.keys, "."), err)
		}
	}
	return nil
}

// CheckFile refuses a file the agent trusts (a key, a certificate, a CA)
// unless policy.Trusted accepts it and, for a secret, nobody but its
// owner can read it (mode 0600 or stricter).
func CheckFile(p string, secret bool) error {
	if err := policy.Trusted(p); err != nil {
		return err
	}
	if !secret {
		return nil
	}
	fi, err := os.Stat(p)
	if err != nil {
		return err
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("%s: refused: mode %04o lets group or others read it (chmod 600 %s)", p, perm, p)
	}
	return nil
}
