// Package files provides the "files" section: regular files and
// directories under the allowed roots, with content, mode, owner and group.
//
// The section is a collection of named items:
//
//	"files": {
//	  "prune": true,
//	  "motd": { "path": "/etc/motd", "content": "hello\n", "mode": "0644" },
//	  "app":  { "path": "/opt/app", "kind": "directory", "owner": "app" }
//	}
//
// Content is compared by SHA-256 and written atomically. Owner and group
// names are looked up in <root>/etc/passwd and <root>/etc/group, never in
// the host's name service. A file or directory that twinlet created is
// recorded (Change.Key is its device path); with prune: true, those that
// left the desired state are deleted, deepest first, and a directory only
// when nothing twinlet does not manage is left in it.
package files

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"github.com/twinlet/twinlet/providers"
)

// ID is the section id.
const ID = "files"

// CloudDeny are the paths the twin may not set by default: what would
// hand out code execution as root or the device's identity (the agent's
// own config and keys, sudo, ssh, root's home, the account databases,
// cron, systemd units, the dynamic linker, PAM, login scripts, package
// sources, kernel parameters and modules, udev rules, root's PATH). The
// agent config's cloud.files replaces the whole list. Globs as in
// providers.MatchGlob.
var CloudDeny = []string{
	"/etc/twinlet/**", "/etc/sudoers*/**", "/etc/ssh/**", "/root/**",
	"/etc/passwd*", "/etc/shadow*", "/etc/group*", "/etc/gshadow*", "/etc/subuid*", "/etc/subgid*",
	"/etc/cron*/**", "/etc/anacrontab", "/etc/systemd/**", "/etc/init.d/**", "/etc/rc*/**",
	"/etc/ld.so.preload", "/etc/ld.so.conf*/**", "/etc/pam.d/**", "/etc/security/**",
	"/etc/profile", "/etc/profile.d/**", "/etc/environment", "/etc/bash.bashrc",
	"/etc/apt/**", "/etc/sysctl.conf", "/etc/sysctl.d/**", "/etc/modprobe.d/**", "/etc/modules-load.d/**",
	"/etc/udev/**", "/usr/local/bin/**", "/usr/local/sbin/**", "/usr/local/lib/**",
}

func init() {
	// An owner or group named by a file may be a user or group that the
	// users section creates; the reconciler skips a dependency that
	// nothing desires, so files never waits when no users are desired.
	providers.Register(providers.Info{ID: ID, Kind: providers.Collection, New: New, CloudDeny: CloudDeny, DependsOn: []string{"users"}})
}

// New returns the files provider.
func New() providers.Provider { return Provider{} }

// Provider implements the files section.
type Provider struct{}

// Item is one desired file or directory.
type Item struct {
	// Path is the absolute, clean device path.
	Path string
	// Directory is true for kind: directory.
	Directory bool
	// Absent is true for ensure: absent.
	Absent bool
	// Content is a file's content.
	Content []byte
	// Mode holds the permission bits, setuid, setgid and sticky.
	Mode os.FileMode
	// Owner and Group are names or numeric ids; "" leaves them alone.
	Owner, Group string

	sum string // hex SHA-256 of Content
}

// Spec is the decoded section.
type Spec struct {
	Items map[string]Item
	Prune bool
}

// ItemState is what the provider observed at one item's path. It never
// holds file content.
type ItemState struct {
	Path   string `json:"path"`
	Exists bool   `json:"exists"`
	// Kind is file, directory, symlink or other.
	Kind   string `json:"kind,omitempty"`
	Mode   string `json:"mode,omitempty"`
	Owner  string `json:"owner,omitempty"`
	Group  string `json:"group,omitempty"`
	Size   *int64 `json:"size,omitempty"`
	SHA256 string `json:"sha256,omitempty"`

	mode     os.FileMode // permission and special bits
	uid, gid int
	wantUID  int    // -1: not managed
	wantGID  int    // -1: not managed
	invalid  string // the path now leaves the root or the allowed roots
}

type pruned struct {
	st   *ItemState
	skip bool // a directory that holds entries twinlet does not manage
}

// Observed is the provider's observation; it marshals to a JSON object
// keyed by item name.
type Observed struct {
	Items map[string]*ItemState
	prune []pruned // created by twinlet, no longer desired, present
}

