// Package certificates provides the "certificates" section: trust anchors
// installed into the root's system store through Debian's
// update-ca-certificates, and device certificates with their private keys.
//
// The section is a collection of named items:
//
//	"certificates": {
//	  "corpRoot": { "type": "trustAnchor", "pem": "-----BEGIN CERTIFICATE-----…" },
//	  "mqtt":     { "type": "device", "pem": "…", "keyFile": "/etc/mqtt/device.key" }
//	}
//
// A trust anchor is written to
// /usr/local/share/ca-certificates/twinlet/<item>.crt and the store is
// refreshed (/etc/ssl/certs/<item>.pem, its hash link and the bundle
// ca-certificates.crt); on a sandbox root the tool's directory options keep
// it inside the root. A device certificate is written to its path
// (/etc/twinlet/certs/<item>.crt by default); its key comes from local
// policy (key, written 0600 to keyPath) or is a file already on the device
// (keyFile), and must match the certificate. A key never comes from the
// twin.
//
// Reported per item: subject, issuer, serial number, SHA-1 and SHA-256
// thumbprints (uppercase hex without colons, as IoT Hub shows X.509
// thumbprints; `openssl x509 -fingerprint` prints the same digits with
// colons), notBefore, notAfter, daysLeft and state: Valid, Expiring
// (within expiringDays, 30 by default), Expired, or Missing (not on disk or
// not in the store yet). __summary counts certificatesExpiring and
// certificatesExpired.
package certificates

import (
	"bytes"
	"context"
	"crypto"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/twinlet/twinlet/providers"
)

// ID is the section id.
const ID = "certificates"

// Device paths the provider uses.
const (
	// TrustDir holds the trust anchors twinlet installs.
	TrustDir = "/usr/local/share/ca-certificates/twinlet"
	// EtcCertsDir is update-ca-certificates' output directory.
	EtcCertsDir = "/etc/ssl/certs"
	// Bundle is the system bundle it writes.
	Bundle = EtcCertsDir + "/ca-certificates.crt"
	// DeviceDir is where device certificates and keys go by default.
	DeviceDir = "/etc/twinlet/certs"
)

// DefaultExpiringDays is the window before notAfter in which a
// certificate is reported Expiring.
const DefaultExpiringDays = 30

// Tool is the program that refreshes the trust store.
const Tool = "update-ca-certificates"

// storeItem is the Item of the change that refreshes the store; item
// names cannot contain parentheses.
const storeItem = "(trust store)"

func init() {
	providers.Register(providers.Info{ID: ID, Kind: providers.Collection, New: New,
		Timeout: 2 * time.Minute, Methods: map[string]providers.Method{"get": getMethod}})
}

// New returns the certificates provider.
func New() providers.Provider { return Provider{} }

// Provider implements the certificates section.
type Provider struct{}

// Types of items.
const (
	TrustAnchor = "trustAnchor"
	Device      = "device"
)

// Item is one desired certificate.
type Item struct {
	Type string
	// Cert is the parsed certificate and PEM its canonical encoding (one
	// CERTIFICATE block), which is what is written.
	Cert *x509.Certificate
	PEM  []byte
	// Path is the device path of the certificate file.
	Path string
	// KeyPath is where Key is written (0600); KeyFile is a key already on
	// the device. At most one of Key and KeyFile is set.
	KeyPath string
	Key     []byte
	KeyFile string
	// ExpiringDays is the Expiring window.
	ExpiringDays int
	Absent       bool
}

// Spec is the decoded section.
type Spec struct {
	Items map[string]Item
	Prune bool
}

