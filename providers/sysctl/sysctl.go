// Package sysctl provides the "sysctl" section: kernel parameters persisted
// in <root>/etc/sysctl.d/90-twinlet.conf and, when the root is the running
// system, set at runtime through /proc/sys.
//
// The section is a collection of named items, because twin keys cannot
// contain '.':
//
//	"sysctl": { "ipForward": { "key": "net.ipv4.ip_forward", "value": "1" } }
//
// twinlet owns the whole file: it is rewritten with a header and one
// "key = value" line per key, sorted. Keys that left the desired state stay
// in the file unless the section sets prune: true and twinlet added them.
// Runtime values of deleted keys are not reverted (their default is not
// known); they take effect at the next boot.
package sysctl

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"regexp"
	"sort"
	"strings"

	"github.com/twinlet/twinlet/providers"
)

// ID is the section id.
const ID = "sysctl"

// ConfPath is the device path of the file twinlet writes.
const ConfPath = "/etc/sysctl.d/90-twinlet.conf"

const header = "# Managed by twinlet (section \"sysctl\"): edits are overwritten.\n"

// CloudDeny are the keys the twin may not set by default: each names a
// program the kernel runs as root (a core dump handler, the module loader,
// the hotplug helper, the poweroff command, binfmt_misc interpreters). The
// agent config's cloud.sysctl replaces the whole list. Globs as in
// providers.MatchGlob, with '.' separating components, on canonical keys.
var CloudDeny = []string{"kernel.core_pattern", "kernel.modprobe", "kernel.hotplug", "kernel.poweroff_cmd", "fs.binfmt_misc.*"}

func init() {
	providers.Register(providers.Info{ID: ID, Kind: providers.Collection, New: New, CloudDeny: CloudDeny})
}

// New returns the sysctl provider.
func New() providers.Provider { return Provider{} }

// Provider implements the sysctl section.
type Provider struct{}

// Item is one desired kernel parameter.
type Item struct {
	// Key is the canonical, dot-separated key ("net.ipv4.ip_forward");
	// a '.' inside a component (an interface name) is written as '/'.
	Key string
	// Value is the value, whitespace-normalised.
	Value string
	// Absent is true for ensure: absent.
	Absent bool
}

// Spec is the decoded section.
type Spec struct {
	Items map[string]Item
	Prune bool
}

// ItemState is what the provider observed for one item.
type ItemState struct {
	// Key is the canonical key.
	Key string `json:"key"`
	// Value is the value in the persisted file; empty when the key is not
	// in it.
	Value string `json:"value,omitempty"`
	// Runtime is the running kernel's value, read only when the root is
	// the running system.
	Runtime *string `json:"runtime,omitempty"`

	inFile bool
}

// Observed is the provider's observation; it marshals to a JSON object
// keyed by item name.
type Observed struct {
	Items map[string]*ItemState
	// prunable are keys twinlet added that left the desired state and are
	// still in the file; filled only when the spec prunes.
	prunable []string
}

// MarshalJSON reports the items only.
func (o *Observed) MarshalJSON() ([]byte, error) { return json.Marshal(o.Items) }

var (
	componentRE = regexp.MustCompile(`^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$`)
	itemNameRE  = regexp.MustCompile(`^[^.$ \x00-\x1f\x7f]+$`)
)

// canonical validates a sysctl key as sysctl(8) reads it and returns it in
// canonical form: components separated by '.', a '.' inside a component
// written as '/'. When the first separator of key is '/', '/' separates
// components and '.' is literal. Components are letters, digits, '_' and
// '-', with single inner dots only, so no component can be "." or "..".
func canonical(key string) (string, error) {
	if key == "" || len(key) > 256 {
		return "", errors.New("must be 1 to 256 characters")
	}
	comps := components(key)
	for _, c := range comps {
		if !componentRE.MatchString(c) {
			return "", fmt.Errorf("%q is not a sysctl key (components of letters, digits, '_' and '-' separated by '.', like net.ipv4.ip_forward)", key)
		}
	}
	for i, c := range comps {
		comps[i] = strings.ReplaceAll(c, ".", "/")
	}
	return strings.Join(comps, "."), nil
}

// components splits a key into its path components under /proc/sys.
func components(key string) []string {
	if i := strings.IndexAny(key, "./"); i >= 0 && key[i] == '/' {
		return strings.Split(key, "/")
	}
	parts := strings.Split(key, ".")
	for i, p := range parts {
		parts[i] = strings.ReplaceAll(p, "/", ".")
	}
	return parts
}

// procRel is the name, relative to the root, of a canonical key under
// /proc/sys.
func procRel(key string) string {
	return "proc/sys/" + strings.Join(components(key), "/")
}

