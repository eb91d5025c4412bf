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
	"os"
	"path"
	"regexp"
	"strings"
	"syscall"
	"time"
	_ "time/tzdata" // the fallback zone database

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
	root, err := env.OpenRoot()
	if err != nil {
		return fmt.Errorf("zoneinfo database: %v", err)
	}
	defer root.Close()
	zoneDir := strings.TrimPrefix(ZoneDir, "/")
	if fi, err := root.Stat(zoneDir); err != nil || !fi.IsDir() {
		if providers.IsOutsideRoot(err) {
			return fmt.Errorf("zoneinfo database: %v", err)
		}
		// No database under the root: Go's embedded one decides.
		if _, err := time.LoadLocation(name); err != nil {
			return fmt.Errorf("unknown time zone %q", name)
		}
		return nil
	}
	if err := isTZif(root, zoneDir+"/"+name); err != nil {
		return fmt.Errorf("unknown time zone %q (no TZif file %s in the root: %v)", name, path.Join(ZoneDir, name), err)
	}
	return nil
}

// isTZif checks that name is a regular file inside the root that starts
// with the TZif magic. Relative links inside the root are followed (zones
// such as US/Eastern are links); absolute ones are refused.
func isTZif(root *providers.Dir, name string) error {
	f, err := root.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return errors.New("not a regular file")
	}
	magic := make([]byte, 4)
	if _, err = io.ReadFull(f, magic); err != nil || string(magic) != "TZif" {
		return errors.New("not a TZif file")
	}
	return nil
}

// Observe implements providers.Provider.
func (Provider) Observe(ctx context.Context, env *providers.Env, spec providers.Spec) (providers.Observed, error) {
	var o Observed
	root, err := env.OpenRoot()
	if err != nil {
		return nil, fmt.Errorf("observe timezone: %w", err)
	}
	defer root.Close()
	fi, err := root.Lstat("etc/localtime")
	switch {
	case errors.Is(err, fs.ErrNotExist):
		o.Localtime = "(missing)"
	case err != nil:
		return nil, fmt.Errorf("observe timezone: %w", err)
	case fi.Mode()&fs.ModeSymlink != 0:
		target, err := root.Readlink("etc/localtime")
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
	b, err := root.ReadFileIfExists("etc/timezone")
	if err != nil {
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
	root, err := env.OpenRoot()
	if err != nil {
		return fmt.Errorf("apply timezone/%s: %w", c.Item, err)
	}
	defer root.Close()
	if o.localtime {
		err = link(root, "etc/localtime", path.Join(ZoneDir, o.name))
	} else {
		err = root.WriteFileAtomic("etc/timezone", []byte(o.name+"\n"), providers.FileMeta{Mode: 0o644})
	}
	if err != nil {
		return fmt.Errorf("apply timezone/%s: %w", c.Item, err)
	}
	return nil
}

// link atomically replaces name with a symbolic link to target: a crash
// leaves the old or the new link.
func link(root *providers.Dir, name, target string) error {
	if cur, err := root.Readlink(name); err == nil && cur == target {
		return nil
	}
	if fi, err := root.Lstat(name); err == nil && fi.IsDir() {
		return fmt.Errorf("/%s is a directory", name)
	}
	return root.SymlinkAtomic(target, name)
}

// WatchPaths implements providers.PathWatcher: the host paths of
// /etc/localtime and /etc/timezone (for watches only).
func (Provider) WatchPaths(env *providers.Env, spec providers.Spec) []string {
	return []string{env.HostPath("/etc/localtime"), env.HostPath("/etc/timezone")}
}
