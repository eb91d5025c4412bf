package packages

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/twinlet/twinlet/providers"
	"github.com/twinlet/twinlet/providers/packages/debtest"
	"github.com/twinlet/twinlet/providers/providertest"
)

// fixture is a sandbox root with its own dpkg database and a flat file
// repository of small packages built with dpkg-deb.
type fixture struct {
	env  *providers.Env
	repo *debtest.Repo
}

var (
	libgreet = debtest.Deb{Name: "libgreet", Version: "1.0-1"}
	hello3   = debtest.Deb{Name: "hello", Version: "2.10-3", Depends: "libgreet (>= 1.0)",
		Postinst: `echo configured > "$DPKG_ROOT/tmp/hello-configured"`}
	hello2 = debtest.Deb{Name: "hello", Version: "2.10-2", Depends: "libgreet (>= 1.0)"}
	bad    = debtest.Deb{Name: "bad", Version: "1.0", Postinst: `echo "bad: cannot start the frobnicator" >&2; exit 3`}
	// slow's postinst waits until the test lets it go, so that the test
	// sees progress while the install is under way.
	slow = debtest.Deb{Name: "slow", Version: "1.0",
		Postinst: `while [ ! -e "$DPKG_ROOT/tmp/go" ]; do sleep 0.05; done`}
	base = debtest.Deb{Name: "base-stuff", Version: "1", Essential: true}
)

func newFixture(t *testing.T, debs ...debtest.Deb) *fixture {
	t.Helper()
	debtest.Require(t)
	if len(debs) == 0 {
		debs = []debtest.Deb{libgreet, hello3, hello2, bad, slow, base}
	}
	env := providertest.NewEnv(t)
	debtest.InitRoot(t, env.Root)
	return &fixture{env: env, repo: debtest.NewRepo(t, debs...)}
}

// section returns a section with the test repository as a trusted flat
// source and the given items.
func (f *fixture) section(items string) json.RawMessage {
	src := fmt.Sprintf(`"sources": {"local": {"uri": %q, "suite": "./", "trusted": true}}`, f.repo.URI())
	if items == "" {
		return json.RawMessage("{" + src + "}")
	}
	return json.RawMessage("{" + src + ", " + items + "}")
}

func lines(changes []providers.Change) string { return strings.Join(providertest.Lines(changes), "\n") }