// normalize joins the fields of a value with single spaces, as a
// comparison of "4096 87380" with the kernel's "4096\t87380" needs.
func normalize(v string) string { return strings.Join(strings.Fields(v), " ") }

func ptr(item, field string) string { return providers.Pointer(item, field) }

// Decode implements providers.Provider.
func (Provider) Decode(env *providers.Env, raw json.RawMessage) (providers.Spec, error) {
	errs := &providers.InvalidError{}
	col := providers.SplitCollection(raw, errs)
	spec := Spec{Items: map[string]Item{}, Prune: col.Prune}
	names, section := col.Names, col.Items
	seen := map[string]string{} // canonical key → item
	for _, name := range names {
		if !itemNameRE.MatchString(name) {
			errs.Add(ptr(name, ""), "item names must not contain '.', '$', spaces or control characters")
			continue
		}
		var in struct {
			Key    string          `json:"key"`
			Value  json.RawMessage `json:"value"`
			Ensure string          `json:"ensure"`
		}
		dec := json.NewDecoder(bytes.NewReader(section[name]))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&in); err != nil {
			errs.Add(ptr(name, ""), "%v", err)
			continue
		}
		v, ok := scalar(in.Value)
		if !ok {
			errs.Add(ptr(name, "value"), "must be a string or a number")
		}
		var it Item
		key, err := canonical(in.Key)
		if err != nil {
			errs.Add(ptr(name, "key"), "%v", err)
		} else if other, dup := seen[key]; dup {
			errs.Add(ptr(name, "key"), "key %s is also set by item %q", key, other)
		} else {
			seen[key] = name
		}
		it.Key = key
		switch in.Ensure {
		case "", "present":
		case "absent":
			it.Absent = true
		default:
			errs.Add(ptr(name, "ensure"), "must be present or absent")
		}
		switch {
		case it.Absent, !ok:
		case strings.TrimSpace(v) == "":
			errs.Add(ptr(name, "value"), "a value is required")
		case len(v) > 4096:
			errs.Add(ptr(name, "value"), "longer than 4096 bytes")
		case strings.ContainsFunc(v, func(r rune) bool { return r < 0x20 && r != '\t' || r == 0x7f }):
			errs.Add(ptr(name, "value"), "must be a single line without control characters")
		}
		it.Value = normalize(v)
		spec.Items[name] = it
	}
	if err := errs.OrNil(); err != nil {
		return nil, err
	}
	return spec, nil
}

// scalar returns a JSON string's text or a JSON number's literal, so that
// YAML's "value: 1" works as well as "value: \"1\"".
func scalar(raw json.RawMessage) (string, bool) {
	if len(raw) == 0 {
		return "", true
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return s, true
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return "", false
	}
	if n, ok := v.(json.Number); ok {
		return n.String(), true
	}
	return "", false
}

// Observe implements providers.Provider.
func (Provider) Observe(ctx context.Context, env *providers.Env, spec providers.Spec) (providers.Observed, error) {
	s := spec.(Spec)
	root, err := env.OpenRoot()
	if err != nil {
		return nil, fmt.Errorf("observe sysctl: %w", err)
	}
	defer root.Close()
	file, err := readConf(root)
	if err != nil {
		return nil, fmt.Errorf("observe sysctl: %w", err)
	}
	o := &Observed{Items: map[string]*ItemState{}}
	desired := map[string]bool{}
	for name, it := range s.Items {
		st := &ItemState{Key: it.Key}
		st.Value, st.inFile = file[it.Key]
		if env.IsHostRoot() && !it.Absent {
			rt, err := readRuntime(root, it.Key)
			if err != nil {
				return nil, fmt.Errorf("observe sysctl/%s: %w", name, err)
			}
			st.Runtime = &rt
		}
		o.Items[name] = st
		desired[it.Key] = true
	}
	if s.Prune {
		for key := range env.Managed {
			if _, inFile := file[key]; inFile && !desired[key] {
				o.prunable = append(o.prunable, key)
			}
		}
		sort.Strings(o.prunable)
	}
	return o, nil
}

// readRuntime returns the running kernel's value of key, "" when the
// kernel has no such parameter.
func readRuntime(root *providers.Dir, key string) (string, error) {
	b, err := root.ReadFile(procRel(key))
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	return normalize(string(b)), nil
}

