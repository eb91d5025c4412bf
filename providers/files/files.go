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
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"github.com/twinlet/twinlet/internal/atomicfile"
	"github.com/twinlet/twinlet/providers"
)

// ID is the section id.
const ID = "files"

func init() {
	providers.Register(providers.Info{ID: ID, Kind: providers.Collection, New: New})
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
	accountRE  = regexp.MustCompile(`^([A-Za-z_][A-Za-z0-9_.-]{0,31}\$?|[0-9]{1,10})$`)
)

func ptr(item, field string) string { return providers.Pointer(item, field) }

// Decode implements providers.Provider.
func (Provider) Decode(env *providers.Env, raw json.RawMessage) (providers.Spec, error) {
	errs := &providers.InvalidError{}
	col := providers.SplitCollection(raw, errs)
	spec := Spec{Items: map[string]Item{}, Prune: col.Prune}
	names, section := col.Names, col.Items
	byPath := map[string]string{}
	for _, name := range names {
		it, ok := decodeItem(env, name, section[name], errs)
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

func decodeItem(env *providers.Env, name string, raw json.RawMessage, errs *providers.InvalidError) (Item, bool) {
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
	if msg := checkPath(env, in.Path); msg != "" {
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
		if v != "" && !accountRE.MatchString(v) {
			errs.Add(ptr(name, field), "%q is neither a user/group name nor a numeric id", v)
		}
	}
	sum := sha256.Sum256(it.Content)
	it.sum = hex.EncodeToString(sum[:])
	return it, len(errs.Errors) == n
}

// checkPath returns why p cannot be managed, or "".
func checkPath(env *providers.Env, p string) string {
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
	_, msg := confine(env, p)
	return msg
}

// resolver resolves device paths for one Observe, resolving each parent
// directory once: Resolve(p) is ResolveFollow(dir(p)) joined with
// base(p), since Resolve follows every component but the last.
type resolver struct {
	env     *providers.Env
	parents map[string]string // device dir → host dir, or "" when it fails
}

func (r *resolver) confine(p string) (string, string) {
	dir := path.Dir(p)
	hostDir, ok := r.parents[dir]
	if !ok {
		if h, err := r.env.ResolveFollow(dir); err == nil {
			hostDir = h
		}
		r.parents[dir] = hostDir
	}
	if hostDir == "" {
		return confine(r.env, p) // for its message
	}
	host := filepath.Join(hostDir, path.Base(p))
	if dev := devicePath(r.env, host); dev != p && (!r.env.Allowed(dev) || isAllowedRoot(r.env, dev)) {
		return confine(r.env, p)
	}
	return host, ""
}

// confine resolves p to its host path and checks that the resolution
// stays inside the root and the allowed roots; the message says why not.
func confine(env *providers.Env, p string) (string, string) {
	host, err := env.Resolve(p)
	if err != nil {
		return "", fmt.Sprintf("%s: %v", p, err)
	}
	if dev := devicePath(env, host); dev != p && (!env.Allowed(dev) || isAllowedRoot(env, dev)) {
		return "", fmt.Sprintf("%s leads through a symbolic link to %s, outside the allowed roots", p, dev)
	}
	return host, ""
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

// devicePath maps a host path under env.Root back to a device path.
func devicePath(env *providers.Env, host string) string {
	rel, err := filepath.Rel(filepath.Clean(env.Root), host)
	if err != nil {
		return "/"
	}
	return path.Clean("/" + filepath.ToSlash(rel))
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
	users, err := loadDB(env, "/etc/passwd", 2)
	if err != nil {
		return nil, fmt.Errorf("observe files: %w", err)
	}
	groups, err := loadDB(env, "/etc/group", 2)
	if err != nil {
		return nil, fmt.Errorf("observe files: %w", err)
	}
	o := &Observed{Items: make(map[string]*ItemState, len(s.Items))}
	buf := make([]byte, 64<<10)
	desired := make(map[string]bool, len(s.Items))
	res := &resolver{env: env, parents: map[string]string{}}
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
		host, msg := res.confine(it.Path)
		if msg != "" {
			st.invalid = msg
			continue
		}
		if err := stat(st, host, !it.Absent && !it.Directory, buf, users, groups); err != nil {
			return nil, fmt.Errorf("observe files/%s: %w", name, err)
		}
	}
	if s.Prune {
		if err := o.observePrune(env, s, desired, users, groups); err != nil {
			return nil, err
		}
	}
	return o, nil
}

// observePrune finds what twinlet created, no longer desires and is still
// there, and marks directories that hold anything else as kept.
func (o *Observed) observePrune(env *providers.Env, s Spec, desired map[string]bool, users, groups *db) error {
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
		host, msg := confine(env, p)
		if msg != "" {
			if env.Logger != nil {
				env.Logger.Warn("files: not pruning a path that leaves the allowed roots", "path", p, "reason", msg)
			}
			continue
		}
		st := &ItemState{Path: p, wantUID: -1, wantGID: -1}
		if err := stat(st, host, false, nil, users, groups); err != nil {
			return fmt.Errorf("observe files: prune %s: %w", p, err)
		}
		if !st.Exists {
			continue
		}
		pr := pruned{st: st}
		if st.Kind == "directory" {
			ents, err := os.ReadDir(host)
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

// stat fills st from the host path; with hash it reads and hashes a
// regular file.
func stat(st *ItemState, host string, hash bool, buf []byte, users, groups *db) error {
	fi, err := os.Lstat(host)
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
	f, err := os.OpenFile(host, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer f.Close()
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
	host, msg := confine(env, d.path)
	if msg != "" {
		if d.pruned {
			return fmt.Errorf("apply files: prune %s", msg)
		}
		return providers.Invalid(ptr(d.item, "path"), "%s", msg)
	}
	var err error
	switch {
	case d.del:
		err = remove(host)
	case d.spec.Directory:
		err = mkdir(host, d)
	default:
		err = writeFile(env, host, d)
	}
	if err != nil {
		return fmt.Errorf("apply files/%s: %w", c.Item, err)
	}
	return nil
}

func remove(host string) error {
	fi, err := os.Lstat(host)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := os.Remove(host); err != nil {
		if fi.IsDir() && (errors.Is(err, syscall.ENOTEMPTY) || errors.Is(err, syscall.EEXIST)) {
			return fmt.Errorf("directory %s is not empty: it holds entries twinlet does not manage; not deleting it", host)
		}
		return err
	}
	return atomicfile.SyncDir(filepath.Dir(host))
}

func mkdir(host string, d op) error {
	fi, err := os.Lstat(host)
	switch {
	case err == nil && fi.Mode()&fs.ModeSymlink != 0:
		if err := os.Remove(host); err != nil {
			return err
		}
	case err == nil && !fi.IsDir():
		return fmt.Errorf("%s exists and is not a directory; not replacing it", d.path)
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return err
	}
	if err := os.MkdirAll(filepath.Dir(host), 0o755); err != nil {
		return err
	}
	if err := os.Mkdir(host, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	return fixMeta(host, d)
}

func writeFile(env *providers.Env, host string, d op) error {
	fi, err := os.Lstat(host)
	switch {
	case err == nil && fi.IsDir():
		return fmt.Errorf("%s is a directory; not replacing it with a file", d.path)
	case err == nil && fi.Mode().IsRegular() && (d.metaOnly || sameContent(host, d.spec.sum)):
		return fixMeta(host, d)
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return err
	case err == nil:
		// Replacing a file: keep the owner and group it had unless
		// they are managed.
		if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
			if d.uid < 0 {
				d.uid = int(sys.Uid)
			}
			if d.gid < 0 {
				d.gid = int(sys.Gid)
			}
		}
	}
	if err := os.MkdirAll(filepath.Dir(host), 0o755); err != nil {
		return err
	}
	// A new file is written with the final mode minus setuid/setgid,
	// which chown would clear anyway; fixMeta sets them after chown.
	if err := env.WriteFileAtomic(host, d.spec.Content, d.spec.Mode&os.ModePerm); err != nil {
		return err
	}
	return fixMeta(host, d)
}

func sameContent(host, sum string) bool {
	f, err := os.OpenFile(host, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return false
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return false
	}
	return hex.EncodeToString(h.Sum(nil)) == sum
}

// fixMeta sets owner, group and mode on host (never through a link).
// chmod comes after chown, which clears setuid and setgid.
func fixMeta(host string, d op) error {
	fi, err := os.Lstat(host)
	if err != nil {
		return err
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		return fmt.Errorf("%s became a symbolic link", d.path)
	}
	sys, _ := fi.Sys().(*syscall.Stat_t)
	chown := sys != nil && (d.uid >= 0 && int(sys.Uid) != d.uid || d.gid >= 0 && int(sys.Gid) != d.gid)
	if chown {
		if err := os.Lchown(host, d.uid, d.gid); err != nil {
			return err
		}
	}
	if chown || fi.Mode()&specialBits != d.spec.Mode {
		if err := os.Chmod(host, d.spec.Mode); err != nil {
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

// loadDB parses a colon-separated account file whose id is field idField;
// a missing file is empty.
func loadDB(env *providers.Env, p string, idField int) (*db, error) {
	host, err := env.ResolveFollow(p)
	if err != nil {
		return nil, err
	}
	d := &db{file: host, byName: map[string]int{}, byID: map[int]string{}}
	f, err := os.Open(host)
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

// WatchPaths implements providers.PathWatcher: the host paths of every
// item.
func (Provider) WatchPaths(env *providers.Env, spec providers.Spec) []string {
	s, _ := spec.(Spec)
	out := make([]string, 0, len(s.Items))
	for _, it := range s.Items {
		if host, err := env.Resolve(it.Path); err == nil {
			out = append(out, host)
		}
	}
	sort.Strings(out)
	return out
}
