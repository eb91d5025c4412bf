// Package users provides the "users" section: local users of the root,
// created, changed and deleted through the shadow tools (useradd,
// usermod, chpasswd, userdel with --root), never by editing etc/passwd by
// hand, and their SSH authorized keys. State is read by parsing
// <root>/etc/passwd, etc/group and etc/shadow.
//
//	"users": { "alice": { "uid": 1001, "groups": ["docker"], "shell": "/bin/bash",
//	                      "authorizedKeys": ["ssh-ed25519 AAAA… alice@laptop"] } }
//
// The section depends on groups, so that a primary or supplementary group
// that the groups section creates exists before useradd names it.
//
// No password ever comes from the twin: only local policy may set
// passwordHash (the cloud scope refuses it from the twin whatever the
// rules), and the reported state says only passwordSet.
package users

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"path"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/twinlet/twinlet/internal/accounts"
	"github.com/twinlet/twinlet/providers"
)

// ID is the section id.
const ID = "users"

func init() {
	providers.Register(providers.Info{ID: ID, Kind: providers.Collection, New: New,
		DependsOn: []string{"groups"}, CloudDeny: accounts.CloudDeny()})
}

// New returns the users provider.
func New() providers.Provider { return Provider{} }

// Provider implements the users section.
type Provider struct{}

// secret holds a password hash. It never prints nor marshals: it is a
// pointer, so that even fmt's %+v of a struct holding it shows an address.
type secret = *hidden

type hidden struct{ v string }

func newSecret(v string) secret { return &hidden{v: v} }

func (*hidden) String() string               { return "(hidden)" }
func (*hidden) GoString() string             { return "(hidden)" }
func (*hidden) MarshalJSON() ([]byte, error) { return []byte(`"(hidden)"`), nil }
func (h *hidden) reveal() string             { return h.v }
func (h *hidden) set() bool                  { return h != nil }
func (h *hidden) matches(current string) bool {
	return h != nil && h.v == current
}

// Item is one desired user.
type Item struct {
	Name string
	// UID is the wanted uid; -1 lets useradd choose and leaves it alone.
	UID int
	// PrimaryGroup, Shell and Home are left alone when empty.
	PrimaryGroup, Shell, Home string
	// Groups is the exact list of supplementary groups; nil leaves them.
	Groups     []string
	CreateHome bool
	// createHomeSet is true when the item says createHome itself.
	createHomeSet bool
	System        bool
	Absent        bool
	// Keys are the authorized keys; nil leaves the file alone.
	Keys []string
	// Hash is the password hash from local policy.
	Hash secret
}

// Spec is the decoded section.
type Spec struct {
	Items map[string]Item
	Prune bool
}

// ItemState is what the provider observed for one user. It never holds a
// password hash.
type ItemState struct {
	Name         string   `json:"name"`
	Present      bool     `json:"present"`
	UID          *int     `json:"uid,omitempty"`
	PrimaryGroup string   `json:"primaryGroup,omitempty"`
	Groups       []string `json:"groups,omitempty"`
	Shell        string   `json:"shell,omitempty"`
	Home         string   `json:"home,omitempty"`
	PasswordSet  *bool    `json:"passwordSet,omitempty"`
	// AuthorizedKeys counts the keys in ~/.ssh/authorized_keys, when the
	// section manages them and the file exists.
	AuthorizedKeys *int `json:"authorizedKeys,omitempty"`

	gid       int
	hashOK    bool
	keysOK    bool
	noHome    bool // the home directory is missing (reported when createHome)
	problems  []providers.FieldError
	groupsSet bool
}

// Observed is the observation; it marshals as an object keyed by item.
type Observed struct {
	Items    map[string]*ItemState
	prunable []string
}

// MarshalJSON reports the items only.
func (o *Observed) MarshalJSON() ([]byte, error) { return json.Marshal(o.Items) }

var (
	itemNameRE = regexp.MustCompile(`^[^.$ \x00-\x1f\x7f]+$`)
	hashRE     = regexp.MustCompile(`^(!|\*|\$[a-z0-9]+\$[A-Za-z0-9./$=,+-]+)$`)
)

