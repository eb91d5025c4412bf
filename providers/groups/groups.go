// Package groups provides the "groups" section: local groups of the root,
// created, changed and deleted through the shadow tools (groupadd,
// groupmod, gpasswd, groupdel with --root), never by editing etc/group by
// hand. State is read by parsing <root>/etc/group and etc/passwd.
//
//	"groups": { "docker": { "gid": 2000, "members": ["alice"] } }
//
// The item name is the group name unless the item sets name (for names
// with a '.', which twin keys cannot hold). members, when given, is the
// exact list of supplementary members; a member that is not a user of the
// root yet is reported as pending and added once it exists (the section
// watches etc/passwd), so that groups, which users depends on, never
// waits for users.
package groups

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/twinlet/twinlet/internal/accounts"
	"github.com/twinlet/twinlet/providers"
)

// ID is the section id.
const ID = "groups"

func init() {
	providers.Register(providers.Info{ID: ID, Kind: providers.Collection, New: New, CloudDeny: accounts.CloudDeny()})
}

// New returns the groups provider.
func New() providers.Provider { return Provider{} }

// Provider implements the groups section.
type Provider struct{}

// Item is one desired group.
type Item struct {
	Name string
	// GID is the wanted gid; -1 lets groupadd choose and leaves it alone.
	GID int
	// Members is the exact member list; nil leaves members alone.
	Members []string
	System  bool
	Absent  bool
}

// Spec is the decoded section.
type Spec struct {
	Items map[string]Item
	Prune bool
}

// ItemState is what the provider observed for one item.
type ItemState struct {
	Name    string   `json:"name"`
	Present bool     `json:"present"`
	GID     *int     `json:"gid,omitempty"`
	Members []string `json:"members,omitempty"`
	// Pending are desired members that are not users of the root yet.
	Pending []string `json:"pendingMembers,omitempty"`
	// Problem is a located conflict with the root (a gid another group
	// has), turned into an *InvalidError by Plan.
	problem *providers.FieldError
	members []string // desired members that exist, in desired order
}

// Observed is the observation; it marshals as an object keyed by item.
type Observed struct {
	Items    map[string]*ItemState
	prunable []string
}

// MarshalJSON reports the items only.
func (o *Observed) MarshalJSON() ([]byte, error) { return json.Marshal(o.Items) }

var itemNameRE = regexp.MustCompile(`^[^.$ \x00-\x1f\x7f]+$`)

// Decode implements providers.Provider.
func (Provider) Decode(env *providers.Env, raw json.RawMessage) (providers.Spec, error) {
	errs := &providers.InvalidError{}
	col := providers.SplitCollection(raw, errs)
	spec := Spec{Items: map[string]Item{}, Prune: col.Prune}
	byName, byGID := map[string]string{}, map[int]string{}
	for _, key := range col.Names {
		if !itemNameRE.MatchString(key) {
			errs.Add(providers.Pointer(key), "item names must not contain '.', '$', spaces or control characters")
			continue
		}
		var in struct {
			Name    string    `json:"name"`
			GID     *int      `json:"gid"`
			Members *[]string `json:"members"`
			System  bool      `json:"system"`
			Ensure  string    `json:"ensure"`
		}
		dec := json.NewDecoder(bytes.NewReader(col.Items[key]))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&in); err != nil {
			errs.Add(providers.Pointer(key), "%v", err)
			continue
		}
		it := Item{Name: in.Name, GID: -1, System: in.System}
		field := "name"
		if it.Name == "" {
			it.Name, field = key, ""
		}
		if err := accounts.CheckName(it.Name); err != nil {
			errs.Add(providers.Pointer(key, field), "%v", err)
		} else if other, dup := byName[it.Name]; dup {
			errs.Add(providers.Pointer(key, field), "group %s is also item %q", it.Name, other)
		} else {
			byName[it.Name] = key
		}
		if in.GID != nil {
			switch other, dup := byGID[*in.GID]; {
			case *in.GID < 0 || *in.GID > 2147483647 || *in.GID == 65535:
				errs.Add(providers.Pointer(key, "gid"), "must be 0 to 2147483647, not 65535 (the 16-bit -1)")
			case dup:
				errs.Add(providers.Pointer(key, "gid"), "gid %d is also item %q's", *in.GID, other)
			default:
				byGID[*in.GID] = key
				it.GID = *in.GID
			}
		}
		if in.Members != nil {
			it.Members = []string{}
			seen := map[string]bool{}
			for i, m := range *in.Members {
				if err := accounts.CheckName(m); err != nil {
					errs.Add(providers.Pointer(key, "members", strconv.Itoa(i)), "%v", err)
				} else if seen[m] {
					errs.Add(providers.Pointer(key, "members", strconv.Itoa(i)), "%s is listed twice", m)
				}
				seen[m] = true
				it.Members = append(it.Members, m)
			}
		}
		switch in.Ensure {
		case "", "present":
		case "absent":
			it.Absent = true
		default:
			errs.Add(providers.Pointer(key, "ensure"), "must be present or absent")
		}
		spec.Items[key] = it
	}
	if err := errs.OrNil(); err != nil {
		return nil, err
	}
	return spec, nil
}

