package services

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/twinlet/twinlet/providers"
	"github.com/twinlet/twinlet/providers/providertest"
)

// needSystemctl skips a test when systemctl is not installed.
func needSystemctl(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath("systemctl"); err != nil {
		t.Skip("systemctl is not installed: run `make systemd-tools` (apt-get install systemd)")
	}
}

const unitFile = "[Unit]\nDescription=%s\n[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n"

// newRoot returns an Env on a temporary root that holds vendor unit files
// for the names given, as a package would install them.
func newRoot(t testing.TB, units ...string) *providers.Env {
	t.Helper()
	needSystemctl(t)
	env := providertest.NewEnv(t)
	dir := filepath.Join(env.Root, "usr/lib/systemd/system")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(env.Root, "etc/systemd/system"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, u := range units {
		content := strings.Replace(unitFile, "%s", u, 1)
		if strings.HasPrefix(u, "static") {
			content = "[Service]\nExecStart=/bin/true\n"
		}
		if err := os.WriteFile(filepath.Join(dir, u), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return env
}

func systemctlRoot(t *testing.T, env *providers.Env, args ...string) string {
	t.Helper()
	out, err := exec.Command("systemctl", append([]string{"--root=" + env.Root}, args...)...).CombinedOutput()
	if err != nil && args[0] != "is-enabled" {
		t.Fatalf("systemctl %v: %v: %s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

func TestRegistered(t *testing.T) {
	info, ok := providers.Lookup(ID)
	if !ok || info.Kind != providers.Collection {
		t.Fatalf("not registered as a collection: %+v", info)
	}
	if !reflect.DeepEqual(info.DependsOn, []string{"files", "packages"}) {
		t.Fatalf("DependsOn = %v", info.DependsOn)
	}
}

// TestDriftTimeline enables, disables and masks units and writes a
// drop-in on a temporary root with the real systemctl --root; then
// tampers behind twinlet's back (a unit disabled, the drop-in edited, a
// masked unit unmasked) and converges again.
func TestDriftTimeline(t *testing.T) {
	env := newRoot(t, "web.service", "worker.service", "bt.service", "static-helper.service")
	systemctlRoot(t, env, "enable", "worker.service")
	p := New()
	raw := json.RawMessage(`{
	  "web":    {"enabled": true, "state": "running"},
	  "worker": {"unit": "worker.service", "enabled": false},
	  "bt":     {"unit": "bt.service", "masked": true},
	  "helper": {"unit": "static-helper.service", "enabled": true},
	  "dropIns": {"limits": {"unit": "web.service", "content": "[Service]\nLimitNOFILE=65536\n"}}
	}`)

	// 1. twinlet plan shows each step as a diff line.
	got := providertest.Lines(providertest.PlanOnly(t, p, env, raw))
	want := []string{
		"+ dropIns/limits: /etc/systemd/system/web.service.d/limits.conf sha256:" + sum([]byte("[Service]\nLimitNOFILE=65536\n"))[7:19] + "… 28 B",
		"~ bt: bt.service disabled -> masked",
		"~ web: web.service disabled -> enabled",
		"~ worker: worker.service enabled -> disabled",
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("plan:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	// 2. Converge, and the real systemctl agrees.
	providertest.Converge(t, p, env, raw)
	for unit, state := range map[string]string{"web.service": "enabled", "worker.service": "disabled", "bt.service": "masked", "static-helper.service": "static"} {
		if s := systemctlRoot(t, env, "is-enabled", unit); s != state {
			t.Errorf("%s is %q, want %q", unit, s, state)
		}
	}
	b, err := os.ReadFile(filepath.Join(env.Root, "etc/systemd/system/web.service.d/limits.conf"))
	if err != nil || string(b) != "[Service]\nLimitNOFILE=65536\n" {
		t.Fatalf("drop-in: %q %v", b, err)
	}
	obs := providertest.ObserveJSON(t, p, env, raw)
	web := obs["web"].(map[string]any)
	if web["enabled"] != "enabled" || web["active"] != "unknown" || !strings.Contains(web["message"].(string), "not observable") {
		t.Errorf("web observed: %v", web)
	}
	if d := obs["dropIns"].(map[string]any)["limits"].(map[string]any); d["exists"] != true || d["path"] != "/etc/systemd/system/web.service.d/limits.conf" {
		t.Errorf("drop-in observed: %v", d)
	}

	// 3. Tamper behind twinlet's back.
	systemctlRoot(t, env, "disable", "web.service")
	systemctlRoot(t, env, "unmask", "bt.service")
	if err := os.WriteFile(filepath.Join(env.Root, "etc/systemd/system/web.service.d/limits.conf"), []byte("[Service]\nLimitNOFILE=1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	got = providertest.Lines(providertest.Converge(t, p, env, raw))
	if len(got) != 3 || !strings.HasPrefix(got[0], "~ dropIns/limits: sha256:") || got[1] != "~ bt: bt.service disabled -> masked" || got[2] != "~ web: web.service disabled -> enabled" {
		t.Fatalf("drift not healed as expected:\n%s", strings.Join(got, "\n"))
	}
	if s := systemctlRoot(t, env, "is-enabled", "web.service"); s != "enabled" {
		t.Fatalf("web.service is %q after converging again", s)
	}

	// 4. Unmask, delete the drop-in: masked false unmasks.
	raw2 := json.RawMessage(`{"bt": {"unit": "bt.service", "masked": false},
	  "dropIns": {"limits": {"unit": "web.service", "ensure": "absent"}}}`)
	got = providertest.Lines(providertest.Converge(t, p, env, raw2))
	if !reflect.DeepEqual(got, []string{"- dropIns/limits: /etc/systemd/system/web.service.d/limits.conf", "~ bt: bt.service masked -> unmasked"}) {
		t.Fatalf("unmask and delete: %v", got)
	}
	if s := systemctlRoot(t, env, "is-enabled", "bt.service"); s != "disabled" {
		t.Fatalf("bt.service is %q", s)
	}
}

// TestInstancesAndMissingUnits: an instance of a template is observed
// with is-enabled (list-unit-files does not list instances) and enabled;
// a unit without a unit file is reported not-found and enabling it fails
// (transiently: a package may bring it), while masking it works.
func TestInstancesAndMissingUnits(t *testing.T) {
	env := newRoot(t, "agent@.service")
	p := New()
	raw := json.RawMessage(`{"a1": {"unit": "agent@one.service", "enabled": true}, "ghost": {"masked": true}}`)
	providertest.Converge(t, p, env, raw)
	if s := systemctlRoot(t, env, "is-enabled", "agent@one.service"); s != "enabled" {
		t.Fatalf("instance is %q", s)
	}
	if s := systemctlRoot(t, env, "is-enabled", "ghost.service"); s != "masked" {
		t.Fatalf("ghost is %q", s)
	}
	raw = json.RawMessage(`{"missing": {"enabled": true}}`)
	obs := providertest.ObserveJSON(t, p, env, raw)
	if m := obs["missing"].(map[string]any); m["enabled"] != "not-found" {
		t.Fatalf("missing unit observed as %v", m)
	}
	changes := providertest.PlanOnly(t, p, env, raw)
	if len(changes) != 1 {
		t.Fatalf("plan %v", changes)
	}
	err := p.Apply(context.Background(), env, changes[0])
	var inv *providers.InvalidError
	if err == nil || errorsAs(err, &inv) || !strings.Contains(err.Error(), "missing.service") {
		t.Fatalf("enabling a unit that has no file: %v", err)
	}
}

func errorsAs(err error, target **providers.InvalidError) bool {
	ie, ok := err.(*providers.InvalidError)
	if ok {
		*target = ie
	}
	return ok
}

// filesBody is what the files section reports for an item, as
// Env.DependencyObserved hands it over.
func filesBody(items map[string]string) func(string) (json.RawMessage, bool) {
	return func(section string) (json.RawMessage, bool) {
		if section != "files" || items == nil {
			return nil, false
		}
		m := map[string]any{}
		for name, sha := range items {
			m[name] = map[string]any{"path": "/etc/" + name, "exists": true, "kind": "file", "mode": "0644", "sha256": sha}
		}
		b, _ := json.Marshal(m)
		return b, true
	}
}

// TestRestartOnOffline: without a running systemd nothing is restarted;
// a files item's new fingerprint is recorded once, in the state
// directory, and survives a new provider (an agent restart).
func TestRestartOnOffline(t *testing.T) {
	env := newRoot(t, "web.service")
	raw := json.RawMessage(`{"web": {"enabled": true, "restartOn": ["webConf"]}}`)

	// The files section not observed yet: unknown, nothing planned.
	obs := providertest.ObserveJSON(t, New(), env, raw)
	if rs := obs["web"].(map[string]any)["restartOn"].(map[string]any); rs["webConf"] != "unknown" {
		t.Fatalf("restartOn without files: %v", rs)
	}

	env.DependencyObserved = filesBody(map[string]string{"webConf": "sha256:aaaa"})
	got := providertest.Lines(providertest.Converge(t, New(), env, raw))
	if len(got) != 2 || !strings.Contains(got[1], "restartOn files/webConf none→sha256:") || !strings.Contains(got[1], "nothing to restart") {
		t.Fatalf("first sight: %v", got)
	}
	if _, err := os.Stat(filepath.Join(env.StateDir, RecordFile)); err != nil {
		t.Fatal(err)
	}
	// A new provider (the agent restarted) finds the record.
	if c := providertest.PlanOnly(t, New(), env, raw); len(c) != 0 {
		t.Fatalf("after a restart of the agent: %v", providertest.Lines(c))
	}
	env.DependencyObserved = filesBody(map[string]string{"webConf": "sha256:bbbb"})
	if got := providertest.Lines(providertest.Converge(t, New(), env, raw)); len(got) != 1 || !strings.HasPrefix(got[0], "~ web: restartOn files/webConf sha256:") {
		t.Fatalf("changed file: %v", got)
	}
	// The files section has no such item: located, terminal.
	env.DependencyObserved = filesBody(map[string]string{"other": "sha256:cccc"})
	p := New()
	spec := providertest.Decode(t, p, env, raw)
	o, err := p.Observe(context.Background(), env, spec)
	if err != nil {
		t.Fatal(err)
	}
	_, err = p.Plan(spec, o)
	if ptrs := providertest.Invalid(t, err); !reflect.DeepEqual(ptrs, []string{"/web/restartOn/0"}) {
		t.Fatalf("pointers %v", ptrs)
	}
}

// TestLivePlan checks the decisions of the live path, which this machine
// (PID 1 is not systemd) cannot run: when systemd runs the root, start,
// stop and restart are planned, a restart carries the fingerprints, and a
// unit that is not running is not restarted.
func TestLivePlan(t *testing.T) {
	if live, why := liveMode(false, true, "/tmp/r"); live || !strings.Contains(why, "/tmp/r is not the running system") {
		t.Fatalf("sandbox root: %v %q", live, why)
	}
	if live, why := liveMode(true, false, "/"); live || !strings.Contains(why, "PID 1 is not systemd") {
		t.Fatalf("not booted: %v %q", live, why)
	}
	if live, _ := liveMode(true, true, "/"); !live {
		t.Fatal("booted host root is not live")
	}
	p := New()
	env := providertest.NewEnv(t)
	spec := providertest.Decode(t, p, env, json.RawMessage(`{
	  "web":   {"state": "running", "restartOn": ["webConf"]},
	  "db":    {"state": "stopped"},
	  "cache": {"state": "running", "restartOn": ["cacheConf"]},
	  "idle":  {"restartOn": ["idleConf"]},
	  "fresh": {"restartOn": ["freshConf"]},
	  "dropIns": {"x": {"unit": "db.service", "content": "[Service]\nNice=5\n"}}}`))
	o := &Observed{Live: true, DropIns: map[string]*DropInState{"x": {Unit: "db.service", Path: dropInPath("db.service", "x")}}, Units: map[string]*UnitState{
		"web":   {Unit: "web.service", Enabled: "enabled", Active: "active", RestartOn: map[string]string{"webConf": "sha256:new"}, Restarted: map[string]string{"webConf": "sha256:old"}},
		"db":    {Unit: "db.service", Enabled: "enabled", Active: "active"},
		"cache": {Unit: "cache.service", Enabled: "enabled", Active: "inactive", RestartOn: map[string]string{"cacheConf": "sha256:c"}},
		"idle":  {Unit: "idle.service", Enabled: "enabled", Active: "failed", RestartOn: map[string]string{"idleConf": "sha256:i"}},
		// Running, never recorded: it may have started before the file
		// was written, so it restarts once.
		"fresh": {Unit: "fresh.service", Enabled: "enabled", Active: "active", RestartOn: map[string]string{"freshConf": "sha256:f"}},
	}}
	changes, err := p.Plan(spec, o)
	if err != nil {
		t.Fatal(err)
	}
	got := providertest.Lines(changes)
	want := []string{
		"+ dropIns/x: /etc/systemd/system/db.service.d/x.conf sha256:" + sum([]byte("[Service]\nNice=5\n"))[7:19] + "… 17 B",
		"~ daemon-reload: reload systemd's unit files",
		"~ cache: cache.service inactive -> running",
		"~ db: db.service active -> stopped",
		"~ fresh: fresh.service restartOn files/freshConf none→sha256:f -> restart",
		"~ idle: restartOn files/idleConf none→sha256:i -> recorded (idle.service is not running: its next start reads the new files)",
		"~ web: web.service restartOn files/webConf sha256:old→sha256:new -> restart",
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("live plan:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	verbs := map[string]op{}
	for _, c := range changes {
		verbs[c.Item] = c.Data.(op)
	}
	if d := verbs["web"]; d.verb != "restart" || !d.live || d.record["webConf"] != "sha256:new" {
		t.Errorf("web: %+v", d)
	}
	if d := verbs["cache"]; d.verb != "start" || d.record["cacheConf"] != "sha256:c" {
		t.Errorf("cache: the start must record the fingerprint it starts with: %+v", d)
	}
	if args := systemctl(env, true, "restart", "--", "web.service"); !reflect.DeepEqual(args, []string{"restart", "--", "web.service"}) {
		t.Errorf("live argv %v", args)
	}
	if args := systemctl(env, false, "enable", "--", "web.service"); args[0] != "--root="+env.Root {
		t.Errorf("offline argv %v", args)
	}

	// A drop-in changed under a running unit restarts it, once the
	// daemon reloaded.
	o.DropIns["x"].Exists, o.DropIns["x"].SHA256 = true, "sha256:old"
	o.Units["db"].Active = "active"
	spec2 := providertest.Decode(t, p, env, json.RawMessage(`{"db": {"state": "running"}, "dropIns": {"x": {"unit": "db.service", "content": "[Service]\nNice=5\n"}}}`))
	changes, _ = p.Plan(spec2, o)
	if got := providertest.Lines(changes); len(got) != 3 || got[1] != "~ daemon-reload: reload systemd's unit files" || got[2] != "~ db: db.service drop-in changed -> restart" {
		t.Fatalf("drop-in change: %v", got)
	}

	// Once: after the restart recorded the new fingerprint, the same
	// file restarts nothing more.
	o.Units["web"].Restarted = map[string]string{"webConf": "sha256:new"}
	o.Units["fresh"].Restarted = map[string]string{"freshConf": "sha256:f"}
	changes, _ = p.Plan(spec, o)
	for _, l := range providertest.Lines(changes) {
		if strings.HasSuffix(l, "-> restart") {
			t.Errorf("restarted again for a recorded fingerprint: %s", l)
		}
	}
}

func TestParseShow(t *testing.T) {
	out := "LoadState=loaded\nActiveState=active\nSubState=running\nUnitFileState=enabled\n\nLoadState=not-found\nActiveState=inactive\nSubState=dead\nUnitFileState=\n\nLoadState=masked\nActiveState=inactive\nSubState=dead\nUnitFileState=masked\n"
	got := parseShow(out)
	if len(got) != 3 || got[0]["ActiveState"] != "active" || got[1]["LoadState"] != "not-found" || got[2]["UnitFileState"] != "masked" {
		t.Fatalf("%v", got)
	}
}

// TestInvalid: bad input is located and changes nothing.
func TestInvalid(t *testing.T) {
	env := newRoot(t, "web.service")
	before := tree(t, env.Root)
	for _, tc := range []struct {
		doc  string
		ptrs []string
		msg  string
	}{
		{`{"web": {"unit": "nginx"}}`, []string{"/web/unit"}, "no unit type suffix"},
		{`{"web": {"unit": "nginx.servic"}}`, []string{"/web/unit"}, "unknown unit type"},
		{`{"web": {"unit": "ng inx.service"}}`, []string{"/web/unit"}, "not allowed"},
		{`{"web": {"unit": "../../etc/passwd.service"}}`, []string{"/web/unit"}, "not allowed"},
		{`{"web": {"unit": ".service"}}`, []string{"/web/unit"}, "empty"},
		{`{"web": {"unit": "sda.device"}}`, []string{"/web/unit"}, "cannot be managed"},
		{`{"web": {"unit": "` + strings.Repeat("a", 250) + `.service"}}`, []string{"/web/unit"}, "longer than 255"},
		{`{"web": {"unit": "getty@.service", "state": "running"}}`, []string{"/web/state"}, "template"},
		{`{"web": {"masked": true, "enabled": true}}`, []string{"/web/enabled"}, "masked"},
		{`{"web": {"state": "started"}}`, []string{"/web/state"}, "running or stopped"},
		{`{"web": {"enable": true}}`, []string{"/web"}, "unknown field"},
		{`{"a": {"unit": "web.service"}, "b": {"unit": "web.service"}}`, []string{"/b/unit"}, "also managed"},
		{`{"web": {"restartOn": ["x", "x"]}}`, []string{"/web/restartOn/1"}, "twice"},
		{`{"dropIns": {"l": {"unit": "web", "content": "[Service]\nX=1\n"}}}`, []string{"/dropIns/l/unit"}, "suffix"},
		{`{"dropIns": {"l": {"unit": "web.service", "content": "Nice=5\n"}}}`, []string{"/dropIns/l/content"}, "line 1"},
		{`{"dropIns": {"l": {"unit": "web.service", "content": "[Service]\nnonsense\n"}}}`, []string{"/dropIns/l/content"}, "line 2"},
		{`{"dropIns": {"l": {"unit": "web.service", "name": "../x", "content": "[Service]\nX=1\n"}}}`, []string{"/dropIns/l/name"}, "must not start with"},
	} {
		_, err := New().Decode(env, json.RawMessage(tc.doc))
		if ptrs := providertest.Invalid(t, err); !reflect.DeepEqual(ptrs, tc.ptrs) || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%s: %v (pointers %v, want %v with %q)", tc.doc, err, ptrs, tc.ptrs, tc.msg)
		}
	}
	if after := tree(t, env.Root); !reflect.DeepEqual(before, after) {
		t.Fatalf("invalid input changed the root: %v -> %v", before, after)
	}
}

func TestUnitNames(t *testing.T) {
	for _, ok := range []string{"nginx.service", "getty@tty1.service", "getty@.service", "dev-disk-by\\x2duuid-1.swap", "a:b_c.d-e.socket", "x@a@b.service", "fstrim.timer", "-.mount"} {
		if err := checkUnit(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "nginx", "@x.service", "a/b.service", "a b.service", "x.SERVICE", "é.service", "a@b c.service"} {
		if checkUnit(bad) == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func tree(t *testing.T, root string) []string {
	var out []string
	filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err == nil {
			out = append(out, strings.TrimPrefix(p, root)+" "+fi.Mode().String())
		}
		return nil
	})
	return out
}

func TestCloudScope(t *testing.T) {
	p := New().(*Provider)
	twin := json.RawMessage(`{
	  "nginx": {"unit": "nginx.service", "enabled": true},
	  "ssh":   {"masked": true},
	  "me":    {"unit": "twinlet.service", "state": "stopped"},
	  "tgt":   {"unit": "multi-user.target", "masked": true},
	  "res":   {"unit": "systemd-resolved.service", "enabled": false},
	  "dropIns": {"limits": {"unit": "nginx.service", "content": "[Service]\nExecStart=/bin/sh\n"}}}`)
	got := map[string]bool{}
	for _, fe := range p.CloudScope(providers.ScopeRules{Deny: CloudDeny}, twin) {
		got[fe.Pointer] = true
	}
	want := map[string]bool{"/ssh": true, "/me/unit": true, "/tgt/unit": true, "/res/unit": true, "/dropIns/limits": true}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("default scope forbids %v, want %v", got, want)
	}
	// Privileged: drop-ins pass, their units are still checked.
	fes := p.CloudScope(providers.ScopeRules{Deny: CloudDeny, Privileged: true, Allow: []string{"nginx.service"}}, json.RawMessage(`{
	  "nginx": {"unit": "nginx.service"}, "other": {"unit": "other.service"},
	  "dropIns": {"a": {"unit": "nginx.service", "content": "[Service]\n"}, "b": {"unit": "ssh.service", "content": "[Service]\n"}}}`))
	var ptrs []string
	for _, fe := range fes {
		ptrs = append(ptrs, fe.Pointer)
	}
	if !reflect.DeepEqual(ptrs, []string{"/dropIns/b/unit", "/other/unit"}) {
		t.Fatalf("privileged with allow: %v", fes)
	}
}

// TestObserveHostRoot observes a unit of the machine itself (root "/"),
// read-only, with the real systemctl: where systemd is not PID 1 (a
// container, a build host) the unit's enablement is observed offline and
// whether it runs is "unknown" with the reason; where systemd runs, its
// ActiveState is read. Nothing is planned that would change the machine.
func TestObserveHostRoot(t *testing.T) {
	needSystemctl(t)
	const unit = "getty@.service" // a template: never started by the item
	if _, err := os.Stat("/usr/lib/systemd/system/" + unit); err != nil {
		if _, err := os.Stat("/lib/systemd/system/" + unit); err != nil {
			t.Skipf("this machine has no %s", unit)
		}
	}
	env := providertest.NewEnv(t)
	env.Root = "/"
	p := New()
	raw := json.RawMessage(`{"getty": {"unit": "getty@.service"}}`)
	obs := providertest.ObserveJSON(t, p, env, raw)["getty"].(map[string]any)
	if obs["enabled"] == "" || obs["enabled"] == "not-found" {
		t.Fatalf("observed on /: %v", obs)
	}
	_, err := os.Stat("/run/systemd/system")
	switch booted := err == nil; {
	case !booted && (obs["active"] != "unknown" || !strings.Contains(obs["message"].(string), "PID 1 is not systemd")):
		t.Fatalf("not booted, observed %v", obs)
	case booted && obs["active"] == "unknown":
		t.Fatalf("booted, observed %v", obs)
	}
	if got := providertest.PlanOnly(t, p, env, raw); len(got) != 0 {
		t.Fatalf("plan on /: %v", providertest.Lines(got))
	}
}