// alwaysShells may be a user's shell without being in etc/shells: they
// refuse logins, and Debian does not list them there.
var alwaysShells = map[string]bool{"/usr/sbin/nologin": true, "/sbin/nologin": true, "/bin/false": true, "/usr/bin/false": true}

func checkPath(p string) error {
	switch {
	case !path.IsAbs(p):
		return fmt.Errorf("%q is not an absolute path", p)
	case path.Clean(p) != p:
		return fmt.Errorf("%q is not clean (want %s)", p, path.Clean(p))
	case strings.ContainsFunc(p, func(r rune) bool { return r == ':' || r < 0x20 || r == 0x7f }):
		return fmt.Errorf("%q holds ':' or a control character", p)
	}
	return nil
}

// Decode implements providers.Provider.
func (Provider) Decode(env *providers.Env, raw json.RawMessage) (providers.Spec, error) {
	errs := &providers.InvalidError{}
	col := providers.SplitCollection(raw, errs)
	spec := Spec{Items: map[string]Item{}, Prune: col.Prune}
	byName, byUID := map[string]string{}, map[int]string{}
	for _, key := range col.Names {
		ptr := func(f ...string) string { return providers.Pointer(append([]string{key}, f...)...) }
		if !itemNameRE.MatchString(key) {
			errs.Add(ptr(), "item names must not contain '.', '$', spaces or control characters")
			continue
		}
		var in struct {
			Name           string    `json:"name"`
			UID            *int      `json:"uid"`
			PrimaryGroup   string    `json:"primaryGroup"`
			Groups         *[]string `json:"groups"`
			Shell          string    `json:"shell"`
			Home           string    `json:"home"`
			CreateHome     *bool     `json:"createHome"`
			System         bool      `json:"system"`
			Ensure         string    `json:"ensure"`
			AuthorizedKeys *[]string `json:"authorizedKeys"`
			PasswordHash   *string   `json:"passwordHash"`
		}
		dec := json.NewDecoder(bytes.NewReader(col.Items[key]))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&in); err != nil {
			errs.Add(ptr(), "%v", err)
			continue
		}
		it := Item{Name: in.Name, UID: -1, PrimaryGroup: in.PrimaryGroup, Shell: in.Shell, Home: in.Home, System: in.System, CreateHome: !in.System}
		if in.CreateHome != nil {
			it.CreateHome, it.createHomeSet = *in.CreateHome, true
		}
		nameAt := ptr("name")
		if it.Name == "" {
			it.Name, nameAt = key, ptr()
		}
		if err := accounts.CheckName(it.Name); err != nil {
			errs.Add(nameAt, "%v", err)
		} else if other, dup := byName[it.Name]; dup {
			errs.Add(nameAt, "user %s is also item %q", it.Name, other)
		} else {
			byName[it.Name] = key
		}
		if in.UID != nil {
			switch other, dup := byUID[*in.UID]; {
			case *in.UID < 0 || *in.UID > 2147483647 || *in.UID == 65535:
				errs.Add(ptr("uid"), "must be 0 to 2147483647, not 65535 (the 16-bit -1)")
			case dup:
				errs.Add(ptr("uid"), "uid %d is also item %q's", *in.UID, other)
			default:
				byUID[*in.UID] = key
				it.UID = *in.UID
			}
		}
		if it.PrimaryGroup != "" {
			if err := accounts.CheckName(it.PrimaryGroup); err != nil {
				errs.Add(ptr("primaryGroup"), "%v", err)
			}
		}
		if in.Groups != nil {
			it.Groups = []string{}
			seen := map[string]bool{}
			for i, g := range *in.Groups {
				if err := accounts.CheckName(g); err != nil {
					errs.Add(ptr("groups", strconv.Itoa(i)), "%v", err)
				} else if seen[g] {
					errs.Add(ptr("groups", strconv.Itoa(i)), "%s is listed twice", g)
				}
				seen[g] = true
				it.Groups = append(it.Groups, g)
			}
		}
		for field, p := range map[string]string{"shell": it.Shell, "home": it.Home} {
			if p != "" {
				if err := checkPath(p); err != nil {
					errs.Add(ptr(field), "%v", err)
				}
			}
		}
		if in.AuthorizedKeys != nil {
			it.Keys = []string{}
			for i, k := range *in.AuthorizedKeys {
				if err := checkKey(k); err != nil {
					errs.Add(ptr("authorizedKeys", strconv.Itoa(i)), "%v", err)
				}
				it.Keys = append(it.Keys, k)
			}
		}
		if in.PasswordHash != nil {
			// The message never repeats the value.
			if !hashRE.MatchString(*in.PasswordHash) {
				errs.Add(ptr("passwordHash"), "must be a crypt(3) hash such as $y$… or $6$…, or \"!\" to lock the password")
			}
			it.Hash = newSecret(*in.PasswordHash)
		}
		switch in.Ensure {
		case "", "present":
		case "absent":
			it.Absent = true
		default:
			errs.Add(ptr("ensure"), "must be present or absent")
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
		return nil, fmt.Errorf("observe users: %w", err)
	}
	defer root.Close()
	db, err := accounts.Read(root, true)
	if err != nil {
		return nil, fmt.Errorf("observe users: %w", err)
	}
	o := &Observed{Items: map[string]*ItemState{}}
	for key, it := range s.Items {
		st := &ItemState{Name: it.Name}
		u := db.User(it.Name)
		if u != nil {
			uid, pw := u.UID, u.PasswordOK
			st.Present, st.UID, st.gid, st.Shell, st.Home, st.PasswordSet = true, &uid, u.GID, u.Shell, u.Home, &pw
			st.PrimaryGroup = strconv.Itoa(u.GID)
			if g := db.GroupByGID(u.GID); g != nil {
				st.PrimaryGroup = g.Name
			}
			st.Groups, st.groupsSet = db.SupplementaryGroups(u.Name), true
			st.hashOK = !it.Hash.set() || it.Hash.matches(db.Hashes[u.Name])
		}
		if !it.Absent {
			if it.UID >= 0 {
				if other := db.UserByUID(it.UID); other != nil && other.Name != it.Name {
					st.problems = append(st.problems, providers.FieldError{Pointer: providers.Pointer(key, "uid"), Message: fmt.Sprintf("uid %d belongs to user %s on the device", it.UID, other.Name)})
				}
			}
			if it.Shell != "" && !alwaysShells[it.Shell] && !db.Shells[it.Shell] {
				msg := fmt.Sprintf("%s is not a login shell listed in /etc/shells", it.Shell)
				if db.Shells == nil {
					msg = fmt.Sprintf("%s cannot be checked: the root has no /etc/shells", it.Shell)
				}
				st.problems = append(st.problems, providers.FieldError{Pointer: providers.Pointer(key, "shell"), Message: msg})
			}
		}
		manageHome := it.CreateHome && (it.createHomeSet || env.Managed[it.Name])
		if u != nil && !it.Absent && (manageHome || it.Keys != nil) {
			home := u.Home
			if it.Home != "" {
				home = it.Home
			}
			hd, missing, err := openHome(root, home)
			if err != nil {
				return nil, fmt.Errorf("observe users/%s: home %s: %w", key, home, err)
			}
			// A missing home is made again for a user twinlet created,
			// or one whose item asks for createHome itself; never for a
			// user found on the device with a home such as /nonexistent.
			st.noHome = missing && manageHome
			if it.Keys != nil {
				ks, err := observeKeys(hd, u.UID, u.GID, renderKeys(it.Keys))
				if err != nil {
					hd.Close()
					return nil, fmt.Errorf("observe users/%s: authorized keys: %w", key, err)
				}
				st.keysOK = ks.inSync
				if ks.count >= 0 {
					n := ks.count
					st.AuthorizedKeys = &n
				}
			}
			if hd != nil {
				hd.Close()
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
			if db.User(name) != nil && !desired[name] {
				o.prunable = append(o.prunable, name)
			}
		}
		sort.Strings(o.prunable)
	}
	return o, nil
}

// account is the data of a change to the passwd entry.
type account struct {
	name        string
	del, create bool
	uid         int // -1: leave
	group       string
	groups      []string // nil: leave
	shell, home string
	createHome  bool
	system      bool
}

type password struct {
	name string
	hash secret
}

type homeDir struct {
	name string
	home string // "": the user's home
}

type keys struct {
	name string
	home string // "" : the user's home
	data []byte
}

// Plan implements providers.Provider. Conflicts with the root (a uid
// another user has, a shell not in /etc/shells) fail the whole plan as
// invalid before anything changes.
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
			return nil, fmt.Errorf("plan users: item %q was not observed", key)
		}
		if len(st.problems) > 0 {
			errs.Errors = append(errs.Errors, st.problems...)
			continue
		}
		out = append(out, planUser(key, it, st)...)
	}
	if err := errs.OrNil(); err != nil {
		return nil, err
	}
	for _, name := range o.prunable {
		out = append(out, providers.Change{Action: providers.Delete, Item: name, Key: name, Before: "user " + name + " (pruned)", Data: account{name: name, del: true}})
	}
	return out, nil
}

