// Package accounts reads a root's account databases (etc/passwd, etc/group,
// etc/shadow, etc/shells) through a providers.Dir and runs the shadow
// tools (useradd, usermod, groupadd, …) on that root, for the users and
// groups providers. Nothing here edits an account database by hand: every
// change goes through the shadow tools, which lock the files and keep
// passwd, shadow, group and gshadow consistent.
package accounts

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"

	"github.com/twinlet/twinlet/providers"
)

// User is one line of etc/passwd.
type User struct {
	Name       string
	UID, GID   int
	Home       string
	Shell      string
	PasswordOK bool // filled by ReadShadow: a usable hash is set
}

// Group is one line of etc/group.
type Group struct {
	Name    string
	GID     int
	Members []string
}

// DB is a root's account databases, parsed.
type DB struct {
	Users  []*User
	Groups []*Group
	// Hashes maps user names to their shadow hash. It is never reported
	// nor logged: callers compare it and keep a boolean.
	Hashes map[string]string
	// Shells are the lines of etc/shells; nil when the file is missing.
	Shells map[string]bool

	users  map[string]*User
	groups map[string]*Group
}

// User returns the user with the name.
func (d *DB) User(name string) *User { return d.users[name] }

// Group returns the group with the name.
func (d *DB) Group(name string) *Group { return d.groups[name] }

// UserByUID returns the first user with the uid.
func (d *DB) UserByUID(uid int) *User {
	for _, u := range d.Users {
		if u.UID == uid {
			return u
		}
	}
	return nil
}

// GroupByGID returns the first group with the gid.
func (d *DB) GroupByGID(gid int) *Group {
	for _, g := range d.Groups {
		if g.GID == gid {
			return g
		}
	}
	return nil
}

// SupplementaryGroups returns the names of the groups that list name as
// a member, in file order.
func (d *DB) SupplementaryGroups(name string) []string {
	out := []string{}
	for _, g := range d.Groups {
		for _, m := range g.Members {
			if m == name {
				out = append(out, g.Name)
				break
			}
		}
	}
	return out
}