// Observe implements providers.Provider.
func (Provider) Observe(ctx context.Context, env *providers.Env, spec providers.Spec) (providers.Observed, error) {
	s := spec.(Spec)
	root, err := env.OpenRoot()
	if err != nil {
		return nil, fmt.Errorf("observe groups: %w", err)
	}
	defer root.Close()
	db, err := accounts.Read(root, false)
	if err != nil {
		return nil, fmt.Errorf("observe groups: %w", err)
	}
	o := &Observed{Items: map[string]*ItemState{}}
	for key, it := range s.Items {
		st := &ItemState{Name: it.Name}
		if g := db.Group(it.Name); g != nil {
			gid := g.GID
			st.Present, st.GID, st.Members = true, &gid, g.Members
		}
		if !it.Absent && it.GID >= 0 {
			if g := db.GroupByGID(it.GID); g != nil && g.Name != it.Name {
				st.problem = &providers.FieldError{Pointer: providers.Pointer(key, "gid"), Message: fmt.Sprintf("gid %d belongs to group %s on the device", it.GID, g.Name)}
			}
		}
		if it.Members != nil {
			st.members = []string{}
			for _, m := range it.Members {
				if db.User(m) == nil {
					st.Pending = append(st.Pending, m)
				} else {
					st.members = append(st.members, m)
				}
			}
		}
		o.Items[key] = st
	}
	if s.Prune {
		desired := map[string]bool{}
		for _, it := range s.Items {
			desired[it.Name] = true
		}
		for name := range env.Managed {
			if db.Group(name) != nil && !desired[name] {
				o.prunable = append(o.prunable, name)
			}
		}
		sort.Strings(o.prunable)
	}
	return o, nil
}

type op struct {
	name    string
	create  bool
	del     bool
	gid     int
	system  bool
	members []string // nil: leave alone
}

