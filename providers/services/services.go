// Package services provides the "services" section: systemd units
// enabled, disabled, masked, started, stopped and restarted when a files
// item they depend on changes, and unit drop-ins written under
// <root>/etc/systemd/system/<unit>.d/<name>.conf.
//
//	"services": {
//	  "nginx":   { "unit": "nginx.service", "enabled": true, "state": "running", "restartOn": ["nginxConf"] },
//	  "dropIns": { "limits": { "unit": "nginx.service", "content": "[Service]\nLimitNOFILE=65536\n" } }
//	}
//
// Where the root is not the running system, the provider works offline
// through `systemctl --root=<root>` (enable, disable, mask, unmask,
// is-enabled): that is how an image is prepared. Whether a unit runs, and
// starting, stopping or restarting it, need a running systemd: only when
// the root is "/" and systemd is PID 1 (sd_booted: /run/systemd/system is
// a directory). Otherwise a unit is reported with active "unknown" and a
// message, and no start, stop or restart is planned.
//
// restartOn names items of the files section (on which services
// depends). The provider reads that section's last observation through
// Env.DependencyObserved, fingerprints each named item, and remembers in
// the state directory the fingerprint the unit was last (re)started for.
// When they differ, it plans one restart; the record is written after the
// restart succeeded, so a crash in between restarts once more, never
// zero times. A unit that is not running is not restarted (its next start
// reads the new file); the new fingerprint is only recorded.
package services

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"

	"github.com/twinlet/twinlet/internal/atomicfile"
	"github.com/twinlet/twinlet/providers"
)

// ID is the section id.
const ID = "services"

// DropInsKey is the key of the section that holds the drop-ins. It is not
// an item; it merges across layers as one key (a higher layer's dropIns
// replaces a lower one's whole).
const DropInsKey = "dropIns"

// RecordFile is the file in the state directory that remembers, per unit,
// the fingerprint of each restartOn files item the unit was last
// (re)started for.
const RecordFile = "services-restarts.json"

// UnitDir is the device path of the directory of local unit files and
// drop-ins.
const UnitDir = "/etc/systemd/system"

// CloudDeny are the units the twin may not touch by default: twinlet
// itself, remote access (ssh), the bus, systemd's own units, and targets,
// mounts, swaps and slices (masking one can keep a device from booting).
// Globs as in providers.MatchGlob on unit names. The agent config's
// cloud.services replaces the list. Drop-ins from the twin are refused
// unless cloud.services.privileged is set, whatever the globs: a drop-in
// can set ExecStart=, which is running code as root.
var CloudDeny = []string{"twinlet*", "ssh*", "sshd*", "dbus*", "systemd-*", "getty@*", "serial-getty@*", "*.target", "*.mount", "*.swap", "*.slice"}

func init() {
	providers.Register(providers.Info{ID: ID, Kind: providers.Collection, New: New, CloudDeny: CloudDeny,
		DependsOn: []string{"files", "packages"}})
}

// New returns the services provider.
func New() providers.Provider { return &Provider{} }

// Provider implements the services section.
type Provider struct {
	mu sync.Mutex // serializes writes of the record file
}

// Unit is one desired unit.
type Unit struct {
	// Unit is the unit name ("nginx.service").
	Unit string
	// Enabled and Masked are nil when not managed.
	Enabled, Masked *bool
	// State is "running", "stopped" or "" (not managed).
	State string
	// RestartOn lists files items whose change restarts the unit.
	RestartOn []string
}

// DropIn is one desired drop-in file.
type DropIn struct {
	Unit    string
	Name    string
	Content string
	Absent  bool
}

// Path is the drop-in's device path.
func (d DropIn) Path() string { return dropInPath(d.Unit, d.Name) }

func dropInPath(unit, name string) string {
	return UnitDir + "/" + unit + ".d/" + name + ".conf"
}

// Spec is the decoded section.
type Spec struct {
	Units   map[string]Unit
	DropIns map[string]DropIn
	Prune   bool
}

var itemNameRE = regexp.MustCompile(`^[^.$ \x00-\x1f\x7f]+$`)

