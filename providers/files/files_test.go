package files

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/twinlet/twinlet/providers"
	"github.com/twinlet/twinlet/providers/providertest"
)

// newEnv returns an env whose root has passwd and group files with an
// "app" account (uid and gid 1234).
func newEnv(t testing.TB) *providers.Env {
	t.Helper()
	env := providertest.NewEnv(t)
	put(t, env, "/etc/passwd", "root:x:0:0:root:/root:/bin/sh\napp:x:1234:1234::/opt/app:/usr/sbin/nologin\n", 0o644)
	put(t, env, "/etc/group", "root:x:0:\napp:x:1234:\n", 0o644)
	return env
}

func put(t testing.TB, env *providers.Env, p, content string, mode os.FileMode) {
	t.Helper()
	host := filepath.Join(env.Root, p)
	if err := os.MkdirAll(filepath.Dir(host), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(host, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(host, mode); err != nil {
		t.Fatal(err)
	}
}

func get(t testing.TB, env *providers.Env, p string) (string, os.FileInfo) {
	t.Helper()
	host := filepath.Join(env.Root, p)
	fi, err := os.Lstat(host)
	if err != nil {
		t.Fatal(err)
	}
	if !fi.Mode().IsRegular() {
		return "", fi
	}
	b, err := os.ReadFile(host)
	if err != nil {
		t.Fatal(err)
	}
	return string(b), fi
}

func exists(env *providers.Env, p string) bool {
	_, err := os.Lstat(filepath.Join(env.Root, p))
	return err == nil
}

func owner(fi os.FileInfo) (int, int) {
	st := fi.Sys().(*syscall.Stat_t)
	return int(st.Uid), int(st.Gid)
}

func isRoot() bool { return os.Geteuid() == 0 }

func TestRegistered(t *testing.T) {
	if info, ok := providers.Lookup(ID); !ok || info.Kind != providers.Collection {
		t.Fatalf("Lookup(%q) = %+v, %v", ID, info, ok)
	}
}

const secret = "s3cr3t-token"

func timelineSection(owned bool) json.RawMessage {
	own := ""
	if owned {
		own = `, "owner": "app", "group": "app"`
	}
	return json.RawMessage(`{
		"__meta": {"deploymentId": "d1"},
		"reportingMode": "detailed",
		"motd": {"path": "/etc/motd", "content": "hello\n"},
		"token": {"path": "/etc/app/token", "contentBase64": "` + b64(secret) + `", "mode": "0600"` + own + `},
		"appDir": {"path": "/opt/app", "kind": "directory", "mode": "0750"` + own + `},
		"appConf": {"path": "/opt/app/app.conf", "content": "level=info\n", "mode": "0640"}
	}`)
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func TestDriftTimeline(t *testing.T) {
	p, env := New(), newEnv(t)
	raw := timelineSection(isRoot())
	first := providertest.Converge(t, p, env, raw)
	if len(first) != 4 {
		t.Fatalf("first plan %q", providertest.Lines(first))
	}
	for _, c := range first {
		if c.Action != providers.Create || c.Key == "" {
			t.Fatalf("want a Create with a Key: %+v", c)
		}
		if strings.Contains(c.String(), secret) || strings.Contains(c.String(), "hello") {
			t.Fatalf("plan line shows content: %s", c)
		}
	}
	var lines []string
	for _, c := range first {
		if c.Item == "motd" {
			lines = append(lines, c.String())
		}
	}
	if len(lines) != 1 || !strings.HasPrefix(lines[0], "+ motd: sha256:") || !strings.HasSuffix(lines[0], "… 6 B mode 0644") {
		t.Fatalf("plan lines %q", providertest.Lines(first))
	}
	if c, fi := get(t, env, "/etc/app/token"); c != secret || fi.Mode().Perm() != 0o600 {
		t.Fatalf("token: %q %v", c, fi.Mode())
	}
	if _, fi := get(t, env, "/opt/app"); !fi.IsDir() || fi.Mode().Perm() != 0o750 {
		t.Fatalf("/opt/app: %v", fi.Mode())
	}
	if isRoot() {
		if _, fi := get(t, env, "/etc/app/token"); !reflect.DeepEqual([]int{1234, 1234}, pair(owner(fi))) {
			t.Fatalf("token owner %v", pair(owner(fi)))
		}
	}

	obs := providertest.ObserveJSON(t, p, env, raw)
	if b, _ := json.Marshal(obs); strings.Contains(string(b), secret) || strings.Contains(string(b), b64(secret)) {
		t.Fatalf("observed leaks content: %s", b)
	}
	motd := obs["motd"].(map[string]any)
	want := map[string]any{"path": "/etc/motd", "exists": true, "kind": "file", "mode": "0644", "owner": motd["owner"], "group": motd["group"], "size": 6.0,
		"sha256": "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"}
	if len(obs) != 4 || !reflect.DeepEqual(motd, want) {
		t.Fatalf("observed %v", obs)
	}

	drifts := []struct {
		name  string
		root  bool // needs root to set up
		drift func(t *testing.T)
		want  []providers.Action
	}{
		{"content edited", false, func(t *testing.T) { put(t, env, "/etc/motd", "defaced\n", 0o644) }, []providers.Action{providers.Update}},
		{"mode loosened", false, func(t *testing.T) { os.Chmod(filepath.Join(env.Root, "/etc/app/token"), 0o644) }, []providers.Action{providers.Update}},
		{"owner changed", true, func(t *testing.T) { os.Lchown(filepath.Join(env.Root, "/etc/app/token"), 0, 0) }, []providers.Action{providers.Update}},
		{"file deleted", false, func(t *testing.T) { os.Remove(filepath.Join(env.Root, "/etc/motd")) }, []providers.Action{providers.Create}},
		{"file replaced by a link", false, func(t *testing.T) {
			host := filepath.Join(env.Root, "/etc/motd")
			os.Remove(host)
			if err := os.Symlink("/etc/passwd", host); err != nil {
				t.Fatal(err)
			}
		}, []providers.Action{providers.Update}},
		{"directory removed with its file", false, func(t *testing.T) { os.RemoveAll(filepath.Join(env.Root, "/opt/app")) }, []providers.Action{providers.Create, providers.Create}},
	}
	for _, d := range drifts {
		t.Run(d.name, func(t *testing.T) {
			if d.root && !isRoot() {
				t.Skip("needs root")
			}
			d.drift(t)
			heal := providertest.Converge(t, p, env, raw)
			var got []providers.Action
			for _, c := range heal {
				got = append(got, c.Action)
			}
			if !reflect.DeepEqual(got, d.want) {
				t.Fatalf("heal plan %q", providertest.Lines(heal))
			}
			if left := providertest.PlanOnly(t, p, env, raw); len(left) != 0 {
				t.Fatalf("further plan %q", providertest.Lines(left))
			}
		})
	}
	if c, fi := get(t, env, "/etc/motd"); c != "hello\n" || !fi.Mode().IsRegular() {
		t.Fatalf("motd %q %v", c, fi.Mode())
	}
	if c, _ := get(t, env, "/etc/passwd"); !strings.HasPrefix(c, "root:") {
		t.Fatalf("the link's target was written through: %q", c)
	}
}

func pair(a, b int) []int { return []int{a, b} }

func TestInvalid(t *testing.T) {
	p, env := New(), newEnv(t)
	if err := os.Symlink("/usr/bin", filepath.Join(env.Root, "/etc/bin")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../../../../../../../../..", filepath.Join(env.Root, "/etc/up")); err != nil {
		t.Fatal(err)
	}
	// A relative link that stays inside the allowed root is refused too:
	// files follows no link in a path, so the path as written is the one
	// the cloud scope judged (/etc/sshlink/x would be /etc/ssh/x).
	os.MkdirAll(filepath.Join(env.Root, "/etc/ssh"), 0o755)
	if err := os.Symlink("ssh", filepath.Join(env.Root, "/etc/sshlink")); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, raw, ptr string }{
		{"relative", `{"a": {"path": "etc/motd", "content": ""}}`, "/a/path"},
		{"dotdot", `{"a": {"path": "/etc/../root/x", "content": ""}}`, "/a/path"},
		{"not clean", `{"a": {"path": "/etc//motd", "content": ""}}`, "/a/path"},
		{"trailing slash", `{"a": {"path": "/etc/motd/", "content": ""}}`, "/a/path"},
		{"outside allowed roots", `{"a": {"path": "/usr/bin/sudo", "content": ""}}`, "/a/path"},
		{"prefix is not a parent", `{"a": {"path": "/etcetera/x", "content": ""}}`, "/a/path"},
		{"allowed root itself", `{"a": {"path": "/etc", "kind": "directory"}}`, "/a/path"},
		{"symlink escape", `{"a": {"path": "/etc/bin/sudo", "content": ""}}`, "/a/path"},
		{"symlink above the root", `{"a": {"path": "/etc/up/etc/x", "content": ""}}`, "/a/path"},
		{"symlink inside the allowed root", `{"a": {"path": "/etc/sshlink/sshd_config", "content": ""}}`, "/a/path"},
		{"no path", `{"a": {"content": ""}}`, "/a/path"},
		{"both contents", `{"a": {"path": "/etc/x", "content": "", "contentBase64": ""}}`, "/a/contentBase64"},
		{"no content", `{"a": {"path": "/etc/x"}}`, "/a/content"},
		{"directory with content", `{"a": {"path": "/etc/x", "kind": "directory", "content": "x"}}`, "/a/content"},
		{"bad base64", `{"a": {"path": "/etc/x", "contentBase64": "!!"}}`, "/a/contentBase64"},
		{"bad mode", `{"a": {"path": "/etc/x", "content": "", "mode": "0888"}}`, "/a/mode"},
		{"symbolic mode", `{"a": {"path": "/etc/x", "content": "", "mode": "rw-r--r--"}}`, "/a/mode"},
		{"bad owner", `{"a": {"path": "/etc/x", "content": "", "owner": "a b"}}`, "/a/owner"},
		{"bad group", `{"a": {"path": "/etc/x", "content": "", "group": "-x"}}`, "/a/group"},
		{"bad ensure", `{"a": {"path": "/etc/x", "content": "", "ensure": "gone"}}`, "/a/ensure"},
		{"bad kind", `{"a": {"path": "/etc/x", "kind": "fifo"}}`, "/a/kind"},
		{"unknown field", `{"a": {"path": "/etc/x", "content": "", "contents": ""}}`, "/a"},
		{"duplicate paths", `{"a": {"path": "/etc/x", "content": ""}, "b": {"path": "/etc/x", "ensure": "absent"}}`, "/b/path"},
		{"inside a file", `{"a": {"path": "/etc/x", "content": ""}, "b": {"path": "/etc/x/y", "content": ""}}`, "/b/path"},
		{"item name with a dot", `{"a.b": {"path": "/etc/x", "content": ""}}`, "/a.b"},
		{"pointer escaping", `{"a/b": {"path": "x", "content": ""}}`, "/a~1b/path"},
		{"prune not a bool", `{"prune": 1}`, "/prune"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := p.Decode(env, json.RawMessage(tc.raw))
			if got := providertest.Invalid(t, err); !reflect.DeepEqual(got, []string{tc.ptr}) {
				t.Fatalf("pointers %q, want %q (%v)", got, tc.ptr, err)
			}
		})
	}
}

func TestLinkPlantedAfterDecodeIsRefused(t *testing.T) {
	p, env := New(), newEnv(t)
	raw := json.RawMessage(`{"a": {"path": "/etc/app/x", "content": "x"}}`)
	spec := providertest.Decode(t, p, env, raw)
	if err := os.Symlink("/usr", filepath.Join(env.Root, "/etc/app")); err != nil {
		t.Fatal(err)
	}
	obs, err := p.Observe(t.Context(), env, spec)
	if err != nil {
		t.Fatal(err)
	}
	_, err = p.Plan(spec, obs)
	if got := providertest.Invalid(t, err); !reflect.DeepEqual(got, []string{"/a/path"}) {
		t.Fatalf("pointers %q", got)
	}
	if exists(env, "/usr/x") {
		t.Fatal("wrote through the link")
	}
}

func TestOwners(t *testing.T) {
	p, env := New(), newEnv(t)
	_, err := p.Observe(t.Context(), env, providertest.Decode(t, p, env, json.RawMessage(`{"a": {"path": "/etc/x", "content": "", "owner": "ghost"}}`)))
	var ie *providers.InvalidError
	if err == nil || errors.As(err, &ie) || !strings.Contains(err.Error(), `owner "ghost" not found in `+filepath.Join(env.Root, "/etc/passwd")) {
		t.Fatalf("want a transient owner-not-found error, got %v", err)
	}
	_, err = p.Observe(t.Context(), env, providertest.Decode(t, p, env, json.RawMessage(`{"a": {"path": "/etc/x", "content": "", "group": "ghosts"}}`)))
	if err == nil || !strings.Contains(err.Error(), `group "ghosts" not found`) {
		t.Fatalf("want a group-not-found error, got %v", err)
	}
	if !isRoot() {
		t.Skip("chown needs root")
	}
	providertest.Converge(t, p, env, json.RawMessage(`{"a": {"path": "/etc/x", "content": "", "owner": "4321", "group": "app", "mode": "4755"}}`))
	_, fi := get(t, env, "/etc/x")
	if u, g := owner(fi); u != 4321 || g != 1234 || fi.Mode()&os.ModeSetuid == 0 || fi.Mode().Perm() != 0o755 {
		t.Fatalf("owner %d:%d mode %v", u, g, fi.Mode())
	}
	obs := providertest.ObserveJSON(t, p, env, json.RawMessage(`{"a": {"path": "/etc/x", "content": "", "owner": "4321", "group": "app", "mode": "4755"}}`))
	if a := obs["a"].(map[string]any); a["owner"] != "4321" || a["group"] != "app" || a["mode"] != "4755" {
		t.Fatalf("observed %v", a)
	}
}

func TestPrune(t *testing.T) {
	p, env := New(), newEnv(t)
	put(t, env, "/etc/pre", "before twinlet\n", 0o644)
	put(t, env, "/usr/bin/tool", "binary", 0o755)
	providertest.Converge(t, p, env, json.RawMessage(`{
		"pre": {"path": "/etc/pre", "content": "managed\n"},
		"new": {"path": "/etc/new.conf", "content": "x"},
		"dir": {"path": "/opt/app", "kind": "directory"},
		"inner": {"path": "/opt/app/inner", "content": "x"},
		"data": {"path": "/srv/data", "kind": "directory"}
	}`))
	for _, k := range []string{"/etc/new.conf", "/opt/app", "/opt/app/inner", "/srv/data"} {
		if !env.Managed[k] {
			t.Fatalf("%s not recorded as managed: %v", k, env.Managed)
		}
	}
	if env.Managed["/etc/pre"] {
		t.Fatal("/etc/pre existed before twinlet but is recorded as created by it")
	}
	put(t, env, "/srv/data/user.txt", "the user's", 0o644) // not twinlet's
	// Entries that must never be pruned even if state says so.
	env.Managed["/usr/bin/tool"] = true
	if err := os.Symlink("/usr/bin", filepath.Join(env.Root, "/etc/bin")); err != nil {
		t.Fatal(err)
	}
	env.Managed["/etc/bin/tool"] = true

	// Without prune, leaving the desired state deletes nothing.
	if got := providertest.Converge(t, p, env, json.RawMessage(`{}`)); len(got) != 0 {
		t.Fatalf("plan without prune %q", providertest.Lines(got))
	}
	changes := providertest.Converge(t, p, env, json.RawMessage(`{"prune": true}`))
	if got := providertest.Lines(changes); len(got) != 3 ||
		!strings.HasPrefix(got[0], "- /opt/app/inner:") || !strings.HasPrefix(got[1], "- /opt/app:") || !strings.HasPrefix(got[2], "- /etc/new.conf:") {
		t.Fatalf("prune plan %q", got)
	}
	for p, want := range map[string]bool{
		"/etc/new.conf": false, "/opt/app": false,
		"/etc/pre": true, "/srv/data": true, "/srv/data/user.txt": true, "/usr/bin/tool": true,
	} {
		if exists(env, p) != want {
			t.Errorf("%s exists = %v, want %v", p, !want, want)
		}
	}
	if !env.Managed["/srv/data"] || env.Managed["/opt/app"] {
		t.Fatalf("managed %v", env.Managed)
	}
}

func TestAbsent(t *testing.T) {
	p, env := New(), newEnv(t)
	put(t, env, "/etc/legacy.conf", "old", 0o644)
	put(t, env, "/opt/full/keep", "x", 0o644)
	providertest.Converge(t, p, env, json.RawMessage(`{"legacy": {"path": "/etc/legacy.conf", "ensure": "absent"}, "gone": {"path": "/etc/never", "ensure": "absent"}}`))
	if exists(env, "/etc/legacy.conf") {
		t.Fatal("absent file still there")
	}
	raw := json.RawMessage(`{"full": {"path": "/opt/full", "kind": "directory", "ensure": "absent"}}`)
	changes := providertest.PlanOnly(t, p, env, raw)
	if len(changes) != 1 {
		t.Fatalf("plan %q", providertest.Lines(changes))
	}
	err := p.Apply(t.Context(), env, changes[0])
	if err == nil || !strings.Contains(err.Error(), "not empty") || !exists(env, "/opt/full/keep") {
		t.Fatalf("deleting a non-empty directory: %v", err)
	}
}

func TestAllowedRoots(t *testing.T) {
	p, env := New(), newEnv(t)
	env.AllowedRoots = []string{"/srv/kiosk"}
	providertest.Converge(t, p, env, json.RawMessage(`{"a": {"path": "/srv/kiosk/a", "content": "x"}}`))
	_, err := p.Decode(env, json.RawMessage(`{"a": {"path": "/etc/motd", "content": "x"}}`))
	if got := providertest.Invalid(t, err); !reflect.DeepEqual(got, []string{"/a/path"}) {
		t.Fatalf("pointers %q", got)
	}
}

// TestConfinementUnderSymlinkRace applies files 1,000 times while another
// goroutine keeps swapping a component of the items' paths between a
// directory and a symbolic link (absolute, or relative and climbing out)
// to a directory outside the root. The swap is one atomic
// renameat2(RENAME_EXCHANGE), so at every instant the component is either
// the real directory or the link. Whatever the interleaving, nothing may
// ever be created outside: every operation goes through the root handle
// and never follows a link in a path.
func TestConfinementUnderSymlinkRace(t *testing.T) {
	for _, component := range []string{"/etc/app", "/etc"} {
		t.Run(strings.TrimPrefix(component, "/"), func(t *testing.T) {
			p, env := New(), newEnv(t)
			outside := t.TempDir()
			host := filepath.Join(env.Root, component)
			alt := filepath.Join(filepath.Dir(host), ".swap")
			relOut, err := filepath.Rel(filepath.Dir(host), outside)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.MkdirAll(host, 0o755); err != nil {
				t.Fatal(err)
			}
			section := func(content string) json.RawMessage {
				return json.RawMessage(`{
					"conf": {"path": "/etc/app/conf", "kind": "directory", "mode": "0750"},
					"x": {"path": "/etc/app/conf/x", "content": "` + content + `", "mode": "0640"},
					"y": {"path": "/etc/app/y", "content": "` + content + `"},
					"gone": {"path": "/etc/app/old", "ensure": "absent"}
				}`)
			}
			specs := []providers.Spec{providertest.Decode(t, p, env, section("a")), providertest.Decode(t, p, env, section("b"))}
			// Changes planned before the race begins, applied during it.
			var planned [2][]providers.Change
			for i, spec := range specs {
				obs, err := p.Observe(t.Context(), env, spec)
				if err != nil {
					t.Fatal(err)
				}
				if planned[i], err = p.Plan(spec, obs); err != nil || len(planned[i]) != 3 {
					t.Fatalf("plan %q, %v", providertest.Lines(planned[i]), err)
				}
				planned[i] = append(planned[i], providers.Change{Action: providers.Delete, Item: "gone", Data: op{item: "gone", path: "/etc/app/old", del: true}})
			}

			stop := make(chan struct{})
			done := make(chan struct{})
			go func() { // owned by this test: stopped by stop, awaited on done
				defer close(done)
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					if fi, err := os.Lstat(alt); err != nil || fi.Mode()&os.ModeSymlink != 0 {
						// The directory is in place: pick the next link.
						os.Remove(alt)
						target := outside
						if i%4 == 1 {
							target = relOut
						}
						if err := os.Symlink(target, alt); err != nil {
							t.Error(err)
							return
						}
					}
					if err := unix.Renameat2(unix.AT_FDCWD, alt, unix.AT_FDCWD, host, unix.RENAME_EXCHANGE); err != nil {
						t.Error(err)
						return
					}
					runtime.Gosched()
				}
			}()
			applied, refused := 0, 0
			for i := range 1000 {
				var err error
				spec := specs[i%2]
				if i%4 < 2 {
					// The full reconcile path: observe, plan, apply.
					var changes []providers.Change
					var obs providers.Observed
					if obs, err = p.Observe(t.Context(), env, spec); err == nil {
						changes, err = p.Plan(spec, obs)
					}
					for _, c := range changes {
						if err = p.Apply(t.Context(), env, c); err != nil {
							break
						}
					}
				} else {
					for _, c := range planned[i%2] {
						if err = p.Apply(t.Context(), env, c); err != nil {
							break
						}
					}
				}
				if err == nil {
					applied++
				} else {
					refused++
				}
			}
			close(stop)
			<-done
			t.Logf("%d passes applied, %d refused", applied, refused)
			ents, err := os.ReadDir(outside)
			if err != nil {
				t.Fatal(err)
			}
			if len(ents) != 0 {
				t.Fatalf("created outside the root: %v", ents)
			}
		})
	}
}