// Plan implements providers.Provider.
func (Provider) Plan(spec providers.Spec, observed providers.Observed) ([]providers.Change, error) {
	s, o := spec.(Spec), observed.(*Observed)
	keys := make([]string, 0, len(s.Items))
	for k := range s.Items {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	errs := &providers.InvalidError{}
	var out []providers.Change
	for _, key := range keys {
		it, st := s.Items[key], o.Items[key]
		if st == nil {
			return nil, fmt.Errorf("plan groups: item %q was not observed", key)
		}
		if st.problem != nil {
			errs.Errors = append(errs.Errors, *st.problem)
			continue
		}
		switch {
		case it.Absent && st.Present:
			out = append(out, providers.Change{Action: providers.Delete, Item: key, Key: it.Name, Before: describe(*st.GID, st.Members), Data: op{name: it.Name, del: true}})
		case it.Absent:
		case !st.Present:
			after := "group " + it.Name
			if it.GID >= 0 {
				after += " gid " + strconv.Itoa(it.GID)
			}
			if st.members != nil {
				after += " members " + list(st.members)
			}
			out = append(out, providers.Change{Action: providers.Create, Item: key, Key: it.Name, After: after, Data: op{name: it.Name, create: true, gid: it.GID, system: it.System, members: st.members}})
		default:
			var before, after []string
			d := op{name: it.Name, gid: -1}
			if it.GID >= 0 && it.GID != *st.GID {
				before, after = append(before, "gid "+strconv.Itoa(*st.GID)), append(after, "gid "+strconv.Itoa(it.GID))
				d.gid = it.GID
			}
			if st.members != nil && !sameSet(st.members, st.Members) {
				before, after = append(before, "members "+list(st.Members)), append(after, "members "+list(st.members))
				d.members = st.members
			}
			if len(after) > 0 {
				out = append(out, providers.Change{Action: providers.Update, Item: key, Before: strings.Join(before, ", "), After: strings.Join(after, ", "), Data: d})
			}
		}
	}
	if err := errs.OrNil(); err != nil {
		return nil, err
	}
	for _, name := range o.prunable {
		out = append(out, providers.Change{Action: providers.Delete, Item: name, Key: name, Before: "group " + name + " (pruned)", Data: op{name: name, del: true}})
	}
	return out, nil
}

func describe(gid int, members []string) string {
	return "gid " + strconv.Itoa(gid) + " members " + list(members)
}

func list(ms []string) string {
	if len(ms) == 0 {
		return "(none)"
	}
	return strings.Join(ms, ",")
}

func sameSet(a, b []string) bool {
	x, y := slices.Clone(a), slices.Clone(b)
	slices.Sort(x)
	slices.Sort(y)
	return slices.Equal(x, y)
}

// Apply implements providers.Provider. It re-reads the root and does only
// what is still missing, so that applying twice, or after a crash, is
// harmless.
func (Provider) Apply(ctx context.Context, env *providers.Env, c providers.Change) error {
	d, ok := c.Data.(op)
	if !ok {
		return fmt.Errorf("apply groups/%s: not a change of this provider", c.Item)
	}
	if err := apply(ctx, env, d); err != nil {
		return fmt.Errorf("apply groups/%s: %w", c.Item, err)
	}
	return nil
}

func apply(ctx context.Context, env *providers.Env, d op) error {
	db, err := read(env)
	if err != nil {
		return err
	}
	g := db.Group(d.name)
	if d.del {
		if g == nil {
			return nil
		}
		return accounts.Run(ctx, env, "groupdel", d.name)
	}
	if g == nil {
		if !d.create {
			return fmt.Errorf("group %s no longer exists", d.name)
		}
		args := []string{}
		if d.gid >= 0 {
			args = append(args, "--gid", strconv.Itoa(d.gid))
		}
		if d.system {
			args = append(args, "--system")
		}
		if err := accounts.Run(ctx, env, "groupadd", append(args, "--", d.name)...); err != nil {
			return err
		}
		if db, err = read(env); err != nil {
			return err
		}
		if g = db.Group(d.name); g == nil {
			return fmt.Errorf("groupadd succeeded but group %s is not in /etc/group", d.name)
		}
	}
	if d.gid >= 0 && g.GID != d.gid {
		if err := accounts.Run(ctx, env, "groupmod", "--gid", strconv.Itoa(d.gid), "--", d.name); err != nil {
			return err
		}
	}
	if d.members != nil && !sameSet(d.members, g.Members) {
		if err := accounts.Run(ctx, env, "gpasswd", "-M", strings.Join(d.members, ","), d.name); err != nil {
			return err
		}
	}
	return nil
}

func read(env *providers.Env) (*accounts.DB, error) {
	root, err := env.OpenRoot()
	if err != nil {
		return nil, err
	}
	defer root.Close()
	return accounts.Read(root, false)
}

// CloudScope implements providers.CloudScoper. The twin may not manage a
// group whose name a plain Deny glob matches (or that no plain Allow glob
// matches), nor, unless the scope is Privileged, a privileged group (a
// "%" entry: root, sudo, wheel, adm, shadow, disk by default) or gid 0.
func (Provider) CloudScope(rules providers.ScopeRules, twin json.RawMessage) []providers.FieldError {
	var section map[string]json.RawMessage
	if json.Unmarshal(twin, &section) != nil {
		return nil
	}
	keys := make([]string, 0, len(section))
	for k := range section {
		if !providers.ReservedKeys[k] {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	var out []providers.FieldError
	for _, key := range keys {
		var in struct {
			Name string `json:"name"`
			GID  *int   `json:"gid"`
		}
		if json.Unmarshal(section[key], &in) != nil {
			continue
		}
		name, field := in.Name, "name"
		if name == "" {
			name, field = key, ""
		}
		if why, no := accounts.ScopeCheck(rules, name, false); no {
			out = append(out, providers.FieldError{Pointer: providers.Pointer(key, field), Message: why})
		} else if why, no := accounts.ScopeCheck(rules, name, true); no {
			out = append(out, providers.FieldError{Pointer: providers.Pointer(key, field), Message: why})
		}
		if in.GID != nil && *in.GID == 0 && !rules.Privileged {
			out = append(out, providers.FieldError{Pointer: providers.Pointer(key, "gid"), Message: "the cloud scope keeps the twin from setting gid 0 unless it is privileged; only local policy may"})
		}
	}
	return out
}

// WatchPaths implements providers.PathWatcher: the account databases, so
// that a member that becomes a user, or a hand edit, is seen at once.
func (Provider) WatchPaths(env *providers.Env, spec providers.Spec) []string {
	return accounts.WatchPaths(env)
}