const maxContent = 64 << 10

// Decode implements providers.Provider.
func (*Provider) Decode(env *providers.Env, raw json.RawMessage) (providers.Spec, error) {
	errs := &providers.InvalidError{}
	col := providers.SplitCollection(raw, errs)
	spec := Spec{Units: map[string]Unit{}, DropIns: map[string]DropIn{}, Prune: col.Prune}
	byUnit := map[string]string{}
	for _, name := range col.Names {
		if name == DropInsKey {
			decodeDropIns(col.Items[name], &spec, errs)
			continue
		}
		if !itemNameRE.MatchString(name) {
			errs.Add(providers.Pointer(name), "item names must not contain '.', '$', spaces or control characters")
			continue
		}
		var in struct {
			Unit      string   `json:"unit"`
			Enabled   *bool    `json:"enabled"`
			Masked    *bool    `json:"masked"`
			State     string   `json:"state"`
			RestartOn []string `json:"restartOn"`
		}
		dec := json.NewDecoder(bytes.NewReader(col.Items[name]))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&in); err != nil {
			errs.Add(providers.Pointer(name), "%v", err)
			continue
		}
		u := Unit{Unit: in.Unit, Enabled: in.Enabled, Masked: in.Masked, State: in.State, RestartOn: in.RestartOn}
		if u.Unit == "" {
			u.Unit = name + ".service"
		}
		if err := checkUnit(u.Unit); err != nil {
			errs.Add(providers.Pointer(name, "unit"), "%v", err)
		} else if other, dup := byUnit[u.Unit]; dup {
			errs.Add(providers.Pointer(name, "unit"), "unit %s is also managed by item %q", u.Unit, other)
		} else {
			byUnit[u.Unit] = name
			if u.State != "" && isTemplate(u.Unit) {
				errs.Add(providers.Pointer(name, "state"), "%s is a template: only its instances (name@instance%s) can run", u.Unit, u.Unit[strings.LastIndexByte(u.Unit, '.'):])
			}
		}
		switch u.State {
		case "", "running", "stopped":
		default:
			errs.Add(providers.Pointer(name, "state"), "must be running or stopped")
		}
		if u.Masked != nil && *u.Masked {
			if u.Enabled != nil && *u.Enabled {
				errs.Add(providers.Pointer(name, "enabled"), "a masked unit cannot be enabled")
			}
			if u.State == "running" {
				errs.Add(providers.Pointer(name, "state"), "a masked unit cannot run")
			}
		}
		seen := map[string]bool{}
		for i, f := range u.RestartOn {
			p := providers.Pointer(name, "restartOn", fmt.Sprint(i))
			switch {
			case !itemNameRE.MatchString(f):
				errs.Add(p, "%q is not a files item name", f)
			case seen[f]:
				errs.Add(p, "files item %q is named twice", f)
			}
			seen[f] = true
		}
		spec.Units[name] = u
	}
	if err := errs.OrNil(); err != nil {
		return nil, err
	}
	return spec, nil
}

func decodeDropIns(raw json.RawMessage, spec *Spec, errs *providers.InvalidError) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		errs.Add(providers.Pointer(DropInsKey), "must be an object of named drop-ins")
		return
	}
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	paths := map[string]string{}
	for _, name := range names {
		at := func(field string) string { return providers.Pointer(DropInsKey, name, field) }
		var in struct {
			Unit    string `json:"unit"`
			Name    string `json:"name"`
			Content string `json:"content"`
			Ensure  string `json:"ensure"`
		}
		dec := json.NewDecoder(bytes.NewReader(m[name]))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&in); err != nil {
			errs.Add(at(""), "%v", err)
			continue
		}
		d := DropIn{Unit: in.Unit, Name: in.Name, Content: in.Content}
		if d.Name == "" {
			d.Name = name
		}
		if err := checkUnit(d.Unit); err != nil {
			errs.Add(at("unit"), "%v", err)
		}
		if err := checkDropInName(d.Name); err != nil {
			field := "name"
			if in.Name == "" {
				field = ""
			}
			errs.Add(at(field), "drop-in file name: %v", err)
		}
		switch in.Ensure {
		case "", "present":
			if msg := checkUnitFile(d.Content); msg != "" {
				errs.Add(at("content"), "%s", msg)
			}
		case "absent":
			d.Absent = true
		default:
			errs.Add(at("ensure"), "must be present or absent")
		}
		if other, dup := paths[d.Path()]; dup {
			errs.Add(at(""), "drop-in %s is also written by %q", d.Path(), other)
		}
		paths[d.Path()] = name
		spec.DropIns[name] = d
	}
}