// MarshalJSON reports the items only.
func (o *Observed) MarshalJSON() ([]byte, error) { return json.Marshal(o.Items) }

var (
	itemNameRE = regexp.MustCompile(`^[^.$ \x00-\x1f\x7f]+$`)
	modeRE     = regexp.MustCompile(`^[0-7]{3,4}$`)
)

// validAccount reports whether v is a user or group name as shadow's
// useradd accepts it (a letter or '_', then up to 31 of letters, digits,
// '_', '.', '-', and an optional final '$') or a numeric id of at most 10
// digits. (A counted regular expression costs more to compile than the
// whole check.)
func validAccount(v string) bool {
	if v == "" {
		return false
	}
	if v[0] >= '0' && v[0] <= '9' {
		if len(v) > 10 {
			return false
		}
		for _, r := range v {
			if r < '0' || r > '9' {
				return false
			}
		}
		return true
	}
	name := strings.TrimSuffix(v, "$")
	if name == "" || len(name) > 32 || !(name[0] == '_' || isLetter(name[0])) {
		return false
	}
	for i := 1; i < len(name); i++ {
		c := name[i]
		if !(isLetter(c) || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-') {
			return false
		}
	}
	return true
}

func isLetter(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }

func ptr(item, field string) string { return providers.Pointer(item, field) }

// Decode implements providers.Provider.
func (Provider) Decode(env *providers.Env, raw json.RawMessage) (providers.Spec, error) {
	errs := &providers.InvalidError{}
	col := providers.SplitCollection(raw, errs)
	spec := Spec{Items: map[string]Item{}, Prune: col.Prune}
	names, section := col.Names, col.Items
	byPath := map[string]string{}
	w := newWalker(env)
	defer w.close()
	for _, name := range names {
		it, ok := decodeItem(env, w, name, section[name], errs)
		if !ok {
			continue
		}
		if other, dup := byPath[it.Path]; dup {
			errs.Add(ptr(name, "path"), "%s is also the path of item %q", it.Path, other)
			continue
		}
		byPath[it.Path] = name
		spec.Items[name] = it
	}
	// A present file cannot have anything desired below it.
	for _, name := range names {
		it, ok := spec.Items[name]
		if !ok || it.Absent {
			continue
		}
		for dir := path.Dir(it.Path); dir != "/"; dir = path.Dir(dir) {
			if other, ok := byPath[dir]; ok && !spec.Items[other].Absent && !spec.Items[other].Directory {
				errs.Add(ptr(name, "path"), "%s is inside %s, which item %q makes a file", it.Path, dir, other)
			}
		}
	}
	if err := errs.OrNil(); err != nil {
		return nil, err
	}
	return spec, nil
}