func TestDriftTimeline(t *testing.T) {
	f := newFixture(t)
	p := New()
	raw := f.section(`"hello": {"version": "2.10-3", "hold": true}`)

	// 1. A fresh root: the source is written, the lists updated, hello
	// installed with its dependency and held.
	plan := providertest.PlanOnly(t, p, f.env, raw)
	want := "+ sources/local: /etc/apt/sources.list.d/twinlet-local.sources: " + f.repo.URI() + " ./\n" +
		"~ lists: package lists -> apt-get update\n" +
		"+ hello: install hello 2.10-3 (held)"
	if got := lines(plan); got != want {
		t.Fatalf("plan:\n%s\nwant:\n%s", got, want)
	}
	if len(debtest.Installed(t, f.env.Root)) != 0 {
		t.Fatal("plan installed something")
	}
	providertest.Converge(t, p, f.env, raw)
	got := debtest.Installed(t, f.env.Root)
	if got["hello"] != "2.10-3 hold ok installed" || got["libgreet"] != "1.0-1 install ok installed" {
		t.Fatalf("installed: %v", got)
	}
	if _, err := os.Stat(filepath.Join(f.env.Root, "tmp/hello-configured")); err != nil {
		t.Fatalf("hello's postinst did not run in the root: %v", err)
	}
	src, _ := os.ReadFile(filepath.Join(f.env.Root, "etc/apt/sources.list.d/twinlet-local.sources"))
	if !strings.Contains(string(src), "URIs: "+f.repo.URI()+"\nSuites: ./\nTrusted: yes\n") {
		t.Fatalf("sources file:\n%s", src)
	}
	obs := providertest.ObserveJSON(t, p, f.env, raw)
	item := obs["hello"].(map[string]any)
	if item["version"] != "2.10-3" || item["status"] != "installed" || item["held"] != true {
		t.Fatalf("observed hello: %v", item)
	}
	inst := obs["__installed"].(map[string]any)
	if inst["packages"] != 2.0 || !strings.HasPrefix(inst["fingerprint"].(string), "sha256:") {
		t.Fatalf("installed set: %v", inst)
	}
	fp1 := inst["fingerprint"]

	// 2. Behind twinlet's back: hello removed. The plan puts it back.
	debtest.Dpkg(t, f.env.Root, "-r", "hello")
	plan = providertest.PlanOnly(t, p, f.env, raw)
	if got := lines(plan); got != "+ hello: install hello 2.10-3 (held)" {
		t.Fatalf("plan after tampering: %s", got)
	}
	if fp := providertest.ObserveJSON(t, p, f.env, raw)["__installed"].(map[string]any)["fingerprint"]; fp == fp1 {
		t.Fatal("the fingerprint did not change with the installed set")
	}
	providertest.Converge(t, p, f.env, raw)
	if fp := providertest.ObserveJSON(t, p, f.env, raw)["__installed"].(map[string]any)["fingerprint"]; fp != fp1 {
		t.Fatalf("the same set has another fingerprint: %v, %v", fp, fp1)
	}

	// 3. Behind twinlet's back: released. The plan holds it again.
	if err := newTools(f.env).setHold(context.Background(), "hello", false); err != nil {
		t.Fatal(err)
	}
	if got := lines(providertest.PlanOnly(t, p, f.env, raw)); got != "~ hello: hello 2.10-3 -> hello 2.10-3 (held)" {
		t.Fatalf("plan after unhold: %s", got)
	}
	providertest.Converge(t, p, f.env, raw)

	// 4. A downgrade of the held package, then its removal.
	raw = f.section(`"hello": {"version": "2.10-2", "hold": true}`)
	if got := lines(providertest.PlanOnly(t, p, f.env, raw)); got != "~ hello: hello 2.10-3 (held) -> hello 2.10-2 (held)" {
		t.Fatalf("plan of the downgrade: %s", got)
	}
	providertest.Converge(t, p, f.env, raw)
	if got := debtest.Installed(t, f.env.Root)["hello"]; got != "2.10-2 hold ok installed" {
		t.Fatalf("after the downgrade: %s", got)
	}
	raw = f.section(`"hello": {"ensure": "absent"}`)
	if got := lines(providertest.PlanOnly(t, p, f.env, raw)); got != "- hello: remove hello 2.10-2" {
		t.Fatalf("plan of the removal: %s", got)
	}
	providertest.Converge(t, p, f.env, raw)
	if got := debtest.Installed(t, f.env.Root); got["hello"] != "" || got["libgreet"] == "" {
		t.Fatalf("after the removal: %v", got)
	}

	// 5. Prune: a package twinlet installed leaves the section.
	raw = f.section(`"libgreet": {}`)
	providertest.Converge(t, p, f.env, raw) // libgreet is already there: nothing to do, not twinlet's
	raw = f.section(`"hello": {}`)
	providertest.Converge(t, p, f.env, raw)
	raw = json.RawMessage(strings.Replace(string(f.section("")), "{", `{"prune": true, `, 1))
	if got := lines(providertest.PlanOnly(t, p, f.env, raw)); got != "- hello: remove hello (pruned)" {
		t.Fatalf("plan of the prune: %s", got)
	}
	providertest.Converge(t, p, f.env, raw)
}

