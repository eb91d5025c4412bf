// Package timezone provides the "timezone" section: <root>/etc/localtime
// as a symbolic link to /usr/share/zoneinfo/<Zone> and <root>/etc/timezone
// holding the zone's name.
//
// A zone must exist: in <root>/usr/share/zoneinfo (as a TZif file) when the
// root has a zoneinfo database, otherwise in Go's embedded copy of the IANA
// database.
package timezone

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"time"
	_ "time/tzdata" // the fallback zone database

	"github.com/twinlet/twinlet/internal/atomicfile"
	"github.com/twinlet/twinlet/providers"
)

// ID is the section id.
const ID = "timezone"

// ZoneDir is the device path of the zoneinfo database.
const ZoneDir = "/usr/share/zoneinfo"

func init() {
	providers.Register(providers.Info{ID: ID, Kind: providers.Object, New: New})
}

// New returns the timezone provider.
func New() providers.Provider { return Provider{} }

// Provider implements the timezone section.
type Provider struct{}

// Spec is the desired zone.
type Spec struct {
	Name string
}

// Observed is what the provider reports.
type Observed struct {
	// Name is the zone /etc/localtime links to ("" when it is missing or
	// not a link into the zoneinfo database).
	Name string `json:"name"`
	// Localtime describes /etc/localtime: its link target, "(missing)",
	// or the kind of file it is when it is not a link.
	Localtime string `json:"localtime"`
	// TimezoneFile is the content of /etc/timezone.
	TimezoneFile string `json:"timezoneFile"`
}

// nameRE admits IANA zone names: slash-separated components of letters,
// digits, '_', '+' and '-'. No dots, so no ".." and no files such as
// "zone.tab".
var nameRE = regexp.MustCompile(`^[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*$`)

// Decode implements providers.Provider.
func (Provider) Decode(env *providers.Env, raw json.RawMessage) (providers.Spec, error) {
	var in struct {
		Name          *string         `json:"name"`
		Meta          json.RawMessage `json:"__meta"`
		ReportingMode json.RawMessage `json:"reportingMode"`
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		return nil, providers.Invalid("", "%v", err)
	}
	if in.Name == nil {
		return nil, providers.Invalid("/name", "a zone name is required, for example \"Europe/Berlin\"")
	}
	if err := validate(env, *in.Name); err != nil {
		return nil, providers.Invalid("/name", "%v", err)
	}
	return Spec{Name: *in.Name}, nil
}

func validate(env *providers.Env, name string) error {
	if len(name) > 128 || !nameRE.MatchString(name) || name == "Local" {
		return fmt.Errorf("%q is not a time zone name (like \"Europe/Berlin\" or \"UTC\")", name)
	}
	db, err := env.ResolveFollow(ZoneDir)
	if err != nil {
		return fmt.Errorf("zoneinfo database: %v", err)
	}
	if fi, err := os.Stat(db); err != nil || !fi.IsDir() {
		// No database under the root: Go's embedded one decides.
		if _, err := time.LoadLocation(name); err != nil {
			return fmt.Errorf("unknown time zone %q", name)
		}
		return nil
	}
	host, err := env.ResolveFollow(path.Join(ZoneDir, name))
	if err != nil {
		return fmt.Errorf("unknown time zone %q: %v", name, err)
	}
	if !isTZif(host) {
		return fmt.Errorf("unknown time zone %q (no TZif file %s in the root)", name, path.Join(ZoneDir, name))
	}
	return nil
}

// isTZif reports whether host is a regular file that starts with the TZif
// magic.
func isTZif(host string) bool {
	f, err := os.Open(host)
	if err != nil {
		return false
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return false
	}
	magic := make([]byte, 4)
	_, err = io.ReadFull(f, magic)
	return err == nil && string(magic) == "TZif"
}