func decodeItem(env *providers.Env, w *walker, name string, raw json.RawMessage, errs *providers.InvalidError) (Item, bool) {
	if !itemNameRE.MatchString(name) {
		errs.Add(ptr(name, ""), "item names must not contain '.', '$', spaces or control characters")
		return Item{}, false
	}
	var in struct {
		Path          string  `json:"path"`
		Content       *string `json:"content"`
		ContentBase64 *string `json:"contentBase64"`
		Mode          string  `json:"mode"`
		Owner         string  `json:"owner"`
		Group         string  `json:"group"`
		Ensure        string  `json:"ensure"`
		Kind          string  `json:"kind"`
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		errs.Add(ptr(name, ""), "%v", err)
		return Item{}, false
	}
	n := len(errs.Errors)
	it := Item{Path: in.Path, Owner: in.Owner, Group: in.Group}
	switch in.Ensure {
	case "", "present":
	case "absent":
		it.Absent = true
	default:
		errs.Add(ptr(name, "ensure"), "must be present or absent")
	}
	badKind := false
	switch in.Kind {
	case "", "file":
	case "directory":
		it.Directory = true
	default:
		badKind = true
		errs.Add(ptr(name, "kind"), "must be file or directory")
	}
	if msg := checkPath(env, w, in.Path); msg != "" {
		errs.Add(ptr(name, "path"), "%s", msg)
	}
	switch {
	case in.Content != nil && in.ContentBase64 != nil:
		errs.Add(ptr(name, "contentBase64"), "give content or contentBase64, not both")
	case it.Directory && (in.Content != nil || in.ContentBase64 != nil):
		f := "content"
		if in.ContentBase64 != nil {
			f = "contentBase64"
		}
		errs.Add(ptr(name, f), "a directory has no content")
	case in.Content != nil:
		it.Content = []byte(*in.Content)
	case in.ContentBase64 != nil:
		b, err := base64.StdEncoding.DecodeString(*in.ContentBase64)
		if err != nil {
			errs.Add(ptr(name, "contentBase64"), "not base64: %v", err)
		}
		it.Content = b
	case !it.Directory && !it.Absent && !badKind:
		errs.Add(ptr(name, "content"), "a file needs content or contentBase64 (\"\" for an empty file)")
	}
	it.Mode = 0o644
	if it.Directory {
		it.Mode = 0o755
	}
	if in.Mode != "" {
		if !modeRE.MatchString(in.Mode) {
			errs.Add(ptr(name, "mode"), "%q is not an octal mode like \"0644\"", in.Mode)
		} else {
			u, _ := strconv.ParseUint(in.Mode, 8, 32)
			it.Mode = fromUnix(uint32(u))
		}
	}
	for field, v := range map[string]string{"owner": in.Owner, "group": in.Group} {
		if v != "" && !validAccount(v) {
			errs.Add(ptr(name, field), "%q is neither a user/group name nor a numeric id", v)
		}
	}
	sum := sha256.Sum256(it.Content)
	it.sum = hex.EncodeToString(sum[:])
	return it, len(errs.Errors) == n
}

// checkPath returns why p cannot be managed, or "". The look at the
// root (a link in p's path) is an early, friendly report: Observe and
// Apply check again through the root handle, where it counts.
func checkPath(env *providers.Env, w *walker, p string) string {
	switch {
	case p == "":
		return "a path is required"
	case !path.IsAbs(p):
		return fmt.Sprintf("%q is not an absolute path", p)
	case strings.Contains("/"+p+"/", "/../"):
		return fmt.Sprintf("%q must not contain \"..\"", p)
	case path.Clean(p) != p:
		return fmt.Sprintf("%q is not clean (want %q)", p, path.Clean(p))
	case strings.ContainsFunc(p, func(r rune) bool { return r < 0x20 || r == 0x7f }):
		return fmt.Sprintf("%q contains control characters", p)
	case !env.Allowed(p):
		return fmt.Sprintf("%s is outside the allowed roots (%s)", p, strings.Join(allowedRoots(env), ", "))
	case isAllowedRoot(env, p):
		return fmt.Sprintf("%s is an allowed root itself; name a path inside it", p)
	}
	_, _, msg, _ := w.parent(p)
	return msg
}

// walker opens the parent directories of items for one call, each once,
// through the root handle and without following any symbolic link
// (providers.Dir.Walk): an item's path is used as written, so a link in it
// can neither lead outside the root or the allowed roots nor around a
// cloud-scope glob. Dirs are closed by close.
type walker struct {
	env  *providers.Env
	root *providers.Dir
	err  error                 // opening the root failed
	dirs map[string]*walkedDir // device dir → its Dir or why not
}

type walkedDir struct {
	dir *providers.Dir
	err error
}

func newWalker(env *providers.Env) *walker {
	w := &walker{env: env, dirs: map[string]*walkedDir{}}
	w.root, w.err = env.OpenRoot()
	return w
}

func (w *walker) close() {
	for _, d := range w.dirs {
		if d.dir != nil {
			d.dir.Close()
		}
	}
	if w.root != nil {
		w.root.Close()
	}
}

// parent returns the open parent directory of the device path p and p's
// final component. dir is nil when the parent does not exist (or a
// component of it is not a directory): p is missing. msg says why p cannot
// be managed (a link in its path); err is any other failure.
func (w *walker) parent(p string) (dir *providers.Dir, base, msg string, err error) {
	if w.err != nil {
		return nil, "", "", w.err
	}
	d := w.open(path.Dir(p))
	base = path.Base(p)
	switch {
	case d.err == nil:
		return d.dir, base, "", nil
	case errors.Is(d.err, fs.ErrNotExist), errors.Is(d.err, syscall.ENOTDIR):
		return nil, base, "", nil
	case errors.Is(d.err, providers.ErrSymlink), providers.IsOutsideRoot(d.err):
		return nil, base, linkMsg(p, d.err), nil
	}
	return nil, base, "", d.err
}