// nameRE and the length check below are `^[A-Za-z0-9_-]{1,64}$`: a
// counted repetition costs every start of the agent more to compile than
// all the checks it makes.
var nameRE = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// Decode implements providers.Provider.
func (Provider) Decode(env *providers.Env, raw json.RawMessage) (providers.Spec, error) {
	errs := &providers.InvalidError{}
	col := providers.SplitCollection(raw, errs)
	spec := Spec{Items: map[string]Item{}, Prune: col.Prune}
	paths := map[string]string{}
	for _, name := range col.Names {
		ptr := func(f string) string { return providers.Pointer(name, f) }
		if len(name) > 64 || !nameRE.MatchString(name) {
			errs.Add(ptr(""), "item names are 1 to 64 letters, digits, '_' or '-' (they name files)")
			continue
		}
		var in struct {
			Type         string `json:"type"`
			PEM          string `json:"pem"`
			Path         string `json:"path"`
			Key          string `json:"key"`
			KeyPath      string `json:"keyPath"`
			KeyFile      string `json:"keyFile"`
			ExpiringDays *int   `json:"expiringDays"`
			Ensure       string `json:"ensure"`
		}
		dec := json.NewDecoder(bytes.NewReader(col.Items[name]))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&in); err != nil {
			errs.Add(ptr(""), "%v", err)
			continue
		}
		it := Item{Type: in.Type, ExpiringDays: DefaultExpiringDays}
		switch in.Ensure {
		case "", "present":
		case "absent":
			it.Absent = true
		default:
			errs.Add(ptr("ensure"), "must be present or absent")
		}
		if in.ExpiringDays != nil {
			if *in.ExpiringDays < 0 || *in.ExpiringDays > 3650 {
				errs.Add(ptr("expiringDays"), "must be 0 to 3650 days")
			}
			it.ExpiringDays = *in.ExpiringDays
		}
		switch in.Type {
		case TrustAnchor:
			it.Path = path.Join(TrustDir, name+".crt")
			for f, v := range map[string]string{"path": in.Path, "key": in.Key, "keyPath": in.KeyPath, "keyFile": in.KeyFile} {
				if v != "" {
					errs.Add(ptr(f), "only a device certificate has %s; a trust anchor is installed as %s", f, it.Path)
				}
			}
		case Device:
			it.Path = devicePath(env, errs, ptr("path"), in.Path, path.Join(DeviceDir, name+".crt"))
			switch {
			case in.Key != "" && in.KeyFile != "":
				errs.Add(ptr("keyFile"), "give key (its PEM, from local policy) or keyFile (a key already on the device), not both")
			case in.KeyFile != "":
				it.KeyFile = devicePath(env, errs, ptr("keyFile"), in.KeyFile, "")
				if in.KeyPath != "" {
					errs.Add(ptr("keyPath"), "keyPath is where key is written; with keyFile nothing is written")
				}
			case in.Key != "":
				it.KeyPath = devicePath(env, errs, ptr("keyPath"), in.KeyPath, path.Join(DeviceDir, name+".key"))
				it.Key = []byte(in.Key)
			case in.KeyPath != "":
				errs.Add(ptr("keyPath"), "keyPath needs key")
			}
			if it.KeyPath != "" && it.KeyPath == it.Path {
				errs.Add(ptr("keyPath"), "the key and the certificate cannot share the file %s", it.Path)
			}
		default:
			errs.Add(ptr("type"), "must be %s or %s", TrustAnchor, Device)
			continue
		}
		for _, p := range []string{it.Path, it.KeyPath} {
			if p == "" {
				continue
			}
			if other, dup := paths[p]; dup {
				errs.Add(ptr(""), "item %q writes %s too", other, p)
			}
			paths[p] = name
		}
		if in.PEM == "" {
			if !it.Absent {
				errs.Add(ptr("pem"), "a certificate (PEM) is required")
			}
		} else {
			cert, der, err := parseOne([]byte(in.PEM))
			if err != nil {
				errs.Add(ptr("pem"), "%v", err)
			} else {
				it.Cert = cert
				it.PEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
				if it.Type == TrustAnchor && !cert.IsCA && !isSelfSigned(cert) {
					errs.Add(ptr("pem"), "%s is not a CA certificate (basicConstraints CA:TRUE) nor self-signed; it cannot anchor trust", cert.Subject)
				}
			}
		}
		if len(it.Key) > 0 {
			key, err := parseKey(it.Key)
			switch {
			case err != nil:
				errs.Add(ptr("key"), "%v", err)
			case it.Cert != nil && !keyMatches(key, it.Cert):
				errs.Add(ptr("key"), "the private key does not match the certificate's public key (%s)", it.Cert.Subject)
			}
		}
		spec.Items[name] = it
	}
	if err := errs.OrNil(); err != nil {
		return nil, err
	}
	return spec, nil
}