func planUser(key string, it Item, st *ItemState) []providers.Change {
	var out []providers.Change
	switch {
	case it.Absent && st.Present:
		return []providers.Change{{Action: providers.Delete, Item: key, Key: it.Name, Before: "user " + it.Name + " uid " + strconv.Itoa(*st.UID), Data: account{name: it.Name, del: true}}}
	case it.Absent:
		return nil
	case !st.Present:
		a := account{name: it.Name, create: true, uid: it.UID, group: it.PrimaryGroup, groups: it.Groups, shell: it.Shell, home: it.Home, createHome: it.CreateHome, system: it.System}
		out = append(out, providers.Change{Action: providers.Create, Item: key, Key: it.Name, After: describe(it), Data: a})
	default:
		a := account{name: it.Name, uid: -1}
		var before, after []string
		add := func(field, b, af string) {
			before, after = append(before, field+" "+b), append(after, field+" "+af)
		}
		if it.UID >= 0 && it.UID != *st.UID {
			add("uid", strconv.Itoa(*st.UID), strconv.Itoa(it.UID))
			a.uid = it.UID
		}
		if it.PrimaryGroup != "" && it.PrimaryGroup != st.PrimaryGroup {
			add("group", st.PrimaryGroup, it.PrimaryGroup)
			a.group = it.PrimaryGroup
		}
		if it.Groups != nil && !sameSet(it.Groups, st.Groups) {
			add("groups", list(st.Groups), list(it.Groups))
			a.groups = it.Groups
		}
		if it.Shell != "" && it.Shell != st.Shell {
			add("shell", st.Shell, it.Shell)
			a.shell = it.Shell
		}
		if it.Home != "" && it.Home != st.Home {
			add("home", st.Home, it.Home)
			a.home = it.Home
		}
		if len(after) > 0 {
			out = append(out, providers.Change{Action: providers.Update, Item: key, Before: strings.Join(before, ", "), After: strings.Join(after, ", "), Data: a})
		}
	}
	if st.Present && st.noHome {
		home := st.Home
		if it.Home != "" {
			home = it.Home
		}
		out = append(out, providers.Change{Action: providers.Create, Item: key + "/home", After: "directory " + home + " (0700)", Data: homeDir{name: it.Name, home: it.Home}})
	}
	if it.Hash.set() && (!st.Present || !st.hashOK) {
		before := "no password"
		if st.PasswordSet != nil && *st.PasswordSet {
			before = "another password hash"
		}
		out = append(out, providers.Change{Action: providers.Update, Item: key + "/passwordHash", Before: before, After: "the hash from local policy", Data: password{name: it.Name, hash: it.Hash}})
	}
	if it.Keys != nil && (!st.Present || !st.keysOK) {
		c := providers.Change{Action: providers.Update, Item: key + "/authorizedKeys", After: fmt.Sprintf("%d keys", len(it.Keys)), Data: keys{name: it.Name, home: it.Home, data: renderKeys(it.Keys)}}
		if st.AuthorizedKeys == nil {
			c.Action = providers.Create
		} else {
			c.Before = fmt.Sprintf("%d keys", *st.AuthorizedKeys)
			if *st.AuthorizedKeys == len(it.Keys) {
				c.Before += " (other content, owner or mode)"
			}
		}
		out = append(out, c)
	}
	return out
}