func linkMsg(p string, err error) string {
	return fmt.Sprintf("%s leads through a symbolic link (%v); files never follows links in a path", p, err)
}

// open walks to the device directory dir from the root.
func (w *walker) open(dir string) *walkedDir {
	if d, ok := w.dirs[dir]; ok {
		return d
	}
	d := &walkedDir{}
	if rel, err := providers.Rel(dir); err != nil {
		d.err = err
	} else {
		d.dir, d.err = w.root.Walk(rel, false, 0)
	}
	w.dirs[dir] = d
	return d
}

func allowedRoots(env *providers.Env) []string {
	if env.AllowedRoots != nil {
		return env.AllowedRoots
	}
	return providers.DefaultAllowedRoots
}

func isAllowedRoot(env *providers.Env, p string) bool {
	for _, r := range allowedRoots(env) {
		if path.Clean(r) == p {
			return true
		}
	}
	return false
}

func fromUnix(u uint32) os.FileMode {
	m := os.FileMode(u & 0o777)
	if u&0o4000 != 0 {
		m |= os.ModeSetuid
	}
	if u&0o2000 != 0 {
		m |= os.ModeSetgid
	}
	if u&0o1000 != 0 {
		m |= os.ModeSticky
	}
	return m
}

func toUnix(m os.FileMode) uint32 {
	u := uint32(m.Perm())
	if m&os.ModeSetuid != 0 {
		u |= 0o4000
	}
	if m&os.ModeSetgid != 0 {
		u |= 0o2000
	}
	if m&os.ModeSticky != 0 {
		u |= 0o1000
	}
	return u
}

const specialBits = os.ModePerm | os.ModeSetuid | os.ModeSetgid | os.ModeSticky

// Observe implements providers.Provider.
func (Provider) Observe(ctx context.Context, env *providers.Env, spec providers.Spec) (providers.Observed, error) {
	s := spec.(Spec)
	w := newWalker(env)
	defer w.close()
	if w.err != nil {
		return nil, fmt.Errorf("observe files: %w", w.err)
	}
	users, err := loadDB(env, w.root, "/etc/passwd", 2)
	if err != nil {
		return nil, fmt.Errorf("observe files: %w", err)
	}
	groups, err := loadDB(env, w.root, "/etc/group", 2)
	if err != nil {
		return nil, fmt.Errorf("observe files: %w", err)
	}
	o := &Observed{Items: make(map[string]*ItemState, len(s.Items))}
	buf := make([]byte, 64<<10)
	desired := make(map[string]bool, len(s.Items))
	for name, it := range s.Items {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		desired[it.Path] = true
		st := &ItemState{Path: it.Path, wantUID: -1, wantGID: -1}
		o.Items[name] = st
		if !it.Absent {
			if st.wantUID, err = users.id(it.Owner); err != nil {
				return nil, fmt.Errorf("observe files/%s: owner %w", name, err)
			}
			if st.wantGID, err = groups.id(it.Group); err != nil {
				return nil, fmt.Errorf("observe files/%s: group %w", name, err)
			}
		}
		dir, base, msg, err := w.parent(it.Path)
		switch {
		case err != nil:
			return nil, fmt.Errorf("observe files/%s: %w", name, err)
		case msg != "":
			st.invalid = msg
			continue
		case dir == nil:
			continue // missing
		}
		if err := stat(st, dir, base, !it.Absent && !it.Directory, buf, users, groups); err != nil {
			return nil, fmt.Errorf("observe files/%s: %w", name, err)
		}
	}
	if s.Prune {
		if err := o.observePrune(env, w, s, desired, users, groups); err != nil {
			return nil, err
		}
	}
	return o, nil
}