// devicePath checks a device path of the item (absolute, clean, inside the
// allowed roots); def is used when p is empty.
func devicePath(env *providers.Env, errs *providers.InvalidError, ptr, p, def string) string {
	if p == "" {
		p = def
	}
	switch {
	case !path.IsAbs(p) || path.Clean(p) != p:
		errs.Add(ptr, "%q must be an absolute, clean path", p)
	case strings.HasPrefix(p+"/", TrustDir+"/"):
		errs.Add(ptr, "%s is where trust anchors go; a device certificate or key does not belong there", TrustDir)
	case !env.Allowed(p):
		errs.Add(ptr, "%s is outside the allowed roots", p)
	}
	return p
}

// parseOne parses a PEM text that holds exactly one certificate.
func parseOne(b []byte) (*x509.Certificate, []byte, error) {
	var der []byte
	rest := b
	for {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type == "CERTIFICATE" {
			if der != nil {
				return nil, nil, errors.New("holds more than one certificate; give each its own item")
			}
			der = blk.Bytes
		} else if strings.Contains(blk.Type, "PRIVATE KEY") {
			return nil, nil, errors.New("holds a private key: a certificate item's pem is the certificate alone")
		}
	}
	if der == nil {
		return nil, nil, errors.New("no PEM CERTIFICATE block")
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("not an X.509 certificate: %w", err)
	}
	return cert, der, nil
}

func isSelfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawSubject, c.RawIssuer) && c.CheckSignatureFrom(c) == nil
}

// parseKey parses a PEM private key (PKCS #8, PKCS #1 or SEC 1). Error
// messages never quote the key.
func parseKey(b []byte) (crypto.Signer, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || !strings.Contains(blk.Type, "PRIVATE KEY") {
		return nil, errors.New("no PEM PRIVATE KEY block")
	}
	var (
		k   any
		err error
	)
	switch blk.Type {
	case "RSA PRIVATE KEY":
		k, err = x509.ParsePKCS1PrivateKey(blk.Bytes)
	case "EC PRIVATE KEY":
		k, err = x509.ParseECPrivateKey(blk.Bytes)
	case "ENCRYPTED PRIVATE KEY":
		return nil, errors.New("an encrypted private key cannot be used unattended")
	default:
		k, err = x509.ParsePKCS8PrivateKey(blk.Bytes)
	}
	if err != nil {
		return nil, errors.New("the private key does not parse (PKCS #8, PKCS #1 or SEC 1 PEM)")
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, errors.New("unsupported private key type")
	}
	return s, nil
}

func keyMatches(k crypto.Signer, c *x509.Certificate) bool {
	pub, ok := k.Public().(interface{ Equal(crypto.PublicKey) bool })
	return ok && pub.Equal(c.PublicKey)
}

// Details are what is reported of one certificate.
type Details struct {
	Subject      string `json:"subject"`
	Issuer       string `json:"issuer"`
	SerialNumber string `json:"serialNumber"`
	// SHA1 and SHA256 are the thumbprints of the DER certificate,
	// uppercase hex without colons.
	SHA1      string `json:"sha1"`
	SHA256    string `json:"sha256"`
	NotBefore string `json:"notBefore"`
	NotAfter  string `json:"notAfter"`
	IsCA      bool   `json:"isCA"`
}

// Thumbprints returns the SHA-1 and SHA-256 thumbprints of a DER
// certificate, uppercase hex without colons.
func Thumbprints(der []byte) (sha1hex, sha256hex string) {
	s1 := sha1.Sum(der)
	s2 := sha256.Sum256(der)
	return strings.ToUpper(hex.EncodeToString(s1[:])), strings.ToUpper(hex.EncodeToString(s2[:]))
}