// checkUnitFile says what keeps content from being a unit file fragment
// systemd reads: not empty, no NUL, and every line blank, a comment, a
// [Section] header or a Key=value assignment under one (a line ending in
// '\' continues on the next). "" when it is fine.
func checkUnitFile(content string) string {
	switch {
	case strings.TrimSpace(content) == "":
		return "content is required"
	case len(content) > maxContent:
		return fmt.Sprintf("longer than %d bytes", maxContent)
	case strings.IndexByte(content, 0) >= 0:
		return "must not contain NUL bytes"
	}
	section, cont := false, false
	for i, line := range strings.Split(content, "\n") {
		line = strings.TrimSpace(line)
		wasCont := cont
		cont = strings.HasSuffix(line, `\`)
		switch {
		case wasCont, line == "", line[0] == '#', line[0] == ';':
		case line[0] == '[':
			if !strings.HasSuffix(line, "]") || len(line) < 3 {
				return fmt.Sprintf("line %d: a section header is written [Name]", i+1)
			}
			section = true
		case !section:
			return fmt.Sprintf("line %d: %q comes before any [Section] header (like [Service])", i+1, line)
		case !strings.Contains(line, "="):
			return fmt.Sprintf("line %d: %q is not a Key=value assignment", i+1, line)
		}
	}
	if !section {
		return "no [Section] header (like [Service])"
	}
	return ""
}

// UnitState is what the provider observed for one unit.
type UnitState struct {
	Unit string `json:"unit"`
	// Enabled is the unit file state as `systemctl is-enabled` says it:
	// enabled, disabled, static, masked, indirect, …, or not-found.
	Enabled string `json:"enabled"`
	// Active is the unit's active state (active, inactive, failed,
	// activating, …) on a running system, "unknown" elsewhere.
	Active string `json:"active"`
	// Sub is the unit's sub-state (running, exited, dead, …) on a running
	// system.
	Sub string `json:"sub,omitempty"`
	// Message says why something is not observable.
	Message string `json:"message,omitempty"`
	// RestartOn maps each restartOn files item to its fingerprint
	// ("sha256:…"), "unknown" when the files section has not been
	// observed, or "missing" when it has no such item.
	RestartOn map[string]string `json:"restartOn,omitempty"`
	// Restarted maps each restartOn files item to the fingerprint the
	// unit was last (re)started for; empty until the first record.
	Restarted map[string]string `json:"restartedFor,omitempty"`
}

// DropInState is what the provider observed for one drop-in.
type DropInState struct {
	Unit   string `json:"unit"`
	Path   string `json:"path"`
	Exists bool   `json:"exists"`
	SHA256 string `json:"sha256,omitempty"`
	Size   int    `json:"size,omitempty"`
}

// Observed is the provider's observation; it marshals to a JSON object
// keyed by item name, with the drop-ins under "dropIns".
type Observed struct {
	Units   map[string]*UnitState
	DropIns map[string]*DropInState
	// Live is true when systemd runs the root: start, stop and restart
	// are possible and active states are known.
	Live bool
	// Why says why the root is not live.
	Why string
	// prunable are drop-ins twinlet created that left the desired state
	// and still exist (device paths); filled only when the spec prunes.
	prunable []string
	// filesSeen is false when the files section's observation was not
	// available.
	filesSeen bool
}

// MarshalJSON reports the units at the top level and the drop-ins under
// "dropIns".
func (o *Observed) MarshalJSON() ([]byte, error) {
	m := make(map[string]any, len(o.Units)+1)
	for k, v := range o.Units {
		m[k] = v
	}
	if len(o.DropIns) > 0 {
		m[DropInsKey] = o.DropIns
	}
	return json.Marshal(m)
}

// liveMode decides whether the provider may drive a running systemd: the
// root must be the running system and systemd its init (booted). It
// returns the reason when not.
func liveMode(hostRoot, booted bool, root string) (bool, string) {
	switch {
	case !hostRoot:
		return false, fmt.Sprintf("the root %s is not the running system: enablement is managed offline; whether the unit runs is not observable, start, stop and restart are not done", root)
	case !booted:
		return false, "systemd is not running (PID 1 is not systemd): enablement is managed offline; whether the unit runs is not observable, start, stop and restart are not done"
	}
	return true, ""
}

// booted reports whether systemd runs the root, as sd_booted does:
// /run/systemd/system is a directory.
func booted(root *providers.Dir) bool {
	fi, err := root.Lstat("run/systemd/system")
	return err == nil && fi.IsDir()
}

// systemctl returns the argv prefix for the root: offline ones get
// --root.
func systemctl(env *providers.Env, live bool, args ...string) []string {
	if live {
		return args
	}
	return append([]string{"--root=" + env.Root}, args...)
}

// Observe implements providers.Provider.
func (p *Provider) Observe(ctx context.Context, env *providers.Env, spec providers.Spec) (providers.Observed, error) {
	s := spec.(Spec)
	root, err := env.OpenRoot()
	if err != nil {
		return nil, fmt.Errorf("observe services: %w", err)
	}
	defer root.Close()
	o := &Observed{Units: map[string]*UnitState{}, DropIns: map[string]*DropInState{}}
	o.Live, o.Why = liveMode(env.IsHostRoot(), booted(root), env.Root)

	for name, d := range s.DropIns {
		st := &DropInState{Unit: d.Unit, Path: d.Path()}
		b, err := root.ReadFileIfExists(strings.TrimPrefix(d.Path(), "/"))
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			return nil, fmt.Errorf("observe services/dropIns/%s: %w", name, err)
		case b != nil:
			st.Exists, st.SHA256, st.Size = true, sum(b), len(b)
		}
		o.DropIns[name] = st
	}
	if s.Prune {
		desired := map[string]bool{}
		for _, d := range s.DropIns {
			desired[d.Path()] = true
		}
		for key := range env.Managed {
			if desired[key] || !strings.HasPrefix(key, UnitDir+"/") {
				continue
			}
			if _, err := root.Lstat(strings.TrimPrefix(key, "/")); err == nil {
				o.prunable = append(o.prunable, key)
			}
		}
		sort.Strings(o.prunable)
	}

	names := sortedKeys(s.Units)
	units := make([]string, len(names))
	for i, n := range names {
		units[i] = s.Units[n].Unit
	}
	states, err := observeUnits(ctx, env, o.Live, units)
	if err != nil {
		return nil, fmt.Errorf("observe services: %w", err)
	}
	records, err := readRecords(env.StateDir)
	if err != nil {
		return nil, fmt.Errorf("observe services: %w", err)
	}
	var files map[string]json.RawMessage
	if env.DependencyObserved != nil {
		if b, ok := env.DependencyObserved("files"); ok && json.Unmarshal(b, &files) == nil {
			o.filesSeen = true
		}
	}
	for i, name := range names {
		u := s.Units[name]
		st := states[i]
		if !o.Live {
			st.Active, st.Message = "unknown", o.Why
		}
		if len(u.RestartOn) > 0 {
			st.RestartOn = map[string]string{}
			for _, f := range u.RestartOn {
				st.RestartOn[f] = fingerprint(files, f, o.filesSeen)
				if r := records[u.Unit][f]; r != "" {
					if st.Restarted == nil {
						st.Restarted = map[string]string{}
					}
					st.Restarted[f] = r
				}
			}
		}
		o.Units[name] = st
	}
	return o, nil
}

// fingerprint is the fingerprint of a files item as the files section
// observed it (its path, existence, kind, mode, owner, size and content
// hash): any change of the item changes it.
func fingerprint(files map[string]json.RawMessage, item string, seen bool) string {
	if !seen {
		return "unknown"
	}
	raw, ok := files[item]
	if !ok {
		return "missing"
	}
	var v any
	if json.Unmarshal(raw, &v) != nil {
		return "unknown"
	}
	b, _ := json.Marshal(v) // canonical: sorted keys
	return sum(b)
}

func sum(b []byte) string {
	h := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(h[:])
}

func short(fp string) string {
	if strings.HasPrefix(fp, "sha256:") && len(fp) > 19 {
		return fp[:19] + "…"
	}
	if fp == "" {
		return "none"
	}
	return fp
}

// observeUnits returns the state of each unit, in order: offline with one
// `systemctl --root list-unit-files` for all (and is-enabled for those it
// does not list: instances of templates, units that do not exist), live
// with one `systemctl show`.
func observeUnits(ctx context.Context, env *providers.Env, live bool, units []string) ([]*UnitState, error) {
	out := make([]*UnitState, len(units))
	for i, u := range units {
		out[i] = &UnitState{Unit: u}
	}
	if len(units) == 0 {
		return out, nil
	}
	if live {
		args := append([]string{"show", "--property=LoadState,ActiveState,SubState,UnitFileState", "--"}, units...)
		b, err := env.Runner.Run(ctx, "systemctl", args...)
		if err != nil {
			return nil, err
		}
		blocks := parseShow(string(b))
		if len(blocks) != len(units) {
			return nil, fmt.Errorf("systemctl show: %d answers for %d units", len(blocks), len(units))
		}
		for i, kv := range blocks {
			st := out[i]
			st.Active, st.Sub = kv["ActiveState"], kv["SubState"]
			st.Enabled = kv["UnitFileState"]
			switch {
			case kv["LoadState"] == "masked":
				st.Enabled = "masked"
			case kv["LoadState"] == "not-found":
				st.Enabled = "not-found"
			case st.Enabled == "":
				st.Enabled = "unknown"
			}
		}
		return out, nil
	}
	args := systemctl(env, false, append([]string{"list-unit-files", "--no-legend", "--no-pager", "--full", "--"}, units...)...)
	b, err := env.Runner.Run(ctx, "systemctl", args...)
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		return nil, err
	}
	// It exits 1 when no pattern matches a unit file; those that do not
	// match are asked one by one below, which tells the real errors.
	listed := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 {
			listed[f[0]] = f[1]
		}
	}
	for _, st := range out {
		if e, ok := listed[st.Unit]; ok {
			st.Enabled = e
			continue
		}
		st.Enabled, err = isEnabled(ctx, env, st.Unit)
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// isEnabled asks `systemctl --root is-enabled` about one unit. It exits
// non-zero for every state but enabled ones, so its output decides; no
// output means the unit has no file.
func isEnabled(ctx context.Context, env *providers.Env, unit string) (string, error) {
	b, err := env.Runner.Run(ctx, "systemctl", systemctl(env, false, "is-enabled", "--", unit)...)
	if s := strings.TrimSpace(string(b)); s != "" {
		return strings.Fields(s)[0], nil
	}
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		return "", err
	}
	return "not-found", nil
}

// parseShow splits `systemctl show` output into one map per unit (blocks
// separated by blank lines).
func parseShow(s string) []map[string]string {
	var out []map[string]string
	var cur map[string]string
	for _, line := range strings.Split(s, "\n") {
		line = strings.TrimRight(line, "\r")
		if line == "" {
			if cur != nil {
				out = append(out, cur)
				cur = nil
			}
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		if cur == nil {
			cur = map[string]string{}
		}
		cur[k] = v
	}
	if cur != nil {
		out = append(out, cur)
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// The operations a change carries.
type opKind int

const (
	opWriteDropIn opKind = iota
	opRemoveDropIn
	opReload
	opSystemctl // enable, disable, mask, unmask, start, stop, restart
	opRecord    // remember restartOn fingerprints, no restart
)

type op struct {
	kind    opKind
	path    string // drop-in device path
	content string
	verb    string // systemctl verb
	unit    string
	live    bool
	// record is written to the record file after the operation
	// succeeded (restartOn fingerprints the unit now runs with).
	record map[string]string
}

// enabledStates satisfy enabled: true; disabledStates satisfy enabled:
// false. A static unit has no [Install] section: it is neither, and is
// left as it is either way; so are generated and transient units.
var (
	enabledStates  = map[string]bool{"enabled": true, "enabled-runtime": true, "static": true, "alias": true, "indirect": true, "generated": true, "transient": true}
	disabledStates = map[string]bool{"disabled": true, "static": true, "indirect": true, "generated": true, "transient": true, "masked": true, "masked-runtime": true, "not-found": true}
	runningStates  = map[string]bool{"active": true, "activating": true, "reloading": true}
)

// Plan implements providers.Provider.
func (*Provider) Plan(spec providers.Spec, observed providers.Observed) ([]providers.Change, error) {
	s, o := spec.(Spec), observed.(*Observed)
	var out []providers.Change
	reload := false
	dropInChanged := map[string]bool{}
	for _, name := range sortedKeys(s.DropIns) {
		d, st := s.DropIns[name], o.DropIns[name]
		if st == nil {
			return nil, fmt.Errorf("plan services: drop-in %q was not observed", name)
		}
		item := DropInsKey + "/" + name
		switch {
		case d.Absent && st.Exists:
			out = append(out, providers.Change{Action: providers.Delete, Item: item, Key: d.Path(), Before: d.Path(), Data: op{kind: opRemoveDropIn, path: d.Path()}})
		case d.Absent:
			continue
		case !st.Exists:
			out = append(out, providers.Change{Action: providers.Create, Item: item, Key: d.Path(), After: fmt.Sprintf("%s %s %d B", d.Path(), short(sum([]byte(d.Content))), len(d.Content)), Data: op{kind: opWriteDropIn, path: d.Path(), content: d.Content}})
		case st.SHA256 != sum([]byte(d.Content)):
			out = append(out, providers.Change{Action: providers.Update, Item: item, Before: fmt.Sprintf("%s %d B", short(st.SHA256), st.Size), After: fmt.Sprintf("%s %d B", short(sum([]byte(d.Content))), len(d.Content)), Data: op{kind: opWriteDropIn, path: d.Path(), content: d.Content}})
		default:
			continue
		}
		reload = true
		dropInChanged[d.Unit] = true
	}
	for _, p := range o.prunable {
		out = append(out, providers.Change{Action: providers.Delete, Item: DropInsKey + "/" + filepath.Base(p), Key: p, Before: p + " (pruned)", Data: op{kind: opRemoveDropIn, path: p}})
		reload = true
		dropInChanged[unitOfDropIn(p)] = true
	}
	if reload && o.Live {
		out = append(out, providers.Change{Action: providers.Update, Item: "daemon-reload", After: "reload systemd's unit files", Data: op{kind: opReload, live: true}})
	}
	for _, name := range sortedKeys(s.Units) {
		u, st := s.Units[name], o.Units[name]
		if st == nil {
			return nil, fmt.Errorf("plan services: item %q was not observed", name)
		}
		cs, err := planUnit(name, u, st, o, dropInChanged[u.Unit])
		if err != nil {
			return nil, err
		}
		out = append(out, cs...)
	}
	return out, nil
}

func unitOfDropIn(p string) string {
	return strings.TrimSuffix(filepath.Base(filepath.Dir(p)), ".d")
}

func planUnit(name string, u Unit, st *UnitState, o *Observed, dropInChanged bool) ([]providers.Change, error) {
	var out []providers.Change
	sysctl := func(verb string) op {
		return op{kind: opSystemctl, verb: verb, unit: u.Unit, live: o.Live}
	}
	change := func(verb, before, after string) {
		out = append(out, providers.Change{Action: providers.Update, Item: name, Before: u.Unit + " " + before, After: after, Data: sysctl(verb)})
	}
	enabled := st.Enabled
	masked := enabled == "masked" || enabled == "masked-runtime"
	wantMask := u.Masked != nil && *u.Masked
	switch {
	case wantMask && !masked:
		change("mask", enabled, "masked")
		enabled, masked = "masked", true
	case masked && (u.Masked != nil && !*u.Masked || u.Enabled != nil && *u.Enabled || u.State == "running"):
		// Unmask when masked: false, or when enabling or running needs it.
		change("unmask", enabled, "unmasked")
		enabled, masked = "disabled", false
	}
	if u.Enabled != nil && !masked {
		switch {
		case *u.Enabled && !enabledStates[enabled]:
			change("enable", enabled, "enabled")
		case !*u.Enabled && !disabledStates[enabled]:
			change("disable", enabled, "disabled")
		}
	}
	running := runningStates[st.Active]
	// What restartOn asks for: the files items whose fingerprint the unit
	// has not (re)started for.
	var changed []string
	record := map[string]string{}
	for _, f := range u.RestartOn {
		fp := st.RestartOn[f]
		switch fp {
		case "unknown":
			continue
		case "missing":
			return nil, providers.Invalid(providers.Pointer(name, "restartOn", fmt.Sprint(slicesIndex(u.RestartOn, f))),
				"the files section has no item %q", f)
		}
		record[f] = fp
		if st.Restarted[f] != fp {
			changed = append(changed, f)
		}
	}
	if len(changed) == 0 {
		record = nil
	}
	if !o.Live {
		if record != nil {
			out = append(out, providers.Change{Action: providers.Update, Item: name,
				Before: "restartOn " + describe(changed, st.Restarted, st.RestartOn),
				After:  "recorded (systemd is not running here: nothing to restart)",
				Data:   op{kind: opRecord, unit: u.Unit, record: record}})
		}
		return out, nil
	}
	// A start, stop or restart carries the fingerprints the unit then
	// runs with (or, stopped, will read at its next start).
	run := func(verb, before, after string) []providers.Change {
		d := sysctl(verb)
		d.record = record
		return append(out, providers.Change{Action: providers.Update, Item: name, Before: u.Unit + " " + before, After: after, Data: d})
	}
	switch {
	case u.State == "running" && !running:
		return run("start", st.Active, "running"), nil
	case u.State == "stopped" && running:
		return run("stop", st.Active, "stopped"), nil
	case running && (len(changed) > 0 || dropInChanged):
		why := "drop-in changed"
		if len(changed) > 0 {
			why = "restartOn " + describe(changed, st.Restarted, st.RestartOn)
		}
		return run("restart", why, "restart"), nil
	case record != nil:
		out = append(out, providers.Change{Action: providers.Update, Item: name,
			Before: "restartOn " + describe(changed, st.Restarted, st.RestartOn),
			After:  "recorded (" + u.Unit + " is not running: its next start reads the new files)",
			Data:   op{kind: opRecord, unit: u.Unit, record: record}})
	}
	return out, nil
}

func slicesIndex(ss []string, s string) int {
	for i, x := range ss {
		if x == s {
			return i
		}
	}
	return -1
}

// describe renders the restartOn items that changed: "nginxConf
// sha256:ab… -> sha256:cd…".
func describe(changed []string, was, now map[string]string) string {
	parts := make([]string, len(changed))
	for i, f := range changed {
		parts[i] = fmt.Sprintf("files/%s %s→%s", f, short(was[f]), short(now[f]))
	}
	return strings.Join(parts, ", ")
}

// Apply implements providers.Provider.
func (p *Provider) Apply(ctx context.Context, env *providers.Env, c providers.Change) error {
	o, ok := c.Data.(op)
	if !ok {
		return fmt.Errorf("apply services/%s: not a change of this provider", c.Item)
	}
	if err := p.apply(ctx, env, o); err != nil {
		return fmt.Errorf("apply services/%s: %w", c.Item, err)
	}
	return nil
}

func (p *Provider) apply(ctx context.Context, env *providers.Env, o op) error {
	switch o.kind {
	case opWriteDropIn, opRemoveDropIn:
		root, err := env.OpenRoot()
		if err != nil {
			return err
		}
		defer root.Close()
		rel := strings.TrimPrefix(o.path, "/")
		if o.kind == opRemoveDropIn {
			if err := root.Remove(rel); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
			return nil
		}
		cur, err := root.ReadFileIfExists(rel)
		if err == nil && cur != nil && string(cur) == o.content {
			return nil
		}
		return root.WriteFileAtomic(rel, []byte(o.content), providers.FileMeta{Mode: 0o644})
	case opReload:
		_, err := env.Runner.Run(ctx, "systemctl", "daemon-reload")
		return err
	case opSystemctl:
		args := []string{o.verb, "--", o.unit}
		if o.verb == "mask" && o.live {
			// Masked means it cannot run: stop it too.
			args = []string{"mask", "--now", "--", o.unit}
		}
		if _, err := env.Runner.Run(ctx, "systemctl", systemctl(env, o.live, args...)...); err != nil {
			return err
		}
	}
	if o.record != nil {
		return p.writeRecord(env.StateDir, o.unit, o.record)
	}
	return nil
}

// records maps unit → files item → fingerprint the unit last (re)started
// for.
type records map[string]map[string]string

func readRecords(stateDir string) (records, error) {
	if stateDir == "" {
		return records{}, nil
	}
	b, err := os.ReadFile(filepath.Join(stateDir, RecordFile))
	if errors.Is(err, fs.ErrNotExist) {
		return records{}, nil
	}
	if err != nil {
		return nil, err
	}
	r := records{}
	if err := json.Unmarshal(b, &r); err != nil {
		// A damaged record restarts units once more; it never blocks.
		return records{}, nil
	}
	return r, nil
}

func (p *Provider) writeRecord(stateDir, unit string, rec map[string]string) error {
	if stateDir == "" {
		return errors.New("no state directory to remember restartOn fingerprints in")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return err
	}
	r, err := readRecords(stateDir)
	if err != nil {
		return err
	}
	if r[unit] == nil {
		r[unit] = map[string]string{}
	}
	for k, v := range rec {
		r[unit][k] = v
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(stateDir, RecordFile), append(b, '\n'), 0o600)
}

// CloudScope implements providers.CloudScoper: a twin item whose unit the
// rules forbid fails at its unit (or its item, when the unit is implied);
// a drop-in from the twin fails unless the rules are privileged, and
// then its unit is checked too. Pure.
func (*Provider) CloudScope(rules providers.ScopeRules, twin json.RawMessage) []providers.FieldError {
	var section map[string]json.RawMessage
	if json.Unmarshal(twin, &section) != nil {
		return nil
	}
	var out []providers.FieldError
	for _, name := range sortedKeys(section) {
		if providers.ReservedKeys[name] {
			continue
		}
		if name == DropInsKey {
			var ds map[string]struct {
				Unit string `json:"unit"`
			}
			if json.Unmarshal(section[name], &ds) != nil {
				continue
			}
			for _, dn := range sortedKeys(ds) {
				if !rules.Privileged {
					out = append(out, providers.FieldError{Pointer: providers.Pointer(DropInsKey, dn),
						Message: "the cloud scope keeps the twin from writing unit drop-ins (ExecStart= runs code as root) unless cloud.services.privileged is set; only local policy may"})
					continue
				}
				if why, no := rules.Forbids(ds[dn].Unit, '/'); no {
					out = append(out, providers.FieldError{Pointer: providers.Pointer(DropInsKey, dn, "unit"), Message: why})
				}
			}
			continue
		}
		var it struct {
			Unit string `json:"unit"`
		}
		if json.Unmarshal(section[name], &it) != nil {
			continue
		}
		ptr := providers.Pointer(name, "unit")
		if it.Unit == "" {
			it.Unit, ptr = name+".service", providers.Pointer(name)
		}
		if why, no := rules.Forbids(it.Unit, '/'); no {
			out = append(out, providers.FieldError{Pointer: ptr, Message: why})
		}
	}
	return out
}

// WatchPaths implements providers.PathWatcher: the local unit directory,
// where enabling, masking and drop-ins live.
func (*Provider) WatchPaths(env *providers.Env, spec providers.Spec) []string {
	return []string{env.HostPath(UnitDir)}
}