func TestUnknownPackageIsLocatedAndChangesNothing(t *testing.T) {
	f := newFixture(t)
	p := New()
	// On a fresh root the lists are updated first; the unknown package
	// fails the update step, before anything is installed.
	raw := f.section(`"hello": {}, "nosuch": {}`)
	plan := providertest.PlanOnly(t, p, f.env, raw)
	providertest.Apply(t, p, f.env, plan[:1]) // the source file
	err := p.Apply(context.Background(), f.env, plan[1])
	if got := providertest.Invalid(t, err); !reflect.DeepEqual(got, []string{"/nosuch/name"}) {
		t.Fatalf("pointers %v (%v)", got, err)
	}
	if len(debtest.Installed(t, f.env.Root)) != 0 {
		t.Fatal("something was installed")
	}
	// With fresh lists, Plan itself refuses.
	providertest.Converge(t, p, f.env, f.section(`"hello": {}`))
	before := debtest.Installed(t, f.env.Root)
	spec := providertest.Decode(t, p, f.env, f.section(`"hello": {"version": "9.9-9"}, "nosuch": {}, "bad": {}`))
	obs, err := p.Observe(context.Background(), f.env, spec)
	if err != nil {
		t.Fatal(err)
	}
	_, err = p.Plan(spec, obs)
	if got := providertest.Invalid(t, err); !reflect.DeepEqual(got, []string{"/hello/version", "/nosuch/name"}) {
		t.Fatalf("pointers %v (%v)", got, err)
	}
	if !strings.Contains(err.Error(), "available: 2.10-2, 2.10-3") && !strings.Contains(err.Error(), "available: 2.10-3, 2.10-2") {
		t.Fatalf("message: %v", err)
	}
	if after := debtest.Installed(t, f.env.Root); !reflect.DeepEqual(before, after) {
		t.Fatalf("changed: %v -> %v", before, after)
	}
}

func TestFailingPostinst(t *testing.T) {
	f := newFixture(t)
	p := New()
	raw := f.section(`"bad": {}`)
	plan := providertest.PlanOnly(t, p, f.env, raw)
	providertest.Apply(t, p, f.env, plan[:2])
	err := p.Apply(context.Background(), f.env, plan[2])
	if err == nil {
		t.Fatal("a failing postinst succeeded")
	}
	msg := err.Error()
	for _, want := range []string{"apply packages/bad", "bad: installed bad package post-installation script subprocess returned error exit status 3"} {
		if !strings.Contains(msg, want) {
			t.Fatalf("error %q does not say %q", msg, want)
		}
	}
	var inv *providers.InvalidError
	if errors.As(err, &inv) {
		t.Fatal("a failing postinst is not invalid input")
	}
	// The package is left half-configured; the next plan configures it
	// again (and fails again, until the package is fixed).
	if got := lines(providertest.PlanOnly(t, p, f.env, raw)); got != "~ bad: bad 1.0 (half-configured) -> reconfigure" {
		t.Fatalf("plan: %s", got)
	}
	obs := providertest.ObserveJSON(t, p, f.env, raw)
	if st := obs["bad"].(map[string]any)["status"]; st != "half-configured" {
		t.Fatalf("status %v", st)
	}
}

func TestLockHeldIsBusy(t *testing.T) {
	f := newFixture(t)
	p := New()
	raw := f.section(`"hello": {}`)
	plan := providertest.PlanOnly(t, p, f.env, raw)
	providertest.Apply(t, p, f.env, plan[:2])
	// Someone else (an unattended upgrade) holds dpkg's frontend lock, as
	// apt takes it: an fcntl write lock.
	lock, err := os.OpenFile(filepath.Join(f.env.Root, "var/lib/dpkg/lock-frontend"), os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		t.Fatal(err)
	}
	fl := syscall.Flock_t{Type: syscall.F_WRLCK, Whence: 0}
	if err := syscall.FcntlFlock(lock.Fd(), syscall.F_SETLK, &fl); err != nil {
		t.Fatal(err)
	}
	err = p.Apply(context.Background(), f.env, plan[2])
	var busy *providers.BusyError
	if !errors.As(err, &busy) || busy.Reason != "LockHeld" || busy.RetryAfter != LockRetryAfter || !strings.Contains(err.Error(), "lock") {
		t.Fatalf("want a LockHeld BusyError, got %T: %v", err, err)
	}
	if len(debtest.Installed(t, f.env.Root)) != 0 {
		t.Fatal("installed while the lock was held")
	}
	lock.Close() // releases the lock
	providertest.Converge(t, p, f.env, raw)
}