func details(c *x509.Certificate) Details {
	s1, s2 := Thumbprints(c.Raw)
	return Details{Subject: c.Subject.String(), Issuer: c.Issuer.String(), SerialNumber: strings.ToUpper(c.SerialNumber.Text(16)),
		SHA1: s1, SHA256: s2, NotBefore: c.NotBefore.UTC().Format(time.RFC3339), NotAfter: c.NotAfter.UTC().Format(time.RFC3339), IsCA: c.IsCA}
}

// States of an item.
const (
	StateValid    = "Valid"
	StateExpiring = "Expiring"
	StateExpired  = "Expired"
	StateMissing  = "Missing"
	StateAbsent   = "Absent"
)

// ItemState is what is observed and reported of one item.
type ItemState struct {
	Type string `json:"type"`
	Path string `json:"path"`
	*Details
	// State is Valid, Expiring, Expired, Missing (not installed as
	// desired yet), or Absent (ensure: absent, and gone).
	State string `json:"state"`
	// DaysLeft is the number of whole days until notAfter (negative once
	// expired).
	DaysLeft *int `json:"daysLeft,omitempty"`
	// InStore says whether a trust anchor is in the bundle and linked in
	// /etc/ssl/certs.
	InStore *bool `json:"inStore,omitempty"`
	// KeyPath is the key's file; Key says "matches", "missing" or
	// "mismatch". Key material is never reported.
	KeyPath string `json:"keyPath,omitempty"`
	Key     string `json:"key,omitempty"`

	certOnDisk []byte // the file's content
	certExists bool
	keyOnDisk  bool // the key file holds the desired key with mode 0600
	keyExists  bool
	enterAt    time.Time // when the state changes next (Expiring, Expired)
}

// Observed is the provider's observation; it marshals to a JSON object
// keyed by item name.
type Observed struct {
	Items map[string]*ItemState
	// prunable are managed paths no item wants any more (only with prune).
	prunable []string
	// stale is set when the bundle holds a trust anchor whose file is gone.
	stale bool
}

// MarshalJSON reports the items only.
func (o *Observed) MarshalJSON() ([]byte, error) { return json.Marshal(o.Items) }

// SummaryCounters implements providers.SummaryCounter.
func (Provider) SummaryCounters(observed providers.Observed) map[string]int {
	o, ok := observed.(*Observed)
	if !ok {
		return nil
	}
	out := map[string]int{"certificatesExpiring": 0, "certificatesExpired": 0}
	for _, st := range o.Items {
		switch st.State {
		case StateExpiring:
			out["certificatesExpiring"]++
		case StateExpired:
			out["certificatesExpired"]++
		}
	}
	return out
}

func rel(p string) string { return strings.TrimPrefix(p, "/") }