// Read parses etc/passwd, etc/group and etc/shells of root, and with
// shadow also etc/shadow. Missing files are empty. Lines that are not
// well formed (NIS "+" lines, junk) are skipped.
func Read(root *providers.Dir, shadow bool) (*DB, error) {
	d := &DB{users: map[string]*User{}, groups: map[string]*Group{}, Hashes: map[string]string{}}
	b, err := root.ReadFileIfExists("etc/passwd")
	if err != nil {
		return nil, fmt.Errorf("read /etc/passwd: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Split(line, ":")
		if len(f) != 7 || f[0] == "" || strings.HasPrefix(f[0], "+") || strings.HasPrefix(f[0], "-") {
			continue
		}
		uid, err1 := strconv.Atoi(f[2])
		gid, err2 := strconv.Atoi(f[3])
		if err1 != nil || err2 != nil {
			continue
		}
		u := &User{Name: f[0], UID: uid, GID: gid, Home: f[5], Shell: f[6]}
		d.Users = append(d.Users, u)
		if d.users[u.Name] == nil {
			d.users[u.Name] = u
		}
	}
	b, err = root.ReadFileIfExists("etc/group")
	if err != nil {
		return nil, fmt.Errorf("read /etc/group: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Split(line, ":")
		if len(f) != 4 || f[0] == "" || strings.HasPrefix(f[0], "+") || strings.HasPrefix(f[0], "-") {
			continue
		}
		gid, err := strconv.Atoi(f[2])
		if err != nil {
			continue
		}
		g := &Group{Name: f[0], GID: gid, Members: []string{}}
		for _, m := range strings.Split(f[3], ",") {
			if m = strings.TrimSpace(m); m != "" {
				g.Members = append(g.Members, m)
			}
		}
		d.Groups = append(d.Groups, g)
		if d.groups[g.Name] == nil {
			d.groups[g.Name] = g
		}
	}
	b, err = root.ReadFileIfExists("etc/shells")
	if err != nil {
		return nil, fmt.Errorf("read /etc/shells: %w", err)
	}
	if b != nil {
		d.Shells = map[string]bool{}
		for _, line := range strings.Split(string(b), "\n") {
			if line = strings.TrimSpace(line); line != "" && line[0] != '#' {
				d.Shells[line] = true
			}
		}
	}
	if shadow {
		b, err = root.ReadFileIfExists("etc/shadow")
		if err != nil {
			return nil, fmt.Errorf("read /etc/shadow: %w", err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Split(line, ":")
			if len(f) < 2 || f[0] == "" {
				continue
			}
			d.Hashes[f[0]] = f[1]
			if u := d.users[f[0]]; u != nil {
				u.PasswordOK = HashUsable(f[1])
			}
		}
	}
	return d, nil
}

// HashUsable reports whether a shadow hash field lets someone log in with
// a password: not empty, not locked ("!…") and not "*" or "x".
func HashUsable(h string) bool {
	return h != "" && h[0] != '!' && h[0] != '*' && h != "x"
}

var nameRE = regexp.MustCompile(`^[a-z_][a-z0-9_.-]*\$?$`)

// CheckName says what is wrong with a user or group name: shadow's
// portable rules (a lower-case letter or '_' first, then lower-case
// letters, digits, '_', '.', '-', an optional final '$'), at most 32
// characters, not all digits.
func CheckName(name string) error {
	switch {
	case name == "":
		return errors.New("a name is required")
	case len(name) > 32:
		return fmt.Errorf("%q is longer than 32 characters", name)
	case !nameRE.MatchString(name):
		return fmt.Errorf("%q is not a valid account name (a lower-case letter or '_' first, then lower-case letters, digits, '_', '.' or '-', optionally a final '$')", name)
	}
	return nil
}

// rootFlag is how each tool names its chroot option.
var rootFlag = map[string]string{"gpasswd": "-Q"}

// Run runs a shadow tool on env's root: with "--root <root>" (gpasswd:
// "-Q <root>") unless the root is the running system. Arguments are an
// argv, never a shell string.
func Run(ctx context.Context, env *providers.Env, tool string, args ...string) error {
	argv := rootArgs(env, tool, args)
	if _, err := env.Runner.Run(ctx, tool, argv...); err != nil {
		return err
	}
	return nil
}

func rootArgs(env *providers.Env, tool string, args []string) []string {
	if env.IsHostRoot() {
		return args
	}
	flag := rootFlag[tool]
	if flag == "" {
		flag = "--root"
	}
	return append([]string{flag, env.Root}, args...)
}

// SetHash sets a user's password hash with "chpasswd -e", which reads it
// from standard input, so that the hash is never on a command line (where
// any local user could read it in /proc).
func SetHash(ctx context.Context, env *providers.Env, user, hash string) error {
	cmd := exec.CommandContext(ctx, "chpasswd", rootArgs(env, "chpasswd", []string{"-e"})...)
	cmd.Stdin = strings.NewReader(user + ":" + hash + "\n")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		// chpasswd's messages name the line, never the hash.
		return fmt.Errorf("run chpasswd: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// WatchPaths are the host paths whose changes concern accounts.
func WatchPaths(env *providers.Env) []string {
	return []string{env.HostPath("/etc/passwd"), env.HostPath("/etc/group"), env.HostPath("/etc/shadow"), env.HostPath("/etc/gshadow")}
}

// PrivilegedGroups are the groups whose membership hands out root or
// reads of every secret on the device; the default cloud-scope denials
// of the users and groups sections name them as "%group".
var PrivilegedGroups = []string{"root", "sudo", "wheel", "adm", "shadow", "disk"}

// CloudDeny is the default cloud-scope deny list of both sections: "%g"
// entries name groups (a twin may not put anyone into them nor change
// them), plain entries name the section's items.
func CloudDeny() []string {
	out := make([]string, 0, len(PrivilegedGroups))
	for _, g := range PrivilegedGroups {
		out = append(out, "%"+g)
	}
	return out
}

// ScopeCheck applies cloud-scope rules to one name. With group, name is
// a group that the twin would put someone into or change, checked
// against the "%" entries of the rules (which Privileged lifts);
// otherwise it is an item name of the section (a user of users, a group
// of groups), checked against the plain entries, which always apply. It
// returns a sentence for __errors and true when the twin may not do it.
func ScopeCheck(rules providers.ScopeRules, name string, group bool) (string, bool) {
	if group && rules.Privileged {
		return "", false
	}
	var r providers.ScopeRules
	for _, g := range rules.Deny {
		if strings.HasPrefix(g, "%") == group {
			r.Deny = append(r.Deny, strings.TrimPrefix(g, "%"))
		}
	}
	for _, g := range rules.Allow {
		if strings.HasPrefix(g, "%") == group {
			r.Allow = append(r.Allow, strings.TrimPrefix(g, "%"))
		}
	}
	if !group {
		return r.Forbids(name, '/')
	}
	for _, g := range r.Deny {
		if providers.MatchGlob(g, name, '/') {
			return fmt.Sprintf("the cloud scope keeps the twin from giving anyone group %s (denied by %q) unless the scope is privileged; only local policy may", name, "%"+g), true
		}
	}
	if len(r.Allow) == 0 {
		return "", false
	}
	for _, g := range r.Allow {
		if providers.MatchGlob(g, name, '/') {
			return "", false
		}
	}
	return fmt.Sprintf("the cloud scope lets the twin give only the groups it allows with %%-entries; %s is not among them, only local policy may", name), true
}