// A long install reports progress while it is under way, and is stopped
// (dpkg and the script too) when its deadline passes; the next reconcile
// finishes it.
func TestLongInstallProgressAndTimeout(t *testing.T) {
	f := newFixture(t)
	p := New()
	raw := f.section(`"slow": {}`)
	plan := providertest.PlanOnly(t, p, f.env, raw)
	providertest.Apply(t, p, f.env, plan[:2])

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	var steps []string
	f.env.OnProgress = func(step string, done, total int) {
		mu.Lock()
		defer mu.Unlock()
		steps = append(steps, fmt.Sprintf("%s %d/%d", step, done, total))
		if strings.Contains(step, "Configuring slow") {
			cancel() // the deadline passes while the postinst runs
		}
	}
	err := p.Apply(ctx, f.env, plan[2])
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("want the install cancelled, got %v", err)
	}
	mu.Lock()
	got := strings.Join(steps, "\n")
	mu.Unlock()
	for _, want := range []string{"slow: install slow 0/100", "slow: Unpacking slow (", "slow: Configuring slow ("} {
		if !strings.Contains(got, want) {
			t.Fatalf("progress does not show %q:\n%s", want, got)
		}
	}
	f.env.OnProgress = nil
	// Killed in the middle: the package is not configured. Once the
	// script can finish, the next reconcile configures it (dpkg's lock
	// was released with the killed process group).
	if err := os.WriteFile(filepath.Join(f.env.Root, "tmp/go"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if got := lines(providertest.PlanOnly(t, p, f.env, raw)); !strings.Contains(got, "reconfigure") {
		t.Fatalf("plan after the timeout: %s", got)
	}
	providertest.Converge(t, p, f.env, raw)
	if got := debtest.Installed(t, f.env.Root)["slow"]; got != "1.0 install ok installed" {
		t.Fatalf("slow: %q", got)
	}
}

func TestEssentialPackages(t *testing.T) {
	f := newFixture(t)
	p := New()
	providertest.Converge(t, p, f.env, f.section(`"base": {"name": "base-stuff"}`))
	spec := providertest.Decode(t, p, f.env, f.section(`"base": {"name": "base-stuff", "ensure": "absent"}`))
	obs, err := p.Observe(context.Background(), f.env, spec)
	if err != nil {
		t.Fatal(err)
	}
	_, err = p.Plan(spec, obs)
	if got := providertest.Invalid(t, err); !reflect.DeepEqual(got, []string{"/base/ensure"}) {
		t.Fatalf("pointers %v (%v)", got, err)
	}
	raw := f.section(`"base": {"name": "base-stuff", "ensure": "absent", "allowEssential": true}`)
	providertest.Converge(t, p, f.env, raw)
	if debtest.Installed(t, f.env.Root)["base-stuff"] != "" {
		t.Fatal("not removed")
	}
}

func TestKeysAndSources(t *testing.T) {
	debtest.Require(t)
	p := New()
	env := providertest.NewEnv(t)
	debtest.InitRoot(t, env.Root)
	key := "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmDMEZx\n-----END PGP PUBLIC KEY BLOCK-----"
	raw := json.RawMessage(fmt.Sprintf(`{"keys": {"corp": {"armored": %q}},
	  "sources": {"corp": {"uri": "https://apt.example.com/debian", "suite": "bookworm", "components": ["main", "contrib"], "signedBy": "corp", "architectures": ["amd64"]}}}`, key))
	plan := providertest.PlanOnly(t, p, env, raw)
	if len(plan) != 3 || plan[0].Item != "keys/corp" || plan[1].Item != "sources/corp" || plan[2].Item != "lists" {
		t.Fatalf("plan:\n%s", lines(plan))
	}
	// The lists are not updated here (no network in tests): apply the
	// files only.
	providertest.Apply(t, p, env, plan[:2])
	b, _ := os.ReadFile(filepath.Join(env.Root, "etc/apt/sources.list.d/twinlet-corp.sources"))
	// Not the running system: the key is in the file itself (apt would
	// read a Signed-By path from the host).
	want := "Types: deb\nURIs: https://apt.example.com/debian\nSuites: bookworm\nComponents: main contrib\nArchitectures: amd64\n" +
		"Signed-By:\n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n mDMEZx\n -----END PGP PUBLIC KEY BLOCK-----\n"
	if !strings.HasSuffix(string(b), want) {
		t.Fatalf("sources file:\n%s", b)
	}
	// On the running system, the keyring's path.
	host := providertest.NewEnv(t)
	host.Root = "/"
	if got := renderSource("corp", providertest.Decode(t, p, host, raw).(Spec).Sources["corp"]); !strings.HasSuffix(string(got), "Architectures: amd64\nSigned-By: /etc/apt/keyrings/twinlet-corp.asc\n") {
		t.Fatalf("sources file on /:\n%s", got)
	}
	if k, _ := os.ReadFile(filepath.Join(env.Root, "etc/apt/keyrings/twinlet-corp.asc")); string(k) != key+"\n" {
		t.Fatalf("key file: %q", k)
	}
	// apt itself reads the file we wrote.
	res := newTools(env).run(context.Background(), "apt-get", []string{"-q", "--print-uris", "update"}, nil, nil)
	if res.err != nil || !strings.Contains(res.stdout, "https://apt.example.com/debian/dists/bookworm/InRelease") {
		t.Fatalf("apt-get --print-uris update: %v\n%s%s", res.err, res.stdout, res.stderr)
	}
	// Tampered with: rewritten.
	os.WriteFile(filepath.Join(env.Root, "etc/apt/sources.list.d/twinlet-corp.sources"), []byte("Types: deb\n"), 0o644)
	plan = providertest.PlanOnly(t, p, env, raw)
	if len(plan) != 2 || plan[0].Action != providers.Update || plan[0].Item != "sources/corp" {
		t.Fatalf("plan after tampering:\n%s", lines(plan))
	}
	// Removed, and pruned.
	raw = json.RawMessage(`{"prune": true, "sources": {"corp": {"ensure": "absent"}}}`)
	plan = providertest.PlanOnly(t, p, env, raw)
	if got := lines(plan); got != "- sources/corp: /etc/apt/sources.list.d/twinlet-corp.sources\n- etc/apt/keyrings/twinlet-corp.asc: /etc/apt/keyrings/twinlet-corp.asc (pruned)\n~ lists: package lists -> apt-get update" {
		t.Fatalf("plan of the removal:\n%s", got)
	}
	providertest.Apply(t, p, env, plan[:2])
	for _, f := range []string{"etc/apt/sources.list.d/twinlet-corp.sources", "etc/apt/keyrings/twinlet-corp.asc"} {
		if _, err := os.Stat(filepath.Join(env.Root, f)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s: %v", f, err)
		}
	}
}

func TestInvalidInput(t *testing.T) {
	p := New()
	env := providertest.NewEnv(t)
	key := `"-----BEGIN PGP PUBLIC KEY BLOCK-----\nx\n-----END PGP PUBLIC KEY BLOCK-----"`
	for _, tc := range []struct {
		doc  string
		ptrs []string
	}{
		{`{"Hello": {}}`, []string{"/Hello"}},
		{`{"h": {"name": "hello world"}}`, []string{"/h/name"}},
		{`{"h": {"name": "hello", "version": "abc"}}`, []string{"/h/version"}},
		{`{"h": {"name": "hello", "version": "1.0-"}}`, []string{"/h/version"}},
		{`{"h": {"name": "hello", "version": "a:1.0"}}`, []string{"/h/version"}},
		{`{"h": {"name": "hello", "ensure": "absent", "hold": true}}`, []string{"/h/hold"}},
		{`{"h": {"name": "hello", "ensure": "absent", "version": "1.0"}}`, []string{"/h/version"}},
		{`{"h": {"name": "hello", "ensure": "latest"}}`, []string{"/h/ensure"}},
		{`{"h": {"name": "hello", "colour": "red"}}`, []string{"/h"}},
		{`{"a": {"name": "hello"}, "b": {"name": "hello"}}`, []string{"/b/name"}},
		{`{"sources": {"s": {"uri": "ftp://x/debian", "suite": "bookworm", "components": ["main"]}}}`, []string{"/sources/s/uri"}},
		{`{"sources": {"s": {"uri": "https://user:pw@x/debian", "suite": "bookworm", "components": ["main"]}}}`, []string{"/sources/s/uri"}},
		{`{"sources": {"s": {"uri": "https://x/debian", "suite": "bookworm"}}}`, []string{"/sources/s/components"}},
		{`{"sources": {"s": {"uri": "https://x/debian", "suite": "./", "components": ["main"]}}}`, []string{"/sources/s/components"}},
		{`{"sources": {"s": {"uri": "https://x/debian", "suite": "bookworm", "components": ["main"], "signedBy": "nokey"}}}`, []string{"/sources/s/signedBy"}},
		{`{"sources": {"s.1": {"uri": "https://x/debian", "suite": "bookworm", "components": ["main"]}}}`, []string{"/sources/s.1"}},
		{`{"keys": {"k": {"armored": "hello"}}}`, []string{"/keys/k/armored"}},
		{`{"keys": {"k": {"armored": "-----BEGIN PGP PUBLIC KEY BLOCK-----\nx\rTypes: deb\n-----END PGP PUBLIC KEY BLOCK-----"}}}`, []string{"/keys/k/armored"}},
		{`{"keys": {"k": {"armored": "-----BEGIN PGP PRIVATE KEY BLOCK-----\nx\n-----END PGP PRIVATE KEY BLOCK-----"}}}`, []string{"/keys/k/armored"}},
		{`{"keys": {"k": {"armored": ` + key + `}}, "sources": {"s": {"uri": "https://x/d", "suite": "s", "components": ["main"], "signedBy": "k", "trusted": true}}}`, []string{"/sources/s/trusted"}},
	} {
		t.Run(tc.doc, func(t *testing.T) {
			_, err := p.Decode(env, json.RawMessage(tc.doc))
			if got := providertest.Invalid(t, err); !reflect.DeepEqual(got, tc.ptrs) {
				t.Fatalf("pointers %v, want %v (%v)", got, tc.ptrs, err)
			}
		})
	}
	// Valid ones.
	for _, doc := range []string{
		`{"hello": {}, "py": {"name": "python3.11", "version": "3.11.2-6+deb12u1"}, "e": {"name": "libc6:amd64", "version": "1:2.36-9~bpo1"}}`,
		`{"keys": {"k": {"armored": ` + key + `}}, "sources": {"s": {"uri": ["https://a/d", "https://b/d"], "suite": ["bookworm", "bookworm-updates"], "components": ["main"], "signedBy": "k"}}}`,
		`{"sources": {"s": {"ensure": "absent"}}, "keys": {"k": {"ensure": "absent"}}}`,
	} {
		if _, err := p.Decode(env, json.RawMessage(doc)); err != nil {
			t.Errorf("%s: %v", doc, err)
		}
	}
}

func TestCloudScope(t *testing.T) {
	twin := json.RawMessage(`{"hello": {}, "curl": {"ensure": "absent"}, "lib": {"name": "libgreet"},
	  "base": {"name": "base-files", "ensure": "absent", "allowEssential": true},
	  "sources": {"local": {"uri": "file:/srv/repo", "suite": "./", "trusted": true}}}`)
	p := Provider{}
	ptrs := func(fes []providers.FieldError) []string {
		var out []string
		for _, fe := range fes {
			out = append(out, fe.Pointer)
		}
		return out
	}
	// Default: any package, but no essential removals and no unsigned
	// sources without privilege.
	if got := ptrs(p.CloudScope(providers.ScopeRules{}, twin)); !reflect.DeepEqual(got, []string{"/base/allowEssential", "/sources/local/trusted"}) {
		t.Fatalf("default scope: %v", got)
	}
	if got := p.CloudScope(providers.ScopeRules{Privileged: true}, twin); len(got) != 0 {
		t.Fatalf("privileged: %v", got)
	}
	got := ptrs(p.CloudScope(providers.ScopeRules{Allow: []string{"hello", "lib*", "sources/*"}, Deny: []string{"libgreet"}, Privileged: true}, twin))
	if !reflect.DeepEqual(got, []string{"/base/name", "/curl/name", "/lib/name"}) {
		t.Fatalf("allowlist: %v", got)
	}
}

func TestParsePolicy(t *testing.T) {
	out := `hello:
  Installed: 2.10-2
  Candidate: 2.10-3
  Version table:
     2.10-3 500
        500 file:/repo ./ Packages
 *** 2.10-2 100
        100 /var/lib/dpkg/status
virt:
  Installed: (none)
  Candidate: (none)
  Version table:
libc6:amd64:
  Installed: (none)
  Candidate: 2.36-9
  Version table:
     2.36-9 500
        500 http://deb.debian.org/debian bookworm/main amd64 Packages
`
	got := parsePolicy(out)
	if c := got["hello"]; c.candidate != "2.10-3" || !reflect.DeepEqual(c.versions, []string{"2.10-3", "2.10-2"}) {
		t.Fatalf("hello: %+v", c)
	}
	if c, ok := got["virt"]; !ok || c.candidate != "" || len(c.versions) != 0 {
		t.Fatalf("virt: %+v", c)
	}
	if got["libc6:amd64"].candidate != "2.36-9" || got["libc6"].candidate != "2.36-9" {
		t.Fatalf("libc6: %+v", got)
	}
}

func TestNotADebianRoot(t *testing.T) {
	debtest.Require(t)
	env := providertest.NewEnv(t)
	p := New()
	spec := providertest.Decode(t, p, env, json.RawMessage(`{"hello": {}}`))
	_, err := p.Observe(context.Background(), env, spec)
	if err == nil || !strings.Contains(err.Error(), "no dpkg database") {
		t.Fatalf("observe of an empty root: %v", err)
	}
}

// dpkg refuses to remove a package others depend on (apt would remove
// them too): the section fails with dpkg's reason, and nothing is removed.
func TestRemoveWithDependents(t *testing.T) {
	f := newFixture(t, libgreet, hello3)
	p := New()
	providertest.Converge(t, p, f.env, f.section(`"hello": {}`))
	plan := providertest.PlanOnly(t, p, f.env, f.section(`"libgreet": {"ensure": "absent"}`))
	if got := lines(plan); got != "- libgreet: remove libgreet 1.0-1" {
		t.Fatalf("plan: %s", got)
	}
	err := p.Apply(context.Background(), f.env, plan[0])
	if err == nil || !strings.Contains(err.Error(), "hello depends on libgreet (>= 1.0)") || !strings.Contains(err.Error(), "apply packages/libgreet") {
		t.Fatalf("want dpkg's reason, got %v", err)
	}
	if got := debtest.Installed(t, f.env.Root); got["hello"] == "" || got["libgreet"] == "" {
		t.Fatalf("removed: %v", got)
	}
}

// A dpkg run cut off by a kill leaves its journal behind, and apt refuses
// to go on ("dpkg was interrupted"): the next install finishes it with
// dpkg --configure -a, as dpkg asks, then installs.
func TestInterruptedDpkgIsFinished(t *testing.T) {
	f := newFixture(t, libgreet, hello3)
	p := New()
	raw := f.section(`"hello": {}`)
	providertest.Converge(t, p, f.env, raw)
	debtest.Dpkg(t, f.env.Root, "-r", "hello")
	// What a killed dpkg leaves: a pending journal entry.
	if err := os.WriteFile(filepath.Join(f.env.Root, "var/lib/dpkg/updates/0000"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	providertest.Converge(t, p, f.env, raw)
	if got := debtest.Installed(t, f.env.Root)["hello"]; got != "2.10-3 install ok installed" {
		t.Fatalf("hello: %q", got)
	}
}

// TestObserveHostRoot observes the running system's own dpkg database
// (root "/", so dpkg-query without --admindir), read-only: the dpkg
// package, with the version it has, is observed as installed and needs
// nothing. Nothing is planned that would run, and nothing is applied.
func TestObserveHostRoot(t *testing.T) {
	debtest.Require(t)
	out, err := exec.Command("dpkg-query", "-W", "-f", "${Version}", "dpkg").Output()
	if err != nil || len(out) == 0 {
		t.Skipf("this machine's dpkg database has no dpkg package: %v", err)
	}
	env := providertest.NewEnv(t)
	env.Root = "/"
	p := New()
	raw := json.RawMessage(fmt.Sprintf(`{"dpkg": {"version": %q}}`, out))
	obs := providertest.ObserveJSON(t, p, env, raw)
	item := obs["dpkg"].(map[string]any)
	if item["version"] != string(out) || item["status"] != "installed" || item["essential"] != true {
		t.Fatalf("observed dpkg on /: %v", item)
	}
	if inst := obs["__installed"].(map[string]any); inst["packages"].(float64) < 1 {
		t.Fatalf("installed set of /: %v", inst)
	}
	if got := providertest.PlanOnly(t, p, env, raw); len(got) != 0 {
		t.Fatalf("plan on /: %s", lines(got))
	}
}

// TestSignedSource: a source signed by a key item verifies with apt's
// own signature check (no trusted: yes) on a sandbox root, and hello
// installs from it; a repository signed by another key fails the update
// of the lists with apt's reason, and nothing is installed from it.
func TestSignedSource(t *testing.T) {
	debtest.Require(t)
	corp, other := debtest.NewSigner(t), debtest.NewSigner(t)
	env := providertest.NewEnv(t)
	debtest.InitRoot(t, env.Root)
	repo := debtest.NewRepo(t, debtest.Deb{Name: "hello", Version: "1.0"})
	repo.Sign(t, corp)
	p := New()
	section := func(uri string, items string) json.RawMessage {
		return json.RawMessage(fmt.Sprintf(`{"keys": {"corp": {"armored": %q}},
		  "sources": {"corp": {"uri": %q, "suite": "./", "signedBy": "corp"}}%s}`, corp.Armored, uri, items))
	}
	providertest.Converge(t, p, env, section(repo.URI(), `, "hello": {}`))
	if got := debtest.Installed(t, env.Root)["hello"]; got != "1.0 install ok installed" {
		t.Fatalf("hello from the signed source: %q", got)
	}
	if m, _ := filepath.Glob(filepath.Join(env.Root, "var/lib/apt/lists/*InRelease")); len(m) != 1 {
		t.Fatalf("apt kept no verified InRelease: %v", m)
	}

	evil := debtest.NewRepo(t, debtest.Deb{Name: "hello", Version: "9.0"}, debtest.Deb{Name: "rootkit", Version: "1.0"})
	evil.Sign(t, other)
	raw := section(evil.URI(), `, "rootkit": {}`)
	plan := providertest.PlanOnly(t, p, env, raw)
	if got := lines(plan); !strings.Contains(got, "~ lists: package lists -> apt-get update") {
		t.Fatalf("plan: %s", got)
	}
	var err error
	for _, c := range plan {
		if err = p.Apply(context.Background(), env, c); err != nil {
			break
		}
	}
	if err == nil || !strings.Contains(err.Error(), "NO_PUBKEY") {
		t.Fatalf("want apt's signature failure, got %v", err)
	}
	if got := debtest.Installed(t, env.Root); got["rootkit"] != "" || got["hello"] != "1.0 install ok installed" {
		t.Fatalf("installed from a repository signed by another key: %v", got)
	}
}