// Observe implements providers.Provider.
func (Provider) Observe(ctx context.Context, env *providers.Env, spec providers.Spec) (providers.Observed, error) {
	s := spec.(Spec)
	root, err := env.OpenRoot()
	if err != nil {
		return nil, fmt.Errorf("observe certificates: %w", err)
	}
	defer root.Close()
	bundle, err := bundleSet(root)
	if err != nil {
		return nil, fmt.Errorf("observe certificates: %w", err)
	}
	now := env.Now()
	o := &Observed{Items: map[string]*ItemState{}}
	wanted := map[string]bool{}
	var next time.Time
	for name, it := range s.Items {
		st := &ItemState{Type: it.Type, Path: it.Path, KeyPath: it.KeyPath}
		if it.KeyFile != "" {
			st.KeyPath = it.KeyFile
		}
		b, err := root.ReadFile(rel(it.Path))
		switch {
		case err == nil:
			st.certOnDisk, st.certExists = b, true
		case errors.Is(err, fs.ErrNotExist):
		default:
			return nil, fmt.Errorf("observe certificates/%s: %w", name, err)
		}
		if it.Absent {
			st.State = StateAbsent
			if st.certExists {
				st.State = StateMissing // still there: not converged
			}
			if it.KeyPath != "" {
				_, err := root.Lstat(rel(it.KeyPath))
				st.keyExists = err == nil
			}
			o.Items[name] = st
			continue
		}
		wanted[it.Path], wanted[it.KeyPath] = true, true
		installed := bytes.Equal(st.certOnDisk, it.PEM)
		cert := it.Cert
		if !installed && st.certExists {
			if c, _, err := parseOne(st.certOnDisk); err == nil {
				cert = c // report what is there
			}
		}
		d := details(cert)
		st.Details = &d
		if it.Type == TrustAnchor {
			in := bundle[d.SHA256] && linked(env, root, name, it.Path)
			st.InStore = &in
			installed = installed && in
		}
		switch {
		case it.KeyFile != "":
			st.Key = keyState(root, it.KeyFile, it.Cert)
		case it.Key != nil:
			kb, err := root.ReadFile(rel(it.KeyPath))
			st.keyExists = err == nil
			fi, serr := root.Lstat(rel(it.KeyPath))
			st.keyOnDisk = err == nil && serr == nil && fi.Mode().IsRegular() && fi.Mode().Perm() == 0o600 && bytes.Equal(kb, it.Key)
			st.Key = "matches"
			if !st.keyOnDisk {
				st.Key = "missing"
			}
			installed = installed && st.keyOnDisk
		}
		days := int(cert.NotAfter.Sub(now).Hours() / 24)
		if cert.NotAfter.Before(now) {
			days = -int(now.Sub(cert.NotAfter).Hours()/24) - 1
		}
		st.DaysLeft = &days
		window := time.Duration(it.ExpiringDays) * 24 * time.Hour
		switch {
		case !installed:
			st.State = StateMissing
		case !now.Before(cert.NotAfter):
			st.State = StateExpired
		case !now.Before(cert.NotAfter.Add(-window)):
			st.State = StateExpiring
			st.enterAt = cert.NotAfter
		default:
			st.State = StateValid
			st.enterAt = cert.NotAfter.Add(-window)
		}
		if !st.enterAt.IsZero() && (next.IsZero() || st.enterAt.Before(next)) {
			next = st.enterAt
		}
		o.Items[name] = st
	}
	// The state flips at notAfter - window and at notAfter: look again
	// then rather than at the next resync.
	if !next.IsZero() {
		env.Requeue(next.Sub(now) + time.Second)
	}
	if s.Prune {
		for p := range env.Managed {
			if wanted[p] {
				continue
			}
			if _, err := root.Lstat(rel(p)); err == nil {
				o.prunable = append(o.prunable, p)
			}
		}
		sort.Strings(o.prunable)
	}
	// A trust anchor of ours that left (its file is gone) but is still
	// linked: the store needs a fresh run.
	if ents, err := fs.ReadDir(root.FS(), rel(EtcCertsDir)); err == nil {
		for _, e := range ents {
			if e.Type()&fs.ModeSymlink == 0 {
				continue
			}
			t, err := root.Readlink(path.Join(rel(EtcCertsDir), e.Name()))
			if err != nil || !strings.HasPrefix(t, env.HostPath(TrustDir)+"/") {
				continue
			}
			if _, err := root.Stat(rel(path.Join(TrustDir, path.Base(t)))); errors.Is(err, fs.ErrNotExist) {
				o.stale = true
			}
		}
	}
	return o, nil
}

// keyState checks a key file on the device against the certificate.
func keyState(root *providers.Dir, p string, cert *x509.Certificate) string {
	b, err := root.ReadFile(rel(p))
	if err != nil {
		return "missing"
	}
	k, err := parseKey(b)
	if err != nil || !keyMatches(k, cert) {
		return "mismatch"
	}
	return "matches"
}

// linked reports whether /etc/ssl/certs/<item>.pem links to the item's file.
func linked(env *providers.Env, root *providers.Dir, name, p string) bool {
	t, err := root.Readlink(path.Join(rel(EtcCertsDir), name+".pem"))
	return err == nil && t == env.HostPath(p)
}

// bundleSet returns the SHA-256 thumbprints of the certificates in the
// system bundle.
func bundleSet(root *providers.Dir) (map[string]bool, error) {
	b, err := root.ReadFileIfExists(rel(Bundle))
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return out, nil
		}
		if blk.Type == "CERTIFICATE" {
			_, s2 := Thumbprints(blk.Bytes)
			out[s2] = true
		}
	}
}

