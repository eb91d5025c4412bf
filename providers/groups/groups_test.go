package groups

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/twinlet/twinlet/internal/accounts"
	"github.com/twinlet/twinlet/internal/accounts/accountstest"
	"github.com/twinlet/twinlet/providers"
	"github.com/twinlet/twinlet/providers/providertest"
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

func TestRegistered(t *testing.T) {
	info, ok := providers.Lookup(ID)
	if !ok || info.Kind != providers.Collection || !reflect.DeepEqual(info.CloudDeny, accounts.CloudDeny()) {
		t.Fatalf("Lookup(%q) = %+v, %v", ID, info, ok)
	}
}

func TestDriftTimeline(t *testing.T) {
	p, env := New(), accountstest.NewEnv(t)
	run(t, "useradd", "--root", env.Root, "--no-create-home", "alice")
	run(t, "useradd", "--root", env.Root, "--no-create-home", "bob")
	raw := json.RawMessage(`{
		"docker": {"gid": 2000, "members": ["alice", "bob", "carol"]},
		"kiosk": {"system": true},
		"dotted": {"name": "app.data", "gid": 2001, "members": []}
	}`)
	changes := providertest.Converge(t, p, env, raw)
	want := []string{"+ docker: group docker gid 2000 members alice,bob", "+ dotted: group app.data gid 2001 members (none)", "+ kiosk: group kiosk"}
	if got := providertest.Lines(changes); !reflect.DeepEqual(got, want) {
		t.Fatalf("first plan %q, want %q", got, want)
	}
	if got := line(t, env, "group", "docker"); got != "docker:x:2000:alice,bob" {
		t.Fatalf("group line %q", got)
	}
	if got := line(t, env, "gshadow", "docker"); !strings.HasSuffix(got, ":alice,bob") {
		t.Fatalf("gshadow line %q: gpasswd keeps gshadow in step", got)
	}
	obs := providertest.ObserveJSON(t, p, env, raw)
	d := obs["docker"].(map[string]any)
	if d["gid"] != 2000.0 || !reflect.DeepEqual(d["pendingMembers"], []any{"carol"}) {
		t.Fatalf("observed %v", d)
	}
	if k := obs["kiosk"].(map[string]any); k["gid"].(float64) >= 1000 {
		t.Fatalf("system group got gid %v", k["gid"])
	}

	// carol appears: the next pass adds her.
	run(t, "useradd", "--root", env.Root, "--no-create-home", "carol")
	if got := providertest.Lines(providertest.Converge(t, p, env, raw)); !reflect.DeepEqual(got, []string{"~ docker: members alice,bob -> members alice,bob,carol"}) {
		t.Fatalf("plan once carol exists %q", got)
	}

	// Behind twinlet's back: bob leaves docker, kiosk is deleted, the gid
	// of app.data changes.
	run(t, "gpasswd", "-Q", env.Root, "-d", "bob", "docker")
	run(t, "groupdel", "--root", env.Root, "kiosk")
	run(t, "groupmod", "--root", env.Root, "--gid", "2500", "app.data")
	heal := providertest.Converge(t, p, env, raw)
	want = []string{"~ docker: members alice,carol -> members alice,bob,carol", "~ dotted: gid 2500 -> gid 2001", "+ kiosk: group kiosk"}
	if got := providertest.Lines(heal); !reflect.DeepEqual(got, want) {
		t.Fatalf("heal plan %q, want %q", got, want)
	}
	if left := providertest.PlanOnly(t, p, env, raw); len(left) != 0 {
		t.Fatalf("further plan %q", providertest.Lines(left))
	}

	// ensure: absent deletes; prune deletes what twinlet created.
	gone := providertest.Converge(t, p, env, json.RawMessage(`{"prune": true, "docker": {"ensure": "absent"}, "dotted": {"name": "app.data"}}`))
	if got := providertest.Lines(gone); !reflect.DeepEqual(got, []string{"- docker: gid 2000 members alice,bob,carol", "- kiosk: group kiosk (pruned)"}) {
		t.Fatalf("delete plan %q", got)
	}
	if line(t, env, "group", "docker") != "" || line(t, env, "group", "kiosk") != "" || line(t, env, "group", "app.data") == "" {
		t.Fatalf("groups after delete:\n%s", etc(t, env, "group"))
	}
}