func describe(it Item) string {
	d := "user " + it.Name
	if it.UID >= 0 {
		d += " uid " + strconv.Itoa(it.UID)
	}
	if it.PrimaryGroup != "" {
		d += " group " + it.PrimaryGroup
	}
	if it.Groups != nil {
		d += " groups " + list(it.Groups)
	}
	if it.Shell != "" {
		d += " shell " + it.Shell
	}
	if it.Home != "" {
		d += " home " + it.Home
	}
	if it.System {
		d += " (system)"
	}
	return d
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

// Apply implements providers.Provider. Each change re-reads the root and
// does only what is still missing, so that applying twice, or again after
// a crash, is harmless.
func (Provider) Apply(ctx context.Context, env *providers.Env, c providers.Change) error {
	var err error
	switch d := c.Data.(type) {
	case account:
		err = applyAccount(ctx, env, d)
	case password:
		err = applyPassword(ctx, env, d)
	case homeDir:
		err = applyHome(env, d)
	case keys:
		err = applyKeys(env, d)
	default:
		err = fmt.Errorf("not a change of this provider")
	}
	if err != nil {
		return fmt.Errorf("apply users/%s: %w", c.Item, err)
	}
	return nil
}

func read(env *providers.Env, shadow bool) (*accounts.DB, error) {
	root, err := env.OpenRoot()
	if err != nil {
		return nil, err
	}
	defer root.Close()
	return accounts.Read(root, shadow)
}

func applyAccount(ctx context.Context, env *providers.Env, d account) error {
	db, err := read(env, false)
	if err != nil {
		return err
	}
	u := db.User(d.name)
	if d.del {
		if u == nil {
			return nil
		}
		return accounts.Run(ctx, env, "userdel", "--", d.name)
	}
	for _, g := range append([]string{d.group}, d.groups...) {
		if g != "" && db.Group(g) == nil {
			return fmt.Errorf("group %s does not exist (yet): create it in the groups section or locally", g)
		}
	}
	if u == nil {
		if !d.create {
			return fmt.Errorf("user %s no longer exists", d.name)
		}
		args := []string{}
		if d.uid >= 0 {
			args = append(args, "--uid", strconv.Itoa(d.uid))
		}
		switch {
		case d.group != "":
			args = append(args, "--gid", d.group)
		case db.Group(d.name) != nil:
			// useradd would refuse to create the user's own group;
			// join the group of that name instead.
			args = append(args, "--gid", d.name)
		}
		if d.groups != nil {
			args = append(args, "--groups", strings.Join(d.groups, ","))
		}
		if d.shell != "" {
			args = append(args, "--shell", d.shell)
		}
		if d.home != "" {
			args = append(args, "--home-dir", d.home)
		}
		if d.createHome {
			args = append(args, "--create-home")
		} else {
			args = append(args, "--no-create-home")
		}
		if d.system {
			args = append(args, "--system")
		}
		return accounts.Run(ctx, env, "useradd", append(args, "--", d.name)...)
	}
	// Update, or a create whose useradd already ran: change what differs.
	var args []string
	if d.uid >= 0 && u.UID != d.uid {
		args = append(args, "--uid", strconv.Itoa(d.uid))
	}
	if d.group != "" {
		if g := db.GroupByGID(u.GID); g == nil || g.Name != d.group {
			args = append(args, "--gid", d.group)
		}
	}
	if d.groups != nil && !sameSet(d.groups, db.SupplementaryGroups(d.name)) {
		args = append(args, "--groups", strings.Join(d.groups, ","))
	}
	if d.shell != "" && u.Shell != d.shell {
		args = append(args, "--shell", d.shell)
	}
	if d.home != "" && u.Home != d.home {
		args = append(args, "--home", d.home)
	}
	if len(args) == 0 {
		return nil
	}
	return accounts.Run(ctx, env, "usermod", append(args, "--", d.name)...)
}

func applyPassword(ctx context.Context, env *providers.Env, d password) error {
	db, err := read(env, true)
	if err != nil {
		return err
	}
	if db.User(d.name) == nil {
		return fmt.Errorf("user %s does not exist", d.name)
	}
	if d.hash.matches(db.Hashes[d.name]) {
		return nil
	}
	return accounts.SetHash(ctx, env, d.name, d.hash.reveal())
}

// userHome opens the root and finds user name and its home directory
// (override when set, else the one in passwd). The caller closes root.
func userHome(env *providers.Env, name, override string) (*providers.Dir, *accounts.User, string, error) {
	root, err := env.OpenRoot()
	if err != nil {
		return nil, nil, "", err
	}
	db, err := accounts.Read(root, false)
	if err != nil {
		root.Close()
		return nil, nil, "", err
	}
	u := db.User(name)
	if u == nil {
		root.Close()
		return nil, nil, "", fmt.Errorf("user %s does not exist", name)
	}
	home := u.Home
	if override != "" {
		home = override
	}
	return root, u, home, nil
}

func applyHome(env *providers.Env, d homeDir) error {
	root, u, home, err := userHome(env, d.name, d.home)
	if err != nil {
		return err
	}
	defer root.Close()
	return makeHome(root, home, u.UID, u.GID)
}

func applyKeys(env *providers.Env, d keys) error {
	root, u, home, err := userHome(env, d.name, d.home)
	if err != nil {
		return err
	}
	defer root.Close()
	hd, _, err := openHome(root, home)
	if err != nil {
		return err
	}
	ks, err := observeKeys(hd, u.UID, u.GID, d.data)
	if hd != nil {
		hd.Close()
	}
	if err != nil || ks.inSync {
		return err
	}
	return writeKeys(root, home, u.UID, u.GID, d.data)
}

// CloudScope implements providers.CloudScoper. From the twin it refuses:
// a passwordHash (always: only local policy may set one); a user whose
// name a plain Deny glob matches or no plain Allow glob matches; and,
// unless the scope is Privileged, the user root, uid 0, and a primary or
// supplementary group that a "%" entry denies (root, sudo, wheel, adm,
// shadow and disk by default).
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
	add := func(ptr, msg string) { out = append(out, providers.FieldError{Pointer: ptr, Message: msg}) }
	for _, key := range keys {
		var in struct {
			Name         string          `json:"name"`
			UID          *int            `json:"uid"`
			PrimaryGroup string          `json:"primaryGroup"`
			Groups       []string        `json:"groups"`
			PasswordHash json.RawMessage `json:"passwordHash"`
		}
		if json.Unmarshal(section[key], &in) != nil {
			continue
		}
		name, at := in.Name, providers.Pointer(key, "name")
		if name == "" {
			name, at = key, providers.Pointer(key)
		}
		if why, no := accounts.ScopeCheck(rules, name, false); no {
			add(at, why)
		} else if name == "root" && !rules.Privileged {
			add(at, "the cloud scope keeps the twin from changing the user root unless it is privileged; only local policy may")
		}
		if in.UID != nil && *in.UID == 0 && !rules.Privileged {
			add(providers.Pointer(key, "uid"), "the cloud scope keeps the twin from setting uid 0 unless it is privileged; only local policy may")
		}
		if in.PrimaryGroup != "" {
			if why, no := accounts.ScopeCheck(rules, in.PrimaryGroup, true); no {
				add(providers.Pointer(key, "primaryGroup"), why)
			}
		}
		for i, g := range in.Groups {
			if why, no := accounts.ScopeCheck(rules, g, true); no {
				add(providers.Pointer(key, "groups", strconv.Itoa(i)), why)
			}
		}
		if in.PasswordHash != nil {
			add(providers.Pointer(key, "passwordHash"), "no password ever comes from the twin: only local policy may set passwordHash")
		}
	}
	return out
}

// WatchPaths implements providers.PathWatcher: the account databases.
func (Provider) WatchPaths(env *providers.Env, spec providers.Spec) []string {
	return accounts.WatchPaths(env)
}