// op is what Apply does.
type op struct {
	write   []byte
	mode    uint32
	path    string
	del     bool
	refresh bool // run update-ca-certificates
	fresh   bool
}

// Plan implements providers.Provider.
func (Provider) Plan(spec providers.Spec, observed providers.Observed) ([]providers.Change, error) {
	s, o := spec.(Spec), observed.(*Observed)
	names := make([]string, 0, len(s.Items))
	for name := range s.Items {
		names = append(names, name)
	}
	sort.Strings(names)
	var out []providers.Change
	refresh, fresh := o.stale, o.stale
	var why []string
	for _, name := range names {
		it, st := s.Items[name], o.Items[name]
		if st == nil {
			return nil, fmt.Errorf("plan certificates: item %q was not observed", name)
		}
		if it.Absent {
			if st.certExists {
				out = append(out, providers.Change{Action: providers.Delete, Item: name, Key: it.Path, Before: it.Path, Data: op{path: it.Path, del: true}})
				if it.Type == TrustAnchor {
					refresh, fresh = true, true
					why = append(why, "remove "+name)
				}
			}
			if st.keyExists {
				out = append(out, providers.Change{Action: providers.Delete, Item: name, Key: it.KeyPath, Before: it.KeyPath + " (key)", Data: op{path: it.KeyPath, del: true}})
			}
			continue
		}
		if it.KeyFile != "" && st.Key != "matches" {
			msg := "the key file " + it.KeyFile + " does not match the certificate's public key"
			if st.Key == "missing" {
				msg = "the key file " + it.KeyFile + " does not exist or cannot be read"
			}
			return nil, providers.Invalid(providers.Pointer(name, "keyFile"), "%s", msg)
		}
		d := st.Details
		after := fmt.Sprintf("%s sha256:%s… notAfter %s", d.Subject, d.SHA256[:12], d.NotAfter)
		if !bytes.Equal(st.certOnDisk, it.PEM) {
			c := providers.Change{Action: providers.Create, Item: name, Key: it.Path, After: it.Path + ": " + after, Data: op{path: it.Path, write: it.PEM, mode: 0o644}}
			if st.certExists {
				c.Action, c.Key, c.Before = providers.Update, "", it.Path+": "+describe(st.certOnDisk)
				c.After = after
			}
			out = append(out, c)
			if it.Type == TrustAnchor {
				refresh = true
				why = append(why, "add "+name)
			}
		} else if st.InStore != nil && !*st.InStore {
			refresh = true
			why = append(why, name+" not in the store")
		}
		if it.Key != nil && !st.keyOnDisk {
			c := providers.Change{Action: providers.Create, Item: name, Key: it.KeyPath, After: it.KeyPath + ": private key, mode 0600", Data: op{path: it.KeyPath, write: it.Key, mode: 0o600}}
			if st.keyExists {
				c.Action, c.Key, c.Before = providers.Update, "", it.KeyPath+": another key or mode"
			}
			out = append(out, c)
		}
	}
	for _, p := range o.prunable {
		out = append(out, providers.Change{Action: providers.Delete, Item: path.Base(p), Key: p, Before: p + " (pruned)", Data: op{path: p, del: true}})
		if strings.HasPrefix(p, TrustDir+"/") {
			refresh, fresh = true, true
			why = append(why, "prune "+path.Base(p))
		}
	}
	if refresh {
		after := Tool
		if fresh {
			after += " --fresh"
		}
		before := strings.Join(why, ", ")
		if o.stale && before == "" {
			before = "links to removed anchors"
		}
		out = append(out, providers.Change{Action: providers.Update, Item: storeItem, Before: before, After: after, Data: op{refresh: true, fresh: fresh}})
	}
	return out, nil
}

// describe summarises a certificate file for a plan line.
func describe(b []byte) string {
	c, _, err := parseOne(b)
	if err != nil {
		return fmt.Sprintf("%d B, not one certificate", len(b))
	}
	d := details(c)
	return fmt.Sprintf("%s sha256:%s…", d.Subject, d.SHA256[:12])
}

