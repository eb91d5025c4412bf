package users

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"

	"github.com/twinlet/twinlet/internal/accounts"
	"github.com/twinlet/twinlet/internal/accounts/accountstest"
	"github.com/twinlet/twinlet/providers"
	"github.com/twinlet/twinlet/providers/providertest"
)

const (
	edKey    = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHbPCaZAYsz2TUv97U4NLN5/QPn5uwc1jwpj9XVFkZ/G alice@laptop"
	ecdsaKey = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBE+y3yGneygoDwjxtChyc0y/iyrFmSicq46DESGLcS3zINghrSaJfmVfLmjwMg1FvVyZIYgNYLakyPECA3CHmPE= bob"
	// hash is a SHA-512 crypt hash made for these tests (openssl passwd -6 -salt twinlet.test twinlet).
	hash = "$6$twinlet.test$.b.XAToruA1lKwOXe3CQvAlMeZrMj7xZj0Pv7PnX9lFbF9uCdDrlg63Eyl49zH5973qygQCR7hjGT.RgOD/XN0"
)

func etc(t *testing.T, env *providers.Env, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(env.Root, "etc", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func line(t *testing.T, env *providers.Env, file, name string) string {
	t.Helper()
	for _, l := range strings.Split(etc(t, env, file), "\n") {
		if strings.HasPrefix(l, name+":") {
			return l
		}
	}
	return ""
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v: %s", name, args, err, out)
	}
}

func owner(t *testing.T, p string) (uid, gid int, mode os.FileMode) {
	t.Helper()
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return int(st.Uid), int(st.Gid), fi.Mode().Perm()
}

func TestRegistered(t *testing.T) {
	info, ok := providers.Lookup(ID)
	if !ok || info.Kind != providers.Collection || !reflect.DeepEqual(info.DependsOn, []string{"groups"}) {
		t.Fatalf("Lookup(%q) = %+v, %v", ID, info, ok)
	}
}

func TestDriftTimeline(t *testing.T) {
	p, env := New(), accountstest.NewEnv(t)
	run(t, "groupadd", "--root", env.Root, "--gid", "2000", "docker")
	raw := json.RawMessage(fmt.Sprintf(`{
		"alice": {"uid": 1001, "groups": ["docker", "users"], "shell": "/bin/bash", "authorizedKeys": [%q, %q], "passwordHash": %q},
		"svc": {"name": "svc.app", "system": true, "shell": "/usr/sbin/nologin", "home": "/var/lib/svc"},
		"docker": {"uid": 1002, "groups": []}
	}`, edKey, ecdsaKey, hash))
	changes := providertest.Converge(t, p, env, raw)
	want := []string{
		"+ alice: user alice uid 1001 groups docker,users shell /bin/bash",
		"~ alice/passwordHash: no password -> the hash from local policy",
		"+ alice/authorizedKeys: 2 keys",
		"+ docker: user docker uid 1002 groups (none)",
		"+ svc: user svc.app shell /usr/sbin/nologin home /var/lib/svc (system)",
	}
	if got := providertest.Lines(changes); !reflect.DeepEqual(got, want) {
		t.Fatalf("first plan\n%q\nwant\n%q", got, want)
	}
	for _, c := range changes {
		if strings.Contains(c.String(), "$6$") || strings.Contains(fmt.Sprintf("%+v %#v", c, c.Data), "twinlet.test") {
			t.Fatalf("a change shows the hash: %v", c)
		}
	}
	if got := line(t, env, "passwd", "alice"); got != "alice:x:1001:1001::/home/alice:/bin/bash" {
		t.Fatalf("passwd line %q", got)
	}
	if got := line(t, env, "passwd", "docker"); !strings.HasPrefix(got, "docker:x:1002:2000:") {
		t.Fatalf("docker joins the existing group of its name: %q", got)
	}
	if got := line(t, env, "passwd", "svc.app"); !strings.Contains(got, ":/var/lib/svc:/usr/sbin/nologin") || strings.Contains(got, ":1") {
		t.Fatalf("system user %q", got)
	}
	if _, err := os.Stat(filepath.Join(env.Root, "var/lib/svc")); !os.IsNotExist(err) {
		t.Fatalf("a system user got a home: %v", err)
	}
	if got := line(t, env, "shadow", "alice"); !strings.HasPrefix(got, "alice:"+hash+":") {
		t.Fatalf("shadow line %q", got)
	}
	keys := filepath.Join(env.Root, "home/alice/.ssh/authorized_keys")
	b, err := os.ReadFile(keys)
	if err != nil || string(b) != keysHeader+edKey+"\n"+ecdsaKey+"\n" {
		t.Fatalf("authorized_keys %q, %v", b, err)
	}
	if u, g, m := owner(t, keys); u != 1001 || g != 1001 || m != 0o600 {
		t.Fatalf("authorized_keys %d:%d %o", u, g, m)
	}
	if u, g, m := owner(t, filepath.Dir(keys)); u != 1001 || g != 1001 || m != 0o700 {
		t.Fatalf(".ssh %d:%d %o", u, g, m)
	}
	obs := providertest.ObserveJSON(t, p, env, raw)
	a := obs["alice"].(map[string]any)
	wantA := map[string]any{"name": "alice", "present": true, "uid": 1001.0, "primaryGroup": "alice", "groups": []any{"users", "docker"},
		"shell": "/bin/bash", "home": "/home/alice", "passwordSet": true, "authorizedKeys": 2.0}
	if !reflect.DeepEqual(a, wantA) {
		t.Fatalf("observed alice %v\nwant %v", a, wantA)
	}
	if js, _ := json.Marshal(obs); strings.Contains(string(js), "$6$") {
		t.Fatalf("observed shows the hash: %s", js)
	}

	// Behind twinlet's back: alice is deleted with userdel --root (her
	// home stays), docker is put into sudo, a key file is edited, and
	// svc.app gets another shell.
	run(t, "userdel", "--root", env.Root, "alice")
	run(t, "gpasswd", "-Q", env.Root, "-a", "docker", "sudo")
	run(t, "usermod", "--root", env.Root, "--shell", "/bin/sh", "svc.app")
	heal := providertest.Converge(t, p, env, raw)
	want = []string{
		"+ alice: user alice uid 1001 groups docker,users shell /bin/bash",
		"~ alice/passwordHash: no password -> the hash from local policy",
		"+ alice/authorizedKeys: 2 keys",
		"~ docker: groups sudo -> groups (none)",
		"~ svc: shell /bin/sh -> shell /usr/sbin/nologin",
	}
	if got := providertest.Lines(heal); !reflect.DeepEqual(got, want) {
		t.Fatalf("heal plan\n%q\nwant\n%q", got, want)
	}
	if got := line(t, env, "group", "sudo"); got != "sudo:x:27:" {
		t.Fatalf("sudo %q", got)
	}
	os.WriteFile(keys, []byte(edKey+"\nssh-ed25519 AAAAintruder\n"), 0o644)
	heal = providertest.Converge(t, p, env, raw)
	if got := providertest.Lines(heal); !reflect.DeepEqual(got, []string{"~ alice/authorizedKeys: 2 keys (other content, owner or mode) -> 2 keys"}) {
		t.Fatalf("keys heal plan %q", got)
	}
	if u, _, m := owner(t, keys); u != 1001 || m != 0o600 {
		t.Fatalf("authorized_keys %d %o", u, m)
	}
	// The home is deleted: it is made again (0700, alice's), with the keys.
	os.RemoveAll(filepath.Join(env.Root, "home/alice"))
	heal = providertest.Converge(t, p, env, raw)
	if got := providertest.Lines(heal); !reflect.DeepEqual(got, []string{"+ alice/home: directory /home/alice (0700)", "+ alice/authorizedKeys: 2 keys"}) {
		t.Fatalf("home heal plan %q", got)
	}
	if u, g, m := owner(t, filepath.Join(env.Root, "home/alice")); u != 1001 || g != 1001 || m != 0o700 {
		t.Fatalf("home %d:%d %o", u, g, m)
	}
	if left := providertest.PlanOnly(t, p, env, raw); len(left) != 0 {
		t.Fatalf("further plan %q", providertest.Lines(left))
	}

	// ensure: absent deletes with userdel; prune deletes what twinlet
	// created and no longer desires.
	gone := providertest.Converge(t, p, env, json.RawMessage(`{"prune": true, "alice": {"ensure": "absent"}, "docker": {}}`))
	if got := providertest.Lines(gone); !reflect.DeepEqual(got, []string{"- alice: user alice uid 1001", "- svc.app: user svc.app (pruned)"}) {
		t.Fatalf("delete plan %q", got)
	}
	if line(t, env, "passwd", "alice") != "" || line(t, env, "passwd", "svc.app") != "" || line(t, env, "passwd", "docker") == "" {
		t.Fatalf("passwd after delete:\n%s", etc(t, env, "passwd"))
	}
}

// TestKeysNeverOutsideTheUsersHome: a home that belongs to someone else
// (root's, through a home field) never receives keys, and a .ssh that is
// a link is not followed.
func TestKeysNeverOutsideTheUsersHome(t *testing.T) {
	p, env := New(), accountstest.NewEnv(t)
	os.MkdirAll(filepath.Join(env.Root, "root"), 0o700)
	raw := json.RawMessage(fmt.Sprintf(`{"eve": {"home": "/root", "createHome": false, "authorizedKeys": [%q]}}`, edKey))
	spec := providertest.Decode(t, p, env, raw)
	obs, err := p.Observe(context.Background(), env, spec)
	if err != nil {
		t.Fatal(err)
	}
	changes, err := p.Plan(spec, obs)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Apply(context.Background(), env, changes[0]); err != nil {
		t.Fatal(err)
	}
	err = p.Apply(context.Background(), env, changes[1])
	if err == nil || !strings.Contains(err.Error(), "does not belong to uid") {
		t.Fatalf("keys into /root: %v", err)
	}
	if _, err := os.Stat(filepath.Join(env.Root, "root/.ssh")); !os.IsNotExist(err) {
		t.Fatalf("/root/.ssh was created: %v", err)
	}

	// A user's .ssh replaced by a link to root's directory.
	env2 := accountstest.NewEnv(t)
	raw = json.RawMessage(fmt.Sprintf(`{"mallory": {"authorizedKeys": [%q]}}`, edKey))
	providertest.Converge(t, p, env2, raw)
	ssh := filepath.Join(env2.Root, "home/mallory/.ssh")
	os.RemoveAll(ssh)
	os.MkdirAll(filepath.Join(env2.Root, "root/.ssh"), 0o700)
	if err := os.Symlink("../../root/.ssh", ssh); err != nil {
		t.Fatal(err)
	}
	spec = providertest.Decode(t, p, env2, raw)
	obs, _ = p.Observe(context.Background(), env2, spec)
	changes, _ = p.Plan(spec, obs)
	if len(changes) != 1 {
		t.Fatalf("plan %q", providertest.Lines(changes))
	}
	if err := p.Apply(context.Background(), env2, changes[0]); err == nil || !strings.Contains(err.Error(), "symbolic link") {
		t.Fatalf("keys through a link: %v", err)
	}
	if _, err := os.Stat(filepath.Join(env2.Root, "root/.ssh/authorized_keys")); !os.IsNotExist(err) {
		t.Fatalf("keys written through the link: %v", err)
	}
}

// TestConflictsChangeNothing: a uid another user has and a shell that is
// not in etc/shells fail the plan, located, before anything changes.
func TestConflictsChangeNothing(t *testing.T) {
	p, env := New(), accountstest.NewEnv(t)
	before := etc(t, env, "passwd")
	raw := json.RawMessage(`{"ok": {"uid": 1500}, "clash": {"uid": 1}, "zsh": {"shell": "/bin/zsh"}}`)
	spec := providertest.Decode(t, p, env, raw)
	obs, err := p.Observe(context.Background(), env, spec)
	if err != nil {
		t.Fatal(err)
	}
	_, err = p.Plan(spec, obs)
	if got := providertest.Invalid(t, err); !reflect.DeepEqual(got, []string{"/clash/uid", "/zsh/shell"}) {
		t.Fatalf("pointers %q (%v)", got, err)
	}
	if !strings.Contains(err.Error(), "belongs to user daemon") || !strings.Contains(err.Error(), "not a login shell listed in /etc/shells") {
		t.Fatalf("messages: %v", err)
	}
	if etc(t, env, "passwd") != before {
		t.Fatal("etc/passwd changed")
	}
}

func TestInvalid(t *testing.T) {
	p, env := New(), providertest.NewEnv(t)
	for _, tc := range []struct{ raw, ptr string }{
		{`{"Alice": {}}`, "/Alice"},
		{`{"a": {"name": "1x"}}`, "/a/name"},
		{`{"a": {"name": "root:x"}}`, "/a/name"},
		{`{"a": {"name": "b"}, "b": {}}`, "/b"},
		{`{"a": {"uid": 5}, "b": {"uid": 5}}`, "/b/uid"},
		{`{"a": {"uid": 65535}}`, "/a/uid"},
		{`{"a": {"uid": 2147483648}}`, "/a/uid"},
		{`{"a": {"primaryGroup": "Staff"}}`, "/a/primaryGroup"},
		{`{"a": {"groups": ["ok", "x y"]}}`, "/a/groups/1"},
		{`{"a": {"groups": ["x", "x"]}}`, "/a/groups/1"},
		{`{"a": {"shell": "bash"}}`, "/a/shell"},
		{`{"a": {"home": "/home/a/../b"}}`, "/a/home"},
		{`{"a": {"home": "/home/a:b"}}`, "/a/home"},
		{`{"a": {"authorizedKeys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5 x", "` + edKey + `"]}}`, "/a/authorizedKeys/0"},
		{`{"a": {"authorizedKeys": ["` + edKey + `", "ssh-ed25519 !!!notbase64"]}}`, "/a/authorizedKeys/1"},
		{`{"a": {"authorizedKeys": ["ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIHbPCaZAYsz2TUv97U4NLN5/QPn5uwc1jwpj9XVFkZ/G"]}}`, "/a/authorizedKeys/0"},
		{`{"a": {"authorizedKeys": ["command=\"/bin/sh\" ` + edKey + `"]}}`, "/a/authorizedKeys/0"},
		{`{"a": {"authorizedKeys": ["ssh-dss AAAAB3NzaC1kc3M="]}}`, "/a/authorizedKeys/0"},
		{`{"a": {"authorizedKeys": ["` + edKey + `\nssh-ed25519 AAAA"]}}`, "/a/authorizedKeys/0"},
		{`{"a": {"passwordHash": "hunter2"}}`, "/a/passwordHash"},
		{`{"a": {"passwordHash": "$6$x$y:0:0"}}`, "/a/passwordHash"},
		{`{"a": {"ensure": "gone"}}`, "/a/ensure"},
		{`{"a": {"password": "x"}}`, "/a"},
		{`{"a.b": {}}`, "/a.b"},
	} {
		t.Run(tc.raw, func(t *testing.T) {
			_, err := p.Decode(env, json.RawMessage(tc.raw))
			if got := providertest.Invalid(t, err); !reflect.DeepEqual(got, []string{tc.ptr}) {
				t.Fatalf("pointers %q, want %q (%v)", got, tc.ptr, err)
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Fatalf("the error repeats the password: %v", err)
			}
		})
	}
}

func TestCloudScope(t *testing.T) {
	info, _ := providers.Lookup(ID)
	scoper := info.New().(providers.CloudScoper)
	twin := json.RawMessage(`{"prune": true,
		"alice": {"groups": ["docker", "sudo"], "shell": "/bin/bash"},
		"root": {"shell": "/bin/sh"},
		"toor": {"uid": 0},
		"w": {"name": "wheelie", "primaryGroup": "wheel"},
		"pw": {"passwordHash": "$6$a$b"},
		"ops-1": {}}`)
	pointers := func(r providers.ScopeRules) []string {
		var out []string
		for _, fe := range scoper.CloudScope(r, twin) {
			out = append(out, fe.Pointer)
		}
		return out
	}
	if got, want := pointers(providers.ScopeRules{Deny: info.CloudDeny}), []string{"/alice/groups/1", "/pw/passwordHash", "/root", "/toor/uid", "/w/primaryGroup"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("default scope forbids %q, want %q", got, want)
	}
	// Privileged lifts uid 0, root and the groups, never the password.
	if got, want := pointers(providers.ScopeRules{Deny: info.CloudDeny, Privileged: true}), []string{"/pw/passwordHash"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("privileged scope forbids %q, want %q", got, want)
	}
	// Name globs always apply; %-entries configure the groups.
	r := providers.ScopeRules{Deny: []string{"ops-*", "%docker"}, Allow: []string{"alice", "ops-*", "root", "toor", "pw", "wheelie"}}
	if got, want := pointers(r), []string{"/alice/groups/0", "/ops-1", "/pw/passwordHash", "/root", "/toor/uid"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("configured scope forbids %q, want %q", got, want)
	}
}

// TestAccountsRead checks the parser against a file the tools wrote.
func TestAccountsRead(t *testing.T) {
	env := accountstest.NewEnv(t)
	run(t, "useradd", "--root", env.Root, "--groups", "sudo,users", "zoe")
	root, err := env.OpenRoot()
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	db, err := accounts.Read(root, true)
	if err != nil {
		t.Fatal(err)
	}
	u := db.User("zoe")
	if u == nil || u.UID != 1000 || u.PasswordOK || !reflect.DeepEqual(db.SupplementaryGroups("zoe"), []string{"sudo", "users"}) {
		t.Fatalf("zoe %+v groups %v", u, db.SupplementaryGroups("zoe"))
	}
}

// TestMissingGroupIsTransient: a group that does not exist yet fails the
// change with a clear message and leaves the root alone; once the group
// exists, the same plan converges.
func TestMissingGroupIsTransient(t *testing.T) {
	p, env := New(), accountstest.NewEnv(t)
	raw := json.RawMessage(`{"ann": {"groups": ["video"]}}`)
	changes := providertest.PlanOnly(t, p, env, raw)
	err := p.Apply(context.Background(), env, changes[0])
	if err == nil || !strings.Contains(err.Error(), "group video does not exist") {
		t.Fatalf("apply: %v", err)
	}
	if line(t, env, "passwd", "ann") != "" {
		t.Fatal("ann was created")
	}
	run(t, "groupadd", "--root", env.Root, "video")
	providertest.Converge(t, p, env, raw)
	if got := line(t, env, "group", "video"); !strings.HasSuffix(got, ":ann") {
		t.Fatalf("video %q", got)
	}
}