// Plan implements providers.Provider.
func (Provider) Plan(spec providers.Spec, observed providers.Observed) ([]providers.Change, error) {
	s, o := spec.(Spec), observed.(*Observed)
	names := make([]string, 0, len(s.Items))
	for name := range s.Items {
		names = append(names, name)
	}
	sort.Slice(names, func(i, j int) bool { return s.Items[names[i]].Key < s.Items[names[j]].Key })
	var out []providers.Change
	for _, name := range names {
		it, st := s.Items[name], o.Items[name]
		if st == nil {
			return nil, fmt.Errorf("plan sysctl: item %q was not observed", name)
		}
		switch {
		case it.Absent && st.inFile:
			out = append(out, providers.Change{Action: providers.Delete, Item: name, Key: it.Key, Before: it.Key + " = " + st.Value, Data: op{key: it.Key, del: true}})
		case it.Absent:
		case !st.inFile:
			out = append(out, providers.Change{Action: providers.Create, Item: name, Key: it.Key, After: it.Key + " = " + it.Value, Data: op{key: it.Key, value: it.Value}})
		case st.Value != it.Value || st.Runtime != nil && *st.Runtime != it.Value:
			before := it.Key + " = " + st.Value
			if st.Runtime != nil && *st.Runtime != st.Value {
				before += " (running: " + *st.Runtime + ")"
			}
			out = append(out, providers.Change{Action: providers.Update, Item: name, Before: before, After: it.Key + " = " + it.Value, Data: op{key: it.Key, value: it.Value}})
		}
	}
	for _, key := range o.prunable {
		out = append(out, providers.Change{Action: providers.Delete, Item: key, Key: key, Before: key + " (pruned)", Data: op{key: key, del: true}})
	}
	return out, nil
}

type op struct {
	key, value string
	del        bool
}

// Apply implements providers.Provider.
func (Provider) Apply(ctx context.Context, env *providers.Env, c providers.Change) error {
	o, ok := c.Data.(op)
	if !ok {
		return fmt.Errorf("apply sysctl/%s: not a change of this provider", c.Item)
	}
	if err := apply(env, o); err != nil {
		return fmt.Errorf("apply sysctl/%s: %w", c.Item, err)
	}
	return nil
}

func apply(env *providers.Env, o op) error {
	root, err := env.OpenRoot()
	if err != nil {
		return err
	}
	defer root.Close()
	file, err := readConf(root)
	if err != nil {
		return err
	}
	cur, present := file[o.key]
	if o.del {
		delete(file, o.key)
	} else {
		file[o.key] = o.value
	}
	if o.del && present || !o.del && cur != o.value {
		if err := root.WriteFileAtomic(strings.TrimPrefix(ConfPath, "/"), render(file), providers.FileMeta{Mode: 0o644}); err != nil {
			return err
		}
	}
	if o.del || !env.IsHostRoot() {
		return nil
	}
	f, err := root.OpenFile(procRel(o.key), os.O_WRONLY, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("the running kernel has no parameter %s", o.key)
	}
	if err != nil {
		return err
	}
	if _, err := f.WriteString(o.value); err != nil {
		f.Close()
		return fmt.Errorf("set %s at runtime: %w", o.key, err)
	}
	return f.Close()
}

// readConf parses the persisted file into canonical key → value. Blank
// lines and comments are skipped; keys that are not valid are ignored.
func readConf(root *providers.Dir) (map[string]string, error) {
	b, err := root.ReadFileIfExists(strings.TrimPrefix(ConfPath, "/"))
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		key, err := canonical(strings.TrimPrefix(strings.TrimSpace(k), "-"))
		if err != nil {
			continue
		}
		out[key] = normalize(v)
	}
	return out, nil
}

// render writes the file: the header, then "key = value" sorted by key.
func render(file map[string]string) []byte {
	keys := make([]string, 0, len(file))
	for k := range file {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString(header)
	for _, k := range keys {
		fmt.Fprintf(&b, "%s = %s\n", k, file[k])
	}
	return []byte(b.String())
}

// CloudScope implements providers.CloudScoper: an item of the twin whose
// key (in canonical form, so "kernel/core_pattern" is kernel.core_pattern)
// the rules forbid fails with its key's pointer. Pure; keys that are not
// valid are left to validation.
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
		var it struct {
			Key string `json:"key"`
		}
		if json.Unmarshal(section[name], &it) != nil {
			continue
		}
		key, err := canonical(it.Key)
		if err != nil {
			continue
		}
		if why, no := rules.Forbids(key, '.'); no {
			out = append(out, providers.FieldError{Pointer: ptr(name, "key"), Message: why})
		}
	}
	return out
}

// WatchPaths implements providers.PathWatcher: the host path of the
// persisted file (for watches only).
func (Provider) WatchPaths(env *providers.Env, spec providers.Spec) []string {
	return []string{env.HostPath(ConfPath)}
}