// Apply implements providers.Provider.
func (Provider) Apply(ctx context.Context, env *providers.Env, c providers.Change) error {
	o, ok := c.Data.(op)
	if !ok {
		return fmt.Errorf("apply certificates/%s: not a change of this provider", c.Item)
	}
	root, err := env.OpenRoot()
	if err != nil {
		return err
	}
	defer root.Close()
	switch {
	case o.refresh:
		if err := refreshStore(ctx, env, root, o.fresh); err != nil {
			return fmt.Errorf("apply certificates: %w", err)
		}
	case o.del:
		if err := root.Remove(rel(o.path)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("apply certificates/%s: %w", c.Item, err)
		}
	default:
		if o.mode == 0o600 {
			// The key's directory is not for everyone to list.
			if err := root.MkdirAll(rel(path.Dir(o.path)), 0o700); err != nil {
				return fmt.Errorf("apply certificates/%s: %w", c.Item, err)
			}
		}
		if err := root.WriteFileAtomic(rel(o.path), o.write, providers.FileMeta{Mode: fs.FileMode(o.mode)}); err != nil {
			return fmt.Errorf("apply certificates/%s: %w", c.Item, err)
		}
	}
	return nil
}

// storeArgs are update-ca-certificates' arguments: none on the running
// system; on a sandbox root, its directory options pointing inside it, so
// that nothing outside the root changes (its hooks directory inside the
// root too, usually absent, so no hook runs).
func storeArgs(env *providers.Env, fresh bool) []string {
	var args []string
	if fresh {
		args = append(args, "--fresh")
	}
	if env.IsHostRoot() {
		return args
	}
	return append(args,
		"--certsconf", env.HostPath("/etc/ca-certificates.conf"),
		"--certsdir", env.HostPath("/usr/share/ca-certificates"),
		"--localcertsdir", env.HostPath("/usr/local/share/ca-certificates"),
		"--etccertsdir", env.HostPath(EtcCertsDir),
		"--hooksdir", env.HostPath("/etc/ca-certificates/update.d"))
}

func refreshStore(ctx context.Context, env *providers.Env, root *providers.Dir, fresh bool) error {
	if err := root.MkdirAll(rel(EtcCertsDir), 0o755); err != nil {
		return err
	}
	if _, err := env.Runner.Run(ctx, Tool, storeArgs(env, fresh)...); err != nil {
		return fmt.Errorf("refresh the trust store: %w", err)
	}
	return nil
}

// CloudScope implements providers.CloudScoper: a private key never comes
// from the twin (whatever the rules say), and the rules' Allow and Deny
// globs apply to item names.
func (Provider) CloudScope(rules providers.ScopeRules, twin json.RawMessage) []providers.FieldError {
	var section map[string]json.RawMessage
	if json.Unmarshal(twin, &section) != nil {
		return nil
	}
	names := make([]string, 0, len(section))
	for name := range section {
		if !providers.ReservedKeys[name] {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	var out []providers.FieldError
	for _, name := range names {
		if why, no := rules.Forbids(name, '/'); no {
			out = append(out, providers.FieldError{Pointer: providers.Pointer(name), Message: why})
			continue
		}
		var it map[string]json.RawMessage
		if json.Unmarshal(section[name], &it) != nil {
			continue
		}
		if _, ok := it["key"]; ok {
			out = append(out, providers.FieldError{Pointer: providers.Pointer(name, "key"),
				Message: "a private key never comes from the twin: put it in local policy, or name a key file on the device with keyFile"})
		}
	}
	return out
}

// WatchPaths implements providers.PathWatcher: the files of the items and
// the bundle, so that drift is healed at once.
func (Provider) WatchPaths(env *providers.Env, spec providers.Spec) []string {
	s := spec.(Spec)
	out := []string{env.HostPath(Bundle)}
	for _, it := range s.Items {
		out = append(out, env.HostPath(it.Path))
		if it.KeyPath != "" {
			out = append(out, env.HostPath(it.KeyPath))
		}
	}
	sort.Strings(out)
	return out
}