// observePrune finds what twinlet created, no longer desires and is still
// there, and marks directories that hold anything else as kept.
func (o *Observed) observePrune(env *providers.Env, w *walker, s Spec, desired map[string]bool, users, groups *db) error {
	var paths []string
	for key := range env.Managed {
		if !desired[key] && path.IsAbs(key) && path.Clean(key) == key && env.Allowed(key) && !isAllowedRoot(env, key) {
			paths = append(paths, key)
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(paths))) // children before parents
	gone := map[string]bool{}                        // deleted by this plan
	for name, it := range s.Items {
		if it.Absent && o.Items[name].Exists {
			gone[it.Path] = true
		}
	}
	for _, p := range paths {
		dir, base, msg, err := w.parent(p)
		if err != nil {
			return fmt.Errorf("observe files: prune %s: %w", p, err)
		}
		if msg != "" {
			if env.Logger != nil {
				env.Logger.Warn("files: not pruning a path that goes through a symbolic link", "path", p, "reason", msg)
			}
			continue
		}
		if dir == nil {
			continue
		}
		st := &ItemState{Path: p, wantUID: -1, wantGID: -1}
		if err := stat(st, dir, base, false, nil, users, groups); err != nil {
			return fmt.Errorf("observe files: prune %s: %w", p, err)
		}
		if !st.Exists {
			continue
		}
		pr := pruned{st: st}
		if st.Kind == "directory" {
			f, err := dir.OpenNoFollow(base, os.O_RDONLY|syscall.O_DIRECTORY)
			if err != nil {
				return fmt.Errorf("observe files: prune %s: %w", p, err)
			}
			ents, err := f.ReadDir(-1)
			f.Close()
			if err != nil {
				return fmt.Errorf("observe files: prune %s: %w", p, err)
			}
			for _, e := range ents {
				if !gone[path.Join(p, e.Name())] {
					pr.skip = true
					break
				}
			}
		}
		if !pr.skip {
			gone[p] = true
		}
		o.prune = append(o.prune, pr)
	}
	return nil
}

// stat fills st from the entry base of dir; with hash it reads and hashes
// a regular file.
func stat(st *ItemState, dir *providers.Dir, base string, hash bool, buf []byte, users, groups *db) error {
	fi, err := dir.Lstat(base)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		return nil
	}
	if err != nil {
		return err
	}
	st.Exists = true
	st.mode = fi.Mode() & specialBits
	st.Mode = fmt.Sprintf("%04o", toUnix(fi.Mode()))
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		st.uid, st.gid = int(sys.Uid), int(sys.Gid)
		st.Owner, st.Group = users.name(st.uid), groups.name(st.gid)
	}
	switch {
	case fi.Mode().IsRegular():
		st.Kind = "file"
		size := fi.Size()
		st.Size = &size
	case fi.IsDir():
		st.Kind = "directory"
	case fi.Mode()&fs.ModeSymlink != 0:
		st.Kind = "symlink"
	default:
		st.Kind = "other"
	}
	if !hash || st.Kind != "file" {
		return nil
	}
	// Open follows a link swapped in since Lstat (inside dir only) and
	// O_NONBLOCK keeps a swapped-in FIFO from blocking; reading what was
	// not the entry Lstat saw leaves the hash empty, which plans a write
	// that Apply checks again.
	f, err := dir.OpenFile(base, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || providers.IsOutsideRoot(err) || errors.Is(err, syscall.ELOOP) {
			return nil
		}
		return err
	}
	defer f.Close()
	if now, err := f.Stat(); err != nil || !os.SameFile(fi, now) {
		return err
	}
	h := sha256.New()
	// Hide File.WriteTo so that CopyBuffer uses buf instead of
	// allocating 32 KiB per file.
	if _, err := io.CopyBuffer(h, struct{ io.Reader }{f}, buf); err != nil {
		return err
	}
	st.SHA256 = hex.EncodeToString(h.Sum(nil))
	return nil
}