// Observe implements providers.Provider.
func (Provider) Observe(ctx context.Context, env *providers.Env, spec providers.Spec) (providers.Observed, error) {
	var o Observed
	host, err := env.Resolve("/etc/localtime")
	if err != nil {
		return nil, fmt.Errorf("observe timezone: %w", err)
	}
	fi, err := os.Lstat(host)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		o.Localtime = "(missing)"
	case err != nil:
		return nil, fmt.Errorf("observe timezone: %w", err)
	case fi.Mode()&fs.ModeSymlink != 0:
		target, err := os.Readlink(host)
		if err != nil {
			return nil, fmt.Errorf("observe timezone: %w", err)
		}
		o.Localtime = target
		o.Name = zoneOf(target)
	case fi.Mode().IsRegular():
		o.Localtime = "(regular file)"
	default:
		o.Localtime = "(" + fi.Mode().Type().String() + ")"
	}
	tzHost, err := env.ResolveFollow("/etc/timezone")
	if err != nil {
		return nil, fmt.Errorf("observe timezone: %w", err)
	}
	b, err := os.ReadFile(tzHost)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("observe timezone: %w", err)
	}
	o.TimezoneFile = strings.TrimSpace(string(b))
	return &o, nil
}

// zoneOf returns the zone a link target of /etc/localtime names, absolute
// or relative to /etc, or "" when it does not point into ZoneDir.
func zoneOf(target string) string {
	if !path.IsAbs(target) {
		target = path.Join("/etc", target)
	}
	zone, ok := strings.CutPrefix(path.Clean(target), ZoneDir+"/")
	if !ok || !nameRE.MatchString(zone) {
		return ""
	}
	return zone
}

// Plan implements providers.Provider.
func (Provider) Plan(spec providers.Spec, observed providers.Observed) ([]providers.Change, error) {
	s, o := spec.(Spec), observed.(*Observed)
	var out []providers.Change
	if o.Name != s.Name {
		out = append(out, providers.Change{Action: providers.Update, Item: "localtime", Before: o.Localtime, After: path.Join(ZoneDir, s.Name), Data: op{localtime: true, name: s.Name}})
	}
	if o.TimezoneFile != s.Name {
		before := o.TimezoneFile
		if before == "" {
			before = "(none)"
		}
		out = append(out, providers.Change{Action: providers.Update, Item: "timezone", Before: before, After: s.Name, Data: op{name: s.Name}})
	}
	return out, nil
}

type op struct {
	localtime bool // /etc/localtime, else /etc/timezone
	name      string
}

// Apply implements providers.Provider.
func (Provider) Apply(ctx context.Context, env *providers.Env, c providers.Change) error {
	o, ok := c.Data.(op)
	if !ok {
		return fmt.Errorf("apply timezone/%s: not a change of this provider", c.Item)
	}
	var err error
	if o.localtime {
		err = link(env, "/etc/localtime", path.Join(ZoneDir, o.name))
	} else {
		err = writeFile(env, "/etc/timezone", []byte(o.name+"\n"))
	}
	if err != nil {
		return fmt.Errorf("apply timezone/%s: %w", c.Item, err)
	}
	return nil
}

// link atomically replaces the device path p with a symbolic link to
// target: a crash leaves the old or the new link.
func link(env *providers.Env, p, target string) error {
	host, err := env.Resolve(p)
	if err != nil {
		return err
	}
	if cur, err := os.Readlink(host); err == nil && cur == target {
		return nil
	}
	if fi, err := os.Lstat(host); err == nil && fi.IsDir() {
		return fmt.Errorf("%s is a directory", p)
	}
	dir := filepath.Dir(host)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	tmp := filepath.Join(dir, fmt.Sprintf(".%s.tmp-%d", filepath.Base(host), rand.Uint64()))
	if err := os.Symlink(target, tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, host); err != nil {
		os.Remove(tmp)
		return err
	}
	return atomicfile.SyncDir(dir)
}

// writeFile atomically replaces a device path inside the root.
func writeFile(env *providers.Env, p string, data []byte) error {
	host, err := env.Resolve(p)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(host), 0o755); err != nil {
		return err
	}
	return env.WriteFileAtomic(host, data, 0o644)
}

// WatchPaths implements providers.PathWatcher: the host paths of
// /etc/localtime and /etc/timezone.
func (Provider) WatchPaths(env *providers.Env, spec providers.Spec) []string {
	var out []string
	for _, p := range []string{"/etc/localtime", "/etc/timezone"} {
		if host, err := env.Resolve(p); err == nil {
			out = append(out, host)
		}
	}
	return out
}