func TestCloudScope(t *testing.T) {
	info, _ := providers.Lookup(ID)
	scoper, ok := info.New().(providers.CloudScoper)
	if !ok {
		t.Fatal("files does not implement providers.CloudScoper")
	}
	defaults := providers.ScopeRules{Deny: info.CloudDeny}
	twin := json.RawMessage(`{
		"prune": true,
		"motd": {"path": "/etc/motd", "content": "hi"},
		"keys": {"path": "/etc/ssh/sshd_config.d/10-cloud.conf", "content": "PermitRootLogin yes"},
		"sshDir": {"path": "/etc/ssh", "kind": "directory"},
		"sudo": {"path": "/etc/sudoers.d/cloud", "content": "ALL ALL=(ALL) NOPASSWD: ALL"},
		"sudoers": {"path": "/etc/sudoers", "ensure": "absent"},
		"self": {"path": "/etc/twinlet/twinlet.yaml", "content": ""},
		"unclean": {"path": "/etc//ssh/x", "content": ""},
		"rootHome": {"path": "/root/.ssh/authorized_keys", "content": "ssh-ed25519 AAAA"},
		"cron": {"path": "/etc/cron.d/x", "content": "* * * * * root sh"},
		"suid": {"path": "/opt/app/tool", "content": "#!", "mode": "4755"},
		"sgid": {"path": "/opt/app/tool2", "content": "#!", "mode": "2755"},
		"plain": {"path": "/opt/app/tool3", "content": "#!", "mode": "0755"},
		"notAnItem": 7
	}`)
	pointers := func(fes []providers.FieldError) []string {
		var out []string
		for _, fe := range fes {
			out = append(out, fe.Pointer)
		}
		return out
	}
	want := []string{"/cron/path", "/keys/path", "/rootHome/path", "/self/path", "/sgid/mode", "/sshDir/path", "/sudo/path", "/sudoers/path", "/suid/mode", "/unclean/path"}
	got := scoper.CloudScope(defaults, twin)
	if !reflect.DeepEqual(pointers(got), want) {
		t.Fatalf("forbidden %q, want %q", pointers(got), want)
	}
	if !strings.Contains(got[1].Message, `"/etc/ssh/**"`) {
		t.Errorf("message does not name the glob: %s", got[1].Message)
	}
	// The config's rules replace the defaults: an operator can open a
	// path deliberately, and allow narrows what is left.
	open := providers.ScopeRules{Deny: []string{"/etc/sudoers*/**"}, Allow: []string{"/etc/**", "/opt/app/**"}, Privileged: true}
	got = scoper.CloudScope(open, twin)
	if want := []string{"/rootHome/path", "/sudo/path", "/sudoers/path"}; !reflect.DeepEqual(pointers(got), want) {
		t.Fatalf("forbidden %q, want %q", pointers(got), want)
	}
	if !strings.Contains(got[0].Message, "only") {
		t.Errorf("allow message: %s", got[0].Message)
	}
	if got := scoper.CloudScope(providers.ScopeRules{}, json.RawMessage(`not json`)); got != nil {
		t.Fatalf("malformed twin: %v", got)
	}
}