// Plan implements providers.Provider.
func (Provider) Plan(spec providers.Spec, observed providers.Observed) ([]providers.Change, error) {
	s, o := spec.(Spec), observed.(*Observed)
	names := make([]string, 0, len(s.Items))
	for name := range s.Items {
		names = append(names, name)
	}
	sort.Slice(names, func(i, j int) bool { return s.Items[names[i]].Path < s.Items[names[j]].Path })
	errs := &providers.InvalidError{}
	var deletes, writes []providers.Change
	for _, name := range names {
		it, st := s.Items[name], o.Items[name]
		if st == nil {
			return nil, fmt.Errorf("plan files: item %q was not observed", name)
		}
		if st.invalid != "" {
			errs.Add(ptr(name, "path"), "%s", st.invalid)
			continue
		}
		d := op{item: name, path: it.Path}
		switch {
		case it.Absent:
			if st.Exists {
				d.del = true
				deletes = append(deletes, providers.Change{Action: providers.Delete, Item: name, Key: it.Path, Before: describe(st), Data: d})
			}
			continue
		case !st.Exists:
			d.spec, d.uid, d.gid = it, st.wantUID, st.wantGID
			writes = append(writes, providers.Change{Action: providers.Create, Item: name, Key: it.Path, After: describeWant(it), Data: d})
		case st.Kind != kindOf(it) || !it.Directory && st.SHA256 != it.sum:
			d.spec, d.uid, d.gid = it, st.wantUID, st.wantGID
			writes = append(writes, providers.Change{Action: providers.Update, Item: name, Before: describe(st), After: describeWant(it), Data: d})
		case st.mode != it.Mode || st.wantUID >= 0 && st.uid != st.wantUID || st.wantGID >= 0 && st.gid != st.wantGID:
			d.spec, d.uid, d.gid, d.metaOnly = it, st.wantUID, st.wantGID, true
			writes = append(writes, providers.Change{Action: providers.Update, Item: name, Before: describe(st), After: describeWant(it), Data: d})
		}
	}
	if err := errs.OrNil(); err != nil {
		return nil, err
	}
	for _, pr := range o.prune {
		if !pr.skip {
			deletes = append(deletes, providers.Change{Action: providers.Delete, Item: pr.st.Path, Key: pr.st.Path, Before: describe(pr.st) + " (pruned)", Data: op{path: pr.st.Path, del: true, pruned: true}})
		}
	}
	sort.SliceStable(deletes, func(i, j int) bool { return deletes[i].Key > deletes[j].Key })
	return append(deletes, writes...), nil
}

func kindOf(it Item) string {
	if it.Directory {
		return "directory"
	}
	return "file"
}

// describe renders an observation without content: "sha256:ab12cd34… 12 B
// mode 0644 root:root".
func describe(st *ItemState) string {
	if !st.Exists {
		return "(missing)"
	}
	var b strings.Builder
	switch st.Kind {
	case "file":
		if st.SHA256 != "" {
			fmt.Fprintf(&b, "sha256:%s… ", st.SHA256[:8])
		}
		fmt.Fprintf(&b, "%d B", *st.Size)
	default:
		b.WriteString(st.Kind)
	}
	fmt.Fprintf(&b, " mode %s %s:%s", st.Mode, st.Owner, st.Group)
	return b.String()
}

func describeWant(it Item) string {
	var b strings.Builder
	if it.Directory {
		b.WriteString("directory")
	} else {
		fmt.Fprintf(&b, "sha256:%s… %d B", it.sum[:8], len(it.Content))
	}
	fmt.Fprintf(&b, " mode %04o", toUnix(it.Mode))
	if it.Owner != "" || it.Group != "" {
		fmt.Fprintf(&b, " %s:%s", orStar(it.Owner), orStar(it.Group))
	}
	return b.String()
}

func orStar(s string) string {
	if s == "" {
		return "*"
	}
	return s
}

type op struct {
	item     string // "" for a pruned path
	path     string
	spec     Item
	uid, gid int
	del      bool
	pruned   bool
	metaOnly bool
}

// Apply implements providers.Provider.
func (Provider) Apply(ctx context.Context, env *providers.Env, c providers.Change) error {
	d, ok := c.Data.(op)
	if !ok {
		return fmt.Errorf("apply files/%s: not a change of this provider", c.Item)
	}
	dir, base, err := openParent(env, d)
	if err != nil {
		if errors.Is(err, providers.ErrSymlink) || providers.IsOutsideRoot(err) {
			if d.pruned {
				return fmt.Errorf("apply files: prune %s", linkMsg(d.path, err))
			}
			return providers.Invalid(ptr(d.item, "path"), "%s", linkMsg(d.path, err))
		}
		return fmt.Errorf("apply files/%s: %w", c.Item, err)
	}
	if dir == nil {
		return nil // deleting what is already gone
	}
	defer dir.Close()
	switch {
	case d.del:
		err = remove(dir, base, d)
	case d.spec.Directory:
		err = mkdir(dir, base, d)
	default:
		err = writeFile(dir, base, d)
	}
	if err != nil {
		return fmt.Errorf("apply files/%s: %w", c.Item, err)
	}
	return nil
}

