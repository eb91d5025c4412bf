// Package packages provides the "packages" section: Debian packages
// installed, removed and held through apt-get and dpkg, and the apt
// sources and signing keys they come from.
//
//	"packages": {
//	  "keys":    { "corp": { "armored": "-----BEGIN PGP PUBLIC KEY BLOCK-----…" } },
//	  "sources": { "corp": { "uri": "https://apt.example.com/debian", "suite": "bookworm",
//	                         "components": ["main"], "signedBy": "corp" } },
//	  "hello":   { "version": "2.10-3", "hold": true },
//	  "telnet":  { "ensure": "absent" }
//	}
//
// Every key of the section other than keys, sources and the reserved
// settings is a package item; its name is the item key unless the item
// sets name (package names may contain '.', twin keys may not).
//
// On the running system (root "/") the provider runs apt-get and dpkg as
// they are configured there. On any other root it runs the same tools on
// that root only: dpkg with --root (and --log under it), apt with an
// APT_CONFIG of its own that points every Dir at the root, so that the
// machine's own dpkg database and apt configuration are never read or
// changed. Maintainer scripts run chrooted into the root when it has a
// shell, and otherwise without chroot (dpkg --force-script-chrootless,
// with DPKG_ROOT set).
//
// Keys are written to <root>/etc/apt/keyrings/twinlet-<name>.asc and
// sources as deb822 files <root>/etc/apt/sources.list.d/twinlet-<name>.sources;
// after one of them changes, the package lists are updated (apt-get update)
// before any package is installed. A source's Signed-By names the key's
// file on "/"; on another root it holds the key in place, since apt reads
// a Signed-By path from the machine it runs on.
package packages

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"path"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/twinlet/twinlet/providers"
)

// ID is the section id.
const ID = "packages"

// Timeout bounds one call (an install of one package with its
// dependencies, an update of the lists).
const Timeout = 30 * time.Minute

// Device paths of what the provider writes.
const (
	KeyringDir = "/etc/apt/keyrings"
	SourcesDir = "/etc/apt/sources.list.d"
)

func init() {
	providers.Register(providers.Info{ID: ID, Kind: providers.Collection, New: New, Timeout: Timeout})
}

// New returns the packages provider.
func New() providers.Provider { return Provider{} }

// Provider implements the packages section.
type Provider struct{}

// Package is one desired package.
type Package struct {
	// Name is the package name, with an optional ":arch".
	Name string
	// Absent is true for ensure: absent.
	Absent bool
	// Version, when set, is the exact version to install.
	Version string
	// Hold, when set, holds (true) or releases (false) the package.
	Hold *bool
	// AllowEssential lets ensure: absent remove an Essential or
	// Priority: required package.
	AllowEssential bool
}

// Key is one desired signing key.
type Key struct {
	Armored string
	Absent  bool
}

// Source is one desired apt source.
type Source struct {
	Types         []string
	URIs          []string
	Suites        []string
	Components    []string
	Architectures []string
	SignedBy      string // a key item name
	Trusted       bool
	Absent        bool
	// embedKey, on a root other than "/", is the armored key of SignedBy,
	// written into the sources file itself: apt reads a Signed-By path
	// from the machine it runs on, not under its Dir, so a path would
	// name the host's file (or none) there.
	embedKey string
}

// Spec is the decoded section.
type Spec struct {
	Packages map[string]Package
	Keys     map[string]Key
	Sources  map[string]Source
	Prune    bool
}