func TestGIDCollisionChangesNothing(t *testing.T) {
	p, env := New(), accountstest.NewEnv(t)
	before := etc(t, env, "group")
	spec := providertest.Decode(t, p, env, json.RawMessage(`{"ok": {"gid": 3000}, "web": {"gid": 27}}`))
	obs, err := p.Observe(context.Background(), env, spec)
	if err != nil {
		t.Fatal(err)
	}
	_, err = p.Plan(spec, obs)
	if got := providertest.Invalid(t, err); !reflect.DeepEqual(got, []string{"/web/gid"}) || !strings.Contains(err.Error(), "belongs to group sudo") {
		t.Fatalf("pointers %q (%v)", got, err)
	}
	if etc(t, env, "group") != before {
		t.Fatal("etc/group changed")
	}
}

func TestInvalid(t *testing.T) {
	p, env := New(), providertest.NewEnv(t)
	for _, tc := range []struct{ raw, ptr string }{
		{`{"Docker": {}}`, "/Docker"},
		{`{"a": {"name": "-x"}}`, "/a/name"},
		{`{"a": {"name": "x:y"}}`, "/a/name"},
		{`{"a": {"name": "b"}, "b": {}}`, "/b"},
		{`{"a": {"gid": 5}, "b": {"gid": 5}}`, "/b/gid"},
		{`{"a": {"gid": -1}}`, "/a/gid"},
		{`{"a": {"gid": 65535}}`, "/a/gid"},
		{`{"a": {"members": ["ok", "Not Ok"]}}`, "/a/members/1"},
		{`{"a": {"members": ["x", "x"]}}`, "/a/members/1"},
		{`{"a": {"ensure": "gone"}}`, "/a/ensure"},
		{`{"a": {"colour": "red"}}`, "/a"},
		{`{"a.b": {}}`, "/a.b"},
	} {
		t.Run(tc.raw, func(t *testing.T) {
			_, err := p.Decode(env, json.RawMessage(tc.raw))
			if got := providertest.Invalid(t, err); !reflect.DeepEqual(got, []string{tc.ptr}) {
				t.Fatalf("pointers %q, want %q (%v)", got, tc.ptr, err)
			}
		})
	}
}

func TestCloudScope(t *testing.T) {
	info, _ := providers.Lookup(ID)
	scoper := info.New().(providers.CloudScoper)
	twin := json.RawMessage(`{"prune": true, "docker": {"members": ["alice"]}, "sudo": {"members": ["alice"]},
		"zero": {"name": "zero", "gid": 0}, "w": {"name": "wheel"}, "app-x": {}}`)
	pointers := func(r providers.ScopeRules) []string {
		var out []string
		for _, fe := range scoper.CloudScope(r, twin) {
			out = append(out, fe.Pointer)
		}
		return out
	}
	if got, want := pointers(providers.ScopeRules{Deny: info.CloudDeny}), []string{"/sudo", "/w/name", "/zero/gid"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("default scope forbids %q, want %q", got, want)
	}
	if got := pointers(providers.ScopeRules{Deny: info.CloudDeny, Privileged: true}); len(got) != 0 {
		t.Fatalf("privileged scope forbids %q", got)
	}
	if got, want := pointers(providers.ScopeRules{Deny: append([]string{"app-*"}, info.CloudDeny...), Allow: []string{"docker", "app-*", "sudo"}, Privileged: true}), []string{"/app-x", "/w/name", "/zero/name"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("globs forbid %q, want %q", got, want)
	}
}