// openParent opens the parent directory of the change's path from the
// root without following links, creating missing directories (0755)
// unless the change deletes. dir is nil when a delete finds no parent.
func openParent(env *providers.Env, d op) (*providers.Dir, string, error) {
	if !env.Allowed(d.path) || isAllowedRoot(env, d.path) {
		return nil, "", fmt.Errorf("%s is outside the allowed roots: %w", d.path, providers.ErrOutsideRoot)
	}
	rel, err := providers.Rel(path.Dir(d.path))
	if err != nil {
		return nil, "", err
	}
	root, err := env.OpenRoot()
	if err != nil {
		return nil, "", err
	}
	defer root.Close()
	dir, err := root.Walk(rel, !d.del, 0o755)
	if d.del && (errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR)) {
		return nil, "", nil
	}
	if err != nil {
		return nil, "", err
	}
	return dir, path.Base(d.path), nil
}

func remove(dir *providers.Dir, base string, d op) error {
	fi, err := dir.Lstat(base)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := dir.Remove(base); err != nil {
		if fi.IsDir() && (errors.Is(err, syscall.ENOTEMPTY) || errors.Is(err, syscall.EEXIST)) {
			return fmt.Errorf("directory %s is not empty: it holds entries twinlet does not manage; not deleting it", d.path)
		}
		return err
	}
	return dir.Sync()
}