var (
	itemNameRE = regexp.MustCompile(`^[^.$ \x00-\x1f\x7f]+$`)
	// with a length check, `^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$` (a counted
	// repetition costs more to compile at every start than it checks)
	fileNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]*$`)
	// pkgNameRE is Debian policy 5.6.1 (lowercase letters, digits, '+',
	// '-', '.', at least two characters, starting alphanumeric) with an
	// optional architecture qualifier.
	pkgNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9+.-]+(:[a-z0-9][a-z0-9-]*)?$`)
	// versionRE is Debian policy 5.6.12: [epoch:]upstream[-revision].
	versionRE = regexp.MustCompile(`^([0-9]+:)?[0-9][A-Za-z0-9.+~:-]*$`)
	tokenRE   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+~/-]*$`)
	epochRE   = regexp.MustCompile(`^[0-9]+$`)
	archRE    = regexp.MustCompile(`^[a-z0-9][a-z0-9-]*$`)
)

// validVersion checks a Debian version: an epoch only as a leading number
// followed by ':', a hyphen only when a revision follows, and colons only
// after an epoch.
func validVersion(v string) bool {
	if len(v) > 128 || !versionRE.MatchString(v) {
		return false
	}
	upstream := v
	if i := strings.IndexByte(v, ':'); i >= 0 && epochRE.MatchString(v[:i]) {
		upstream = v[i+1:]
		if upstream == "" || upstream[0] < '0' || upstream[0] > '9' {
			return false
		}
	} else if strings.Contains(v, ":") {
		return false
	}
	if strings.HasSuffix(upstream, "-") || strings.HasPrefix(upstream, "-") {
		return false
	}
	if i := strings.LastIndexByte(upstream, '-'); i >= 0 && strings.ContainsAny(upstream[i+1:], ":") {
		return false
	}
	return true
}

func ptr(tokens ...string) string { return providers.Pointer(tokens...) }

func strictDecode(raw json.RawMessage, v any) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

type pkgIn struct {
	Name           string `json:"name"`
	Ensure         string `json:"ensure"`
	Version        string `json:"version"`
	Hold           *bool  `json:"hold"`
	AllowEssential bool   `json:"allowEssential"`
}

type keyIn struct {
	Armored string `json:"armored"`
	Ensure  string `json:"ensure"`
}

type sourceIn struct {
	Types         []string        `json:"types"`
	URI           json.RawMessage `json:"uri"`
	Suite         json.RawMessage `json:"suite"`
	Components    []string        `json:"components"`
	Architectures []string        `json:"architectures"`
	SignedBy      string          `json:"signedBy"`
	Trusted       bool            `json:"trusted"`
	Ensure        string          `json:"ensure"`
}

// stringOrList accepts "a" or ["a", "b"].
func stringOrList(raw json.RawMessage) ([]string, bool) {
	if len(raw) == 0 {
		return nil, true
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return []string{s}, true
	}
	var l []string
	if json.Unmarshal(raw, &l) == nil {
		return l, true
	}
	return nil, false
}

func ensure(s string, errs *providers.InvalidError, p string) bool {
	switch s {
	case "", "present":
		return false
	case "absent":
		return true
	}
	errs.Add(p, "must be present or absent")
	return false
}

// Decode implements providers.Provider.
func (Provider) Decode(env *providers.Env, raw json.RawMessage) (providers.Spec, error) {
	errs := &providers.InvalidError{}
	col := providers.SplitCollection(raw, errs)
	spec := Spec{Packages: map[string]Package{}, Keys: map[string]Key{}, Sources: map[string]Source{}, Prune: col.Prune}
	if r, ok := col.Items["keys"]; ok {
		var m map[string]json.RawMessage
		if err := json.Unmarshal(r, &m); err != nil {
			errs.Add("/keys", "must be an object of named keys")
		}
		for name, v := range m {
			p := ptr("keys", name)
			if len(name) > 64 || !fileNameRE.MatchString(name) {
				errs.Add(p, "key names are 1 to 64 letters, digits, '_' and '-' (they name the file twinlet-<name>.asc)")
				continue
			}
			var in keyIn
			if err := strictDecode(v, &in); err != nil {
				errs.Add(p, "%v", err)
				continue
			}
			// Line ends as gpg writes them: a key pasted with CRLF is the same key.
			k := Key{Armored: strings.ReplaceAll(in.Armored, "\r\n", "\n"), Absent: ensure(in.Ensure, errs, p+"/ensure")}
			if !k.Absent {
				if msg := checkArmored(k.Armored); msg != "" {
					errs.Add(p+"/armored", "%s", msg)
				}
				if !strings.HasSuffix(k.Armored, "\n") {
					k.Armored += "\n"
				}
			}
			spec.Keys[name] = k
		}
	}
	if r, ok := col.Items["sources"]; ok {
		var m map[string]json.RawMessage
		if err := json.Unmarshal(r, &m); err != nil {
			errs.Add("/sources", "must be an object of named sources")
		}
		for name, v := range m {
			p := ptr("sources", name)
			if len(name) > 64 || !fileNameRE.MatchString(name) {
				errs.Add(p, "source names are 1 to 64 letters, digits, '_' and '-' (they name the file twinlet-<name>.sources)")
				continue
			}
			var in sourceIn
			if err := strictDecode(v, &in); err != nil {
				errs.Add(p, "%v", err)
				continue
			}
			if s, ok := decodeSource(in, p, spec.Keys, col.Items["keys"] != nil, errs); ok {
				if s.SignedBy != "" && !env.IsHostRoot() {
					s.embedKey = spec.Keys[s.SignedBy].Armored
				}
				spec.Sources[name] = s
			}
		}
	}
	names := map[string]string{} // package name → item
	for _, item := range col.Names {
		if item == "keys" || item == "sources" {
			continue
		}
		p := ptr(item)
		if !itemNameRE.MatchString(item) {
			errs.Add(p, "item names must not contain '.', '$', spaces or control characters")
			continue
		}
		var in pkgIn
		if err := strictDecode(col.Items[item], &in); err != nil {
			errs.Add(p, "%v", err)
			continue
		}
		pk := Package{Name: in.Name, Version: in.Version, Hold: in.Hold, AllowEssential: in.AllowEssential}
		if pk.Name == "" {
			pk.Name = item
		}
		if !pkgNameRE.MatchString(pk.Name) {
			at := p + "/name"
			if in.Name == "" {
				at = p
			}
			errs.Add(at, "%q is not a Debian package name (lowercase letters, digits, '+', '-' and '.', at least two characters, optionally :arch)", pk.Name)
		} else if other, dup := names[pk.Name]; dup {
			errs.Add(p+"/name", "package %s is also named by item %q", pk.Name, other)
		} else {
			names[pk.Name] = item
		}
		pk.Absent = ensure(in.Ensure, errs, p+"/ensure")
		if pk.Version != "" && !validVersion(pk.Version) {
			errs.Add(p+"/version", "%q is not a Debian version ([epoch:]upstream[-revision], upstream starting with a digit)", pk.Version)
		}
		if pk.Absent && pk.Version != "" {
			errs.Add(p+"/version", "a version makes no sense with ensure: absent")
		}
		if pk.Absent && pk.Hold != nil && *pk.Hold {
			errs.Add(p+"/hold", "hold needs ensure: present")
		}
		spec.Packages[item] = pk
	}
	if err := errs.OrNil(); err != nil {
		return nil, err
	}
	return spec, nil
}

func checkArmored(s string) string {
	t := strings.TrimSpace(s)
	switch {
	case t == "":
		return "an ASCII-armored public key is required (gpg --armor --export)"
	case strings.Contains(t, "PRIVATE KEY BLOCK"):
		return "this is a private key; apt needs only the public key, and a private key never belongs in desired state"
	case !strings.HasPrefix(t, "-----BEGIN PGP PUBLIC KEY BLOCK-----") || !strings.HasSuffix(t, "-----END PGP PUBLIC KEY BLOCK-----"):
		return "must be one ASCII-armored OpenPGP public key block (-----BEGIN PGP PUBLIC KEY BLOCK----- … -----END PGP PUBLIC KEY BLOCK-----)"
	case len(t) > 64<<10:
		return "longer than 64 KiB"
	}
	// ASCII armor is printable ASCII in lines; anything else has no place
	// in a keyring or, on a root other than /, in the sources file that
	// holds the key.
	for i := 0; i < len(t); i++ {
		if c := t[i]; (c < ' ' || c > '~') && c != '\n' {
			return fmt.Sprintf("byte %d (%q) is not ASCII armor (printable ASCII in lines)", i, c)
		}
	}
	return ""
}

var uriSchemes = map[string]bool{"http": true, "https": true, "file": true, "mirror+http": true, "mirror+https": true, "mirror+file": true, "tor+http": true, "tor+https": true}

func decodeSource(in sourceIn, p string, keys map[string]Key, haveKeys bool, errs *providers.InvalidError) (Source, bool) {
	s := Source{Types: in.Types, Components: in.Components, Architectures: in.Architectures, SignedBy: in.SignedBy, Trusted: in.Trusted}
	s.Absent = ensure(in.Ensure, errs, p+"/ensure")
	n := len(errs.Errors)
	if s.Absent {
		return s, true
	}
	if len(s.Types) == 0 {
		s.Types = []string{"deb"}
	}
	for i, t := range s.Types {
		if t != "deb" && t != "deb-src" {
			errs.Add(fmt.Sprintf("%s/types/%d", p, i), "must be deb or deb-src")
		}
	}
	uris, ok := stringOrList(in.URI)
	if !ok || len(uris) == 0 {
		errs.Add(p+"/uri", "a URI (or a list of URIs) of the repository is required")
	}
	for _, u := range uris {
		pu, err := url.Parse(u)
		switch {
		case err != nil || strings.ContainsAny(u, " \t\n"):
			errs.Add(p+"/uri", "%q is not a URI", u)
		case !uriSchemes[pu.Scheme]:
			errs.Add(p+"/uri", "%q: the scheme must be one of http, https, file (or mirror+/tor+ of them)", u)
		case pu.Scheme != "file" && !strings.HasPrefix(pu.Scheme, "mirror+file") && pu.Host == "":
			errs.Add(p+"/uri", "%q has no host", u)
		case pu.User != nil:
			errs.Add(p+"/uri", "%q carries credentials; apt reads them from /etc/apt/auth.conf.d, never from a sources file", u)
		}
	}
	s.URIs = uris
	suites, ok := stringOrList(in.Suite)
	if !ok || len(suites) == 0 {
		errs.Add(p+"/suite", "a suite (bookworm, stable) or a flat repository path ending in '/' is required")
	}
	flat := false
	for _, su := range suites {
		if !tokenRE.MatchString(su) && su != "./" && su != "/" {
			errs.Add(p+"/suite", "%q is not a suite", su)
		}
		flat = flat || strings.HasSuffix(su, "/")
	}
	s.Suites = suites
	switch {
	case flat && len(s.Components) > 0:
		errs.Add(p+"/components", "a flat repository (a suite ending in '/') has no components")
	case !flat && len(s.Components) == 0:
		errs.Add(p+"/components", "at least one component (main) is required")
	}
	for i, c := range s.Components {
		if !tokenRE.MatchString(c) {
			errs.Add(fmt.Sprintf("%s/components/%d", p, i), "%q is not a component", c)
		}
	}
	for i, a := range s.Architectures {
		if !archRE.MatchString(a) {
			errs.Add(fmt.Sprintf("%s/architectures/%d", p, i), "%q is not an architecture", a)
		}
	}
	if s.SignedBy != "" {
		k, ok := keys[s.SignedBy]
		switch {
		case !ok && haveKeys:
			errs.Add(p+"/signedBy", "no key %q in /keys", s.SignedBy)
		case !ok:
			errs.Add(p+"/signedBy", "no key %q: add it under /keys", s.SignedBy)
		case k.Absent:
			errs.Add(p+"/signedBy", "key %q is ensure: absent", s.SignedBy)
		}
	}
	if s.Trusted && s.SignedBy != "" {
		errs.Add(p+"/trusted", "trusted disables signature checks; it cannot go with signedBy")
	}
	return s, len(errs.Errors) == n
}

// KeyPath is the device path of a key item's keyring.
func KeyPath(name string) string { return path.Join(KeyringDir, "twinlet-"+name+".asc") }

// SourcePath is the device path of a source item's deb822 file.
func SourcePath(name string) string { return path.Join(SourcesDir, "twinlet-"+name+".sources") }

// renderSource writes a source as a deb822 stanza.
func renderSource(name string, s Source) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "# Managed by twinlet (section %q, source %q): edits are overwritten.\n", ID, name)
	if s.embedKey != "" {
		fmt.Fprintf(&b, "# Signed-By holds the key item %q (%s) in place: this root is not the running system.\n", s.SignedBy, KeyPath(s.SignedBy))
	}
	fmt.Fprintf(&b, "Types: %s\n", strings.Join(s.Types, " "))
	fmt.Fprintf(&b, "URIs: %s\n", strings.Join(s.URIs, " "))
	fmt.Fprintf(&b, "Suites: %s\n", strings.Join(s.Suites, " "))
	if len(s.Components) > 0 {
		fmt.Fprintf(&b, "Components: %s\n", strings.Join(s.Components, " "))
	}
	if len(s.Architectures) > 0 {
		fmt.Fprintf(&b, "Architectures: %s\n", strings.Join(s.Architectures, " "))
	}
	switch {
	case s.embedKey != "":
		// deb822 continuation lines: each line indented, an empty one
		// written as " ." (apt 2.3.10 and later read a key in place).
		b.WriteString("Signed-By:\n")
		for _, l := range strings.Split(strings.TrimRight(s.embedKey, "\n"), "\n") {
			if l = strings.TrimRight(l, " \t\r"); l == "" {
				l = "."
			}
			b.WriteString(" " + l + "\n")
		}
	case s.SignedBy != "":
		fmt.Fprintf(&b, "Signed-By: %s\n", KeyPath(s.SignedBy))
	}
	if s.Trusted {
		b.WriteString("Trusted: yes\n")
	}
	return []byte(b.String())
}

func short(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])[:12] + "…"
}

// ItemState is what the provider observed for one package item.
type ItemState struct {
	// Name is the package name.
	Name string `json:"name"`
	// Version is the installed version; empty when not installed.
	Version string `json:"version,omitempty"`
	// Status is dpkg's status (installed, not-installed, half-configured…).
	Status string `json:"status"`
	// Held is true when dpkg's selection is hold.
	Held bool `json:"held,omitempty"`
	// Candidate is the version apt would install, when it was looked up
	// (the package is to be installed or changed).
	Candidate string `json:"candidate,omitempty"`
	// Essential is true for an Essential: yes or Priority: required package.
	Essential bool `json:"essential,omitempty"`

	known    bool // apt knows the package (looked up only when needed)
	looked   bool
	versions []string
}

// FileState is what the provider observed for a key or a source.
type FileState struct {
	Path    string `json:"path"`
	Present bool   `json:"present"`
	SHA256  string `json:"sha256,omitempty"`

	content []byte
}

// Installed summarises the whole installed set.
type Installed struct {
	// Packages is the number of packages dpkg knows as installed (in any
	// state other than not-installed and config-files).
	Packages int `json:"packages"`
	// Fingerprint is the sha256 of the sorted "package version status"
	// lines of those packages: equal fingerprints mean equal sets.
	Fingerprint string `json:"fingerprint"`
}

// Observed is the provider's observation.
type Observed struct {
	Items     map[string]*ItemState
	Keys      map[string]*FileState
	Sources   map[string]*FileState
	Installed Installed
	// ListsFresh is true when the package lists were updated by twinlet
	// after the last change of the apt sources.
	ListsFresh bool

	prunePkgs  []string // package names twinlet installed, no longer desired, installed
	pruneFiles []string // device paths of twinlet's keys/sources no longer desired
}

// MarshalJSON reports items, keys, sources and the installed set.
func (o *Observed) MarshalJSON() ([]byte, error) {
	m := make(map[string]any, len(o.Items)+3)
	for k, v := range o.Items {
		m[k] = v
	}
	if len(o.Keys) > 0 {
		m["keys"] = o.Keys
	}
	if len(o.Sources) > 0 {
		m["sources"] = o.Sources
	}
	m["__installed"] = o.Installed
	return json.Marshal(m)
}

// Managed keys: "package:<name>" for a package twinlet installed, and the
// device path for a key or source file.
func pkgKey(name string) string { return "package:" + name }

// Observe implements providers.Provider.
func (Provider) Observe(ctx context.Context, env *providers.Env, spec providers.Spec) (providers.Observed, error) {
	s := spec.(Spec)
	t := newTools(env)
	db, err := t.query(ctx)
	if err != nil {
		return nil, fmt.Errorf("observe packages: %w", err)
	}
	o := &Observed{Items: map[string]*ItemState{}, Keys: map[string]*FileState{}, Sources: map[string]*FileState{}, Installed: db.summary()}
	var lookup []string
	for item, pk := range s.Packages {
		st := &ItemState{Name: pk.Name, Status: "not-installed"}
		if e := db.find(pk.Name); e != nil {
			st.Version, st.Held, st.Essential = e.version, e.want == "hold", e.essential
			st.Status = e.status
			if !e.present() {
				st.Version = ""
			}
		}
		o.Items[item] = st
		if !pk.Absent && (st.Version == "" || pk.Version != "" && pk.Version != st.Version) {
			lookup = append(lookup, pk.Name)
		}
	}
	if len(lookup) > 0 {
		sort.Strings(lookup)
		pol, err := t.policy(ctx, lookup)
		if err != nil {
			return nil, fmt.Errorf("observe packages: %w", err)
		}
		for _, st := range o.Items {
			if p, ok := pol[st.Name]; ok {
				st.known, st.Candidate, st.versions = true, p.candidate, p.versions
			}
			st.looked = true
		}
	}
	root, err := env.OpenRoot()
	if err != nil {
		return nil, fmt.Errorf("observe packages: %w", err)
	}
	defer root.Close()
	readFile := func(p string) (*FileState, error) {
		b, err := root.ReadFileIfExists(strings.TrimPrefix(p, "/"))
		if err != nil {
			return nil, err
		}
		fs := &FileState{Path: p, content: b}
		if b != nil {
			fs.Present = true
			sum := sha256.Sum256(b)
			fs.SHA256 = hex.EncodeToString(sum[:])
		}
		return fs, nil
	}
	wanted := map[string]bool{}
	for name := range s.Keys {
		if o.Keys[name], err = readFile(KeyPath(name)); err != nil {
			return nil, fmt.Errorf("observe packages/keys/%s: %w", name, err)
		}
		wanted[KeyPath(name)] = true
	}
	for name := range s.Sources {
		if o.Sources[name], err = readFile(SourcePath(name)); err != nil {
			return nil, fmt.Errorf("observe packages/sources/%s: %w", name, err)
		}
		wanted[SourcePath(name)] = true
	}
	if s.Prune {
		desired := map[string]bool{}
		for _, pk := range s.Packages {
			desired[pk.Name] = true
		}
		for key := range env.Managed {
			if name, ok := strings.CutPrefix(key, "package:"); ok {
				if e := db.find(name); !desired[name] && e != nil && e.present() && !e.essential {
					o.prunePkgs = append(o.prunePkgs, name)
				}
				continue
			}
			if strings.HasPrefix(key, "/") && !wanted[key] {
				if fs, err := readFile(key); err == nil && fs.Present {
					o.pruneFiles = append(o.pruneFiles, key)
				}
			}
		}
		sort.Strings(o.prunePkgs)
		sort.Strings(o.pruneFiles)
	}
	hash, err := sourcesHash(root)
	if err != nil {
		return nil, fmt.Errorf("observe packages: %w", err)
	}
	o.ListsFresh = t.listsStamp() == hash
	return o, nil
}

// Plan implements providers.Provider. The order is: keys, sources, the
// update of the package lists when those changed (or were never updated
// by twinlet and something is to be installed), removals, installs and
// changes, then prunes.
func (Provider) Plan(spec providers.Spec, observed providers.Observed) ([]providers.Change, error) {
	s, o := spec.(Spec), observed.(*Observed)
	var out []providers.Change
	for _, name := range sortedKeys(s.Keys) {
		k, st := s.Keys[name], o.Keys[name]
		if st == nil {
			return nil, fmt.Errorf("plan packages: key %q was not observed", name)
		}
		item := "keys/" + name
		p := KeyPath(name)
		switch {
		case k.Absent && st.Present:
			out = append(out, providers.Change{Action: providers.Delete, Item: item, Key: p, Before: p, Data: fileOp{path: p, del: true}})
		case k.Absent:
		case !st.Present:
			out = append(out, providers.Change{Action: providers.Create, Item: item, Key: p, After: p + " " + short([]byte(k.Armored)), Data: fileOp{path: p, data: []byte(k.Armored)}})
		case !bytes.Equal(st.content, []byte(k.Armored)):
			out = append(out, providers.Change{Action: providers.Update, Item: item, Before: short(st.content), After: short([]byte(k.Armored)), Data: fileOp{path: p, data: []byte(k.Armored)}})
		}
	}
	for _, name := range sortedKeys(s.Sources) {
		src, st := s.Sources[name], o.Sources[name]
		if st == nil {
			return nil, fmt.Errorf("plan packages: source %q was not observed", name)
		}
		item := "sources/" + name
		p := SourcePath(name)
		want := renderSource(name, src)
		desc := strings.Join(src.URIs, " ") + " " + strings.Join(src.Suites, " ")
		if len(src.Components) > 0 {
			desc += " " + strings.Join(src.Components, " ")
		}
		switch {
		case src.Absent && st.Present:
			out = append(out, providers.Change{Action: providers.Delete, Item: item, Key: p, Before: p, Data: fileOp{path: p, del: true}})
		case src.Absent:
		case !st.Present:
			out = append(out, providers.Change{Action: providers.Create, Item: item, Key: p, After: p + ": " + desc, Data: fileOp{path: p, data: want}})
		case !bytes.Equal(st.content, want):
			out = append(out, providers.Change{Action: providers.Update, Item: item, Before: p + " " + short(st.content), After: desc, Data: fileOp{path: p, data: want}})
		}
	}
	for _, p := range o.pruneFiles {
		out = append(out, providers.Change{Action: providers.Delete, Item: strings.TrimPrefix(p, "/"), Key: p, Before: p + " (pruned)", Data: fileOp{path: p, del: true}})
	}
	sourcesChanged := len(out) > 0

	items := make([]string, 0, len(s.Packages))
	for item := range s.Packages {
		items = append(items, item)
	}
	sort.Strings(items)
	var removes, installs []providers.Change
	var check []checkItem
	errs := &providers.InvalidError{}
	for _, item := range items {
		pk, st := s.Packages[item], o.Items[item]
		if st == nil {
			return nil, fmt.Errorf("plan packages: item %q was not observed", item)
		}
		present := st.Version != ""
		if pk.Absent {
			if !present {
				continue
			}
			if st.Essential && !pk.AllowEssential {
				errs.Add(ptr(item, "ensure"), "%s is an essential package (Essential: yes or Priority: required); removing it needs allowEssential: true", pk.Name)
				continue
			}
			removes = append(removes, providers.Change{Action: providers.Delete, Item: item, Key: pkgKey(pk.Name),
				Before: "remove " + pk.Name + " " + st.Version, Data: pkgOp{item: item, name: pk.Name, remove: true, force: pk.AllowEssential}})
			continue
		}
		op := pkgOp{item: item, name: pk.Name, version: pk.Version, hold: pk.Hold, held: st.Held}
		switch {
		case !present:
			op.install = true
		case pk.Version != "" && st.Version != pk.Version:
			op.install = true
		case st.Status != "installed":
			op.install, op.broken = true, true
		}
		want := st.Version
		if op.install && !op.broken {
			want = pk.Version
			if want == "" {
				want = st.Candidate
			}
			if !sourcesChanged && o.ListsFresh && st.looked {
				switch {
				case !st.known:
					errs.Add(ptr(item, "name"), "package %s is not known to apt in this root (not in the lists of its sources)", pk.Name)
					continue
				case pk.Version != "" && !contains(st.versions, pk.Version):
					errs.Add(ptr(item, "version"), "version %s of %s is not available (available: %s)", pk.Version, pk.Name, orNone(st.versions))
					continue
				case pk.Version == "" && st.Candidate == "":
					errs.Add(ptr(item, "name"), "package %s has no installation candidate (a virtual package, or only referred to)", pk.Name)
					continue
				}
			} else {
				check = append(check, checkItem{item: item, name: pk.Name, version: pk.Version})
			}
		}
		holdChange := pk.Hold != nil && *pk.Hold != st.Held
		if !op.install && !holdChange {
			continue
		}
		heldAfter := st.Held
		if pk.Hold != nil {
			heldAfter = *pk.Hold
		}
		c := providers.Change{Action: providers.Update, Item: item, Data: op,
			Before: pk.Name + " " + st.Version + heldNote(st.Held), After: pk.Name + " " + orUnknown(want) + heldNote(heldAfter)}
		switch {
		case !present:
			c.Action, c.Key, c.Before = providers.Create, pkgKey(pk.Name), ""
			c.After = "install " + c.After
		case op.broken:
			c.Before = pk.Name + " " + st.Version + " (" + st.Status + ")"
			c.After = "reconfigure" + heldNote(heldAfter)
		}
		installs = append(installs, c)
	}
	if err := errs.OrNil(); err != nil {
		return nil, err
	}
	if sourcesChanged || !o.ListsFresh && len(check) > 0 {
		out = append(out, providers.Change{Action: providers.Update, Item: "lists", Before: "package lists", After: "apt-get update", Data: updateOp{check: check}})
	}
	out = append(out, removes...)
	out = append(out, installs...)
	for _, name := range o.prunePkgs {
		out = append(out, providers.Change{Action: providers.Delete, Item: name, Key: pkgKey(name), Before: "remove " + name + " (pruned)", Data: pkgOp{item: name, name: name, remove: true}})
	}
	return out, nil
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

func orNone(l []string) string {
	if len(l) == 0 {
		return "none"
	}
	return strings.Join(l, ", ")
}

func heldNote(held bool) string {
	if held {
		return " (held)"
	}
	return ""
}

func orUnknown(v string) string {
	if v == "" {
		return "(candidate)"
	}
	return v
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

type fileOp struct {
	path string
	data []byte
	del  bool
}

type checkItem struct{ item, name, version string }

type updateOp struct{ check []checkItem }

type pkgOp struct {
	item, name, version string
	install, broken     bool
	remove, force       bool
	hold                *bool
	held                bool
}

// Apply implements providers.Provider.
func (Provider) Apply(ctx context.Context, env *providers.Env, c providers.Change) error {
	var err error
	switch d := c.Data.(type) {
	case fileOp:
		err = applyFile(env, d)
	case updateOp:
		err = applyUpdate(ctx, env, d)
	case pkgOp:
		err = applyPackage(ctx, env, d)
	default:
		return fmt.Errorf("apply packages/%s: not a change of this provider", c.Item)
	}
	if err == nil {
		return nil
	}
	var inv *providers.InvalidError
	var busy *providers.BusyError
	if errors.As(err, &inv) || errors.As(err, &busy) {
		return err
	}
	return fmt.Errorf("apply packages/%s: %w", c.Item, err)
}

func applyFile(env *providers.Env, d fileOp) error {
	root, err := env.OpenRoot()
	if err != nil {
		return err
	}
	defer root.Close()
	rel := strings.TrimPrefix(d.path, "/")
	if d.del {
		err := root.Remove(rel)
		if err != nil && !errors.Is(err, errNotExist) {
			return err
		}
		return nil
	}
	cur, err := root.ReadFileIfExists(rel)
	if err != nil {
		return err
	}
	if cur != nil && bytes.Equal(cur, d.data) {
		return nil
	}
	return root.WriteFileAtomic(rel, d.data, providers.FileMeta{Mode: 0o644})
}

func applyUpdate(ctx context.Context, env *providers.Env, d updateOp) error {
	t := newTools(env)
	env.Progress("update package lists", 0, 1)
	if err := t.update(ctx, env); err != nil {
		return err
	}
	env.Progress("update package lists", 1, 1)
	if len(d.check) == 0 {
		return nil
	}
	names := make([]string, 0, len(d.check))
	for _, c := range d.check {
		names = append(names, c.name)
	}
	pol, err := t.policy(ctx, names)
	if err != nil {
		return err
	}
	errs := &providers.InvalidError{}
	for _, c := range d.check {
		p, ok := pol[c.name]
		switch {
		case !ok:
			errs.Add(ptr(c.item, "name"), "package %s is not known to apt in this root (not in the lists of its sources)", c.name)
		case c.version != "" && !contains(p.versions, c.version):
			errs.Add(ptr(c.item, "version"), "version %s of %s is not available (available: %s)", c.version, c.name, orNone(p.versions))
		case c.version == "" && p.candidate == "":
			errs.Add(ptr(c.item, "name"), "package %s has no installation candidate", c.name)
		}
	}
	return errs.OrNil()
}

func applyPackage(ctx context.Context, env *providers.Env, d pkgOp) error {
	t := newTools(env)
	// Idempotence: look at what is there now, not at what Plan saw.
	db, err := t.query(ctx)
	if err != nil {
		return err
	}
	e := db.find(d.name)
	if d.remove {
		if e == nil || !e.present() {
			return nil
		}
		return t.remove(ctx, env, d)
	}
	need := e == nil || !e.present() || e.status != "installed" || d.version != "" && e.version != d.version
	if need {
		state := ""
		if e != nil {
			state = e.status
		}
		d.broken = e != nil && e.present() && e.status != "installed"
		if err := t.install(ctx, env, d, e != nil && e.want == "hold", state); err != nil {
			return err
		}
	}
	if d.hold != nil {
		if db, err = t.query(ctx); err != nil {
			return err
		}
		if e := db.find(d.name); e == nil || (e.want == "hold") != *d.hold {
			return t.setHold(ctx, d.name, *d.hold)
		}
	}
	return nil
}

// CloudScope implements providers.CloudScoper. The twin may install,
// change and remove only the packages the rules allow (names matched
// against Allow and Deny globs: "lib*", "nginx"); keys and sources are
// matched as "keys/<name>" and "sources/<name>". Without Privileged, the
// twin may not set allowEssential nor a trusted (unsigned) source.
func (Provider) CloudScope(rules providers.ScopeRules, twin json.RawMessage) []providers.FieldError {
	var section map[string]json.RawMessage
	if json.Unmarshal(twin, &section) != nil {
		return nil
	}
	var out []providers.FieldError
	for _, item := range sortedKeys(section) {
		if providers.ReservedKeys[item] {
			continue
		}
		if item == "keys" || item == "sources" {
			var m map[string]json.RawMessage
			if json.Unmarshal(section[item], &m) != nil {
				continue
			}
			for _, name := range sortedKeys(m) {
				if why, no := rules.Forbids(item+"/"+name, '/'); no {
					out = append(out, providers.FieldError{Pointer: ptr(item, name), Message: why})
					continue
				}
				var src struct {
					Trusted bool `json:"trusted"`
				}
				if item == "sources" && json.Unmarshal(m[name], &src) == nil && src.Trusted && !rules.Privileged {
					out = append(out, providers.FieldError{Pointer: ptr(item, name, "trusted"), Message: "the twin may not add a trusted (unsigned) source unless the cloud scope is privileged; only local policy may"})
				}
			}
			continue
		}
		var in struct {
			Name           string `json:"name"`
			AllowEssential bool   `json:"allowEssential"`
		}
		if json.Unmarshal(section[item], &in) != nil {
			continue
		}
		name := in.Name
		if name == "" {
			name = item
		}
		if why, no := rules.Forbids(name, '/'); no {
			out = append(out, providers.FieldError{Pointer: ptr(item, "name"), Message: why})
			continue
		}
		if in.AllowEssential && !rules.Privileged {
			out = append(out, providers.FieldError{Pointer: ptr(item, "allowEssential"), Message: "the twin may not remove essential packages unless the cloud scope is privileged; only local policy may"})
		}
	}
	return out
}

// WatchPaths implements providers.PathWatcher: dpkg's status file (every
// install and removal rewrites it), and the files of the keys and sources
// (whose directories are watched).
func (Provider) WatchPaths(env *providers.Env, spec providers.Spec) []string {
	s, _ := spec.(Spec)
	out := []string{env.HostPath("/var/lib/dpkg/status")}
	for _, name := range sortedKeys(s.Keys) {
		out = append(out, env.HostPath(KeyPath(name)))
	}
	for _, name := range sortedKeys(s.Sources) {
		out = append(out, env.HostPath(SourcePath(name)))
	}
	return out
}