func mkdir(dir *providers.Dir, base string, d op) error {
	fi, err := dir.Lstat(base)
	switch {
	case err == nil && fi.Mode()&fs.ModeSymlink != 0:
		if err := dir.Remove(base); err != nil {
			return err
		}
	case err == nil && !fi.IsDir():
		return fmt.Errorf("%s exists and is not a directory; not replacing it", d.path)
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return err
	}
	if err := dir.Mkdir(base, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	return fixMeta(dir, base, d)
}

func writeFile(dir *providers.Dir, base string, d op) error {
	fi, err := dir.Lstat(base)
	switch {
	case err == nil && fi.IsDir():
		return fmt.Errorf("%s is a directory; not replacing it with a file", d.path)
	case err == nil && fi.Mode().IsRegular() && (d.metaOnly || sameContent(dir, base, d.spec.sum)):
		return fixMeta(dir, base, d)
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return err
	case err == nil:
		// Replacing a file: keep the owner and group it had unless
		// they are managed.
		if sys, ok := fi.Sys().(*syscall.Stat_t); ok && fi.Mode().IsRegular() {
			if d.uid < 0 {
				d.uid = int(sys.Uid)
			}
			if d.gid < 0 {
				d.gid = int(sys.Gid)
			}
		}
	}
	// The new file gets its owner and mode before it replaces the old
	// one, so it never appears with the wrong ones.
	return dir.WriteFileAtomic(base, d.spec.Content, providers.FileMeta{
		Mode: d.spec.Mode, SetOwner: d.uid >= 0 || d.gid >= 0, UID: d.uid, GID: d.gid,
	})
}

func sameContent(dir *providers.Dir, base, sum string) bool {
	f, err := dir.OpenNoFollow(base, os.O_RDONLY|syscall.O_NONBLOCK)
	if err != nil {
		return false
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return false
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return false
	}
	return hex.EncodeToString(h.Sum(nil)) == sum
}

// fixMeta sets owner, group and mode on the entry base of dir through a
// descriptor opened without following links (fchown, fchmod), so a link
// swapped in is refused, never changed through. chmod comes after chown,
// which clears setuid and setgid.
func fixMeta(dir *providers.Dir, base string, d op) error {
	flag := os.O_RDONLY | syscall.O_NONBLOCK
	if d.spec.Directory {
		flag |= syscall.O_DIRECTORY
	}
	f, err := dir.OpenNoFollow(base, flag)
	if errors.Is(err, providers.ErrSymlink) {
		return fmt.Errorf("%s became a symbolic link", d.path)
	}
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if want := kindOf(d.spec); want == "file" && !fi.Mode().IsRegular() || want == "directory" && !fi.IsDir() {
		return fmt.Errorf("%s is no longer a %s", d.path, want)
	}
	sys, _ := fi.Sys().(*syscall.Stat_t)
	chown := sys != nil && (d.uid >= 0 && int(sys.Uid) != d.uid || d.gid >= 0 && int(sys.Gid) != d.gid)
	if chown {
		if err := f.Chown(d.uid, d.gid); err != nil {
			return err
		}
	}
	if chown || fi.Mode()&specialBits != d.spec.Mode {
		if err := f.Chmod(d.spec.Mode); err != nil {
			return err
		}
	}
	return nil
}

// db is a parsed passwd or group file of the root.
type db struct {
	file   string // host path, for messages
	byName map[string]int
	byID   map[int]string
}

// loadDB parses a colon-separated account file of the root whose id is
// field idField; a missing file is empty.
func loadDB(env *providers.Env, root *providers.Dir, p string, idField int) (*db, error) {
	rel, err := providers.Rel(p)
	if err != nil {
		return nil, err
	}
	d := &db{file: env.HostPath(p), byName: map[string]int{}, byID: map[int]string{}}
	f, err := root.Open(rel)
	if errors.Is(err, fs.ErrNotExist) {
		return d, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Split(sc.Text(), ":")
		if len(fields) <= idField || fields[0] == "" || strings.HasPrefix(fields[0], "#") {
			continue
		}
		id, err := strconv.Atoi(fields[idField])
		if err != nil || id < 0 {
			continue
		}
		if _, ok := d.byName[fields[0]]; !ok {
			d.byName[fields[0]] = id
		}
		if _, ok := d.byID[id]; !ok {
			d.byID[id] = fields[0]
		}
	}
	return d, sc.Err()
}

// id returns the id for a name or numeric id; -1 for "".
func (d *db) id(v string) (int, error) {
	if v == "" {
		return -1, nil
	}
	if n, err := strconv.ParseUint(v, 10, 32); err == nil {
		return int(n), nil
	}
	id, ok := d.byName[v]
	if !ok {
		return 0, fmt.Errorf("%q not found in %s", v, d.file)
	}
	return id, nil
}

func (d *db) name(id int) string {
	if n, ok := d.byID[id]; ok {
		return n
	}
	return strconv.Itoa(id)
}

// CloudScope implements providers.CloudScoper: an item of the twin whose
// path the rules forbid fails with its path's pointer, and, unless the
// rules are privileged, so does a setuid or setgid mode (a setuid file
// hands out its owner's rights). Pure; malformed items are left to
// validation.
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
			Path *string `json:"path"`
			Mode *string `json:"mode"`
		}
		if json.Unmarshal(section[name], &it) != nil {
			continue
		}
		if it.Path != nil {
			for _, p := range []string{*it.Path, path.Clean(*it.Path)} {
				if why, no := rules.Forbids(p, '/'); no {
					out = append(out, providers.FieldError{Pointer: ptr(name, "path"), Message: why})
					break
				}
			}
		}
		if it.Mode != nil && !rules.Privileged && modeRE.MatchString(*it.Mode) {
			if u, _ := strconv.ParseUint(*it.Mode, 8, 32); u&0o6000 != 0 {
				out = append(out, providers.FieldError{Pointer: ptr(name, "mode"), Message: fmt.Sprintf("mode %s sets setuid or setgid: the twin may do that only where the agent config says cloud.files.privileged: true", *it.Mode)})
			}
		}
	}
	return out
}

// WatchPaths implements providers.PathWatcher: the host paths of every
// item (for watches only; see providers.Env.HostPath).
func (Provider) WatchPaths(env *providers.Env, spec providers.Spec) []string {
	s, _ := spec.(Spec)
	out := make([]string, 0, len(s.Items))
	for _, it := range s.Items {
		out = append(out, env.HostPath(it.Path))
	}
	sort.Strings(out)
	return out
}
