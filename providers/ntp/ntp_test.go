package ntp

import (
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

func read(t *testing.T, env *providers.Env, p string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(env.Root, p))
	if err != nil {
		return "<missing>"
	}
	return string(b)
}

func write(t *testing.T, env *providers.Env, p, content string) {
	t.Helper()
	full := filepath.Join(env.Root, p)
	if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// catConfig is timesyncd's configuration as systemd itself reads it from
// the root: the main file and every drop-in that it would apply, in order
// (systemd-analyze cat-config, the real reader of the .conf.d hierarchy).
func catConfig(t *testing.T, env *providers.Env) string {
	t.Helper()
	out, err := exec.Command("systemd-analyze", "--root="+env.Root, "cat-config", "systemd/timesyncd.conf").CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-analyze cat-config: %v\n%s", err, out)
	}
	return string(out)
}

// TestTimesyncdTimeline: a root without chrony gets a timesyncd drop-in,
// which systemd's own reader (systemd-analyze --root cat-config) applies;
// an edit behind twinlet's back is put right; enabled: false removes it.
func TestTimesyncdTimeline(t *testing.T) {
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Skip("systemd-analyze is not installed: run `make systemd-tools` (apt-get install systemd)")
	}
	env := providertest.NewEnv(t)
	p := New()
	raw := json.RawMessage(`{"servers": ["ntp1.corp.example", "10.0.0.1", "2001:db8::1"], "fallback": ["pool.ntp.org"]}`)
	got := providertest.Lines(providertest.PlanOnly(t, p, env, raw))
	want := []string{"+ servers: servers ntp1.corp.example, 10.0.0.1, 2001:db8::1; fallback pool.ntp.org (systemd-timesyncd /etc/systemd/timesyncd.conf.d/twinlet.conf)"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("plan %q", got)
	}
	providertest.Converge(t, p, env, raw)
	if s := read(t, env, TimesyncdPath); s != header+"[Time]\nNTP=ntp1.corp.example 10.0.0.1 2001:db8::1\nFallbackNTP=pool.ntp.org\n" {
		t.Fatalf("drop-in:\n%s", s)
	}
	if got := catConfig(t, env); !strings.Contains(got, "# "+filepath.Join(env.Root, TimesyncdPath)+"\n"+header+"[Time]\nNTP=ntp1.corp.example 10.0.0.1 2001:db8::1\nFallbackNTP=pool.ntp.org\n") {
		t.Fatalf("systemd does not read twinlet's drop-in:\n%s", got)
	}
	obs := providertest.ObserveJSON(t, p, env, raw)
	if !strings.Contains(obs["message"].(string), "neither chrony nor systemd-timesyncd is installed") {
		t.Errorf("a root without a daemon is not reported: %v", obs["message"])
	}
	write(t, env, "usr/lib/systemd/system/systemd-timesyncd.service", "[Service]\n")
	obs = providertest.ObserveJSON(t, p, env, raw)
	if strings.Contains(obs["message"].(string), "installed") {
		t.Errorf("timesyncd installed but reported missing: %v", obs["message"])
	}
	if obs["daemon"] != Timesyncd || obs["synchronized"] != "unknown" || !strings.Contains(obs["message"].(string), "not observable") ||
		!reflect.DeepEqual(obs["servers"], []any{"ntp1.corp.example", "10.0.0.1", "2001:db8::1"}) || !reflect.DeepEqual(obs["fallback"], []any{"pool.ntp.org"}) {
		t.Fatalf("observed %v", obs)
	}
	write(t, env, TimesyncdPath, "[Time]\nNTP=evil.example\n")
	got = providertest.Lines(providertest.Converge(t, p, env, raw))
	if len(got) != 1 || got[0] != "~ servers: servers evil.example -> servers ntp1.corp.example, 10.0.0.1, 2001:db8::1; fallback pool.ntp.org" {
		t.Fatalf("drift: %q", got)
	}
	if got := catConfig(t, env); strings.Contains(got, "evil.example") || !strings.Contains(got, "NTP=ntp1.corp.example ") {
		t.Fatalf("after the drift, systemd reads:\n%s", got)
	}
	got = providertest.Lines(providertest.Converge(t, p, env, json.RawMessage(`{"enabled": false}`)))
	if len(got) != 1 || !strings.HasPrefix(got[0], "- servers: /etc/systemd/timesyncd.conf.d/twinlet.conf") {
		t.Fatalf("disable: %q", got)
	}
	if s := read(t, env, TimesyncdPath); s != "<missing>" {
		t.Fatalf("drop-in left: %q", s)
	}
	if got := catConfig(t, env); strings.Contains(got, "NTP=") {
		t.Fatalf("disabled, systemd still reads servers:\n%s", got)
	}
}

// TestChrony: a root with /etc/chrony gets a sources file; a chrony.conf
// that does not read sources.d is reported.
func TestChrony(t *testing.T) {
	env := providertest.NewEnv(t)
	write(t, env, "etc/chrony/chrony.conf", "pool 2.debian.pool.ntp.org iburst\n")
	p := New()
	raw := json.RawMessage(`{"servers": ["ntp1.corp.example"], "fallback": ["pool.ntp.org"]}`)
	providertest.Converge(t, p, env, raw)
	if s := read(t, env, ChronyPath); s != header+"server ntp1.corp.example iburst\n"+fallbackMark+"server pool.ntp.org iburst\n" {
		t.Fatalf("sources:\n%s", s)
	}
	obs := providertest.ObserveJSON(t, p, env, raw)
	if obs["daemon"] != Chrony || obs["path"] != ChronyPath || !strings.Contains(obs["message"].(string), "sourcedir") ||
		!reflect.DeepEqual(obs["servers"], []any{"ntp1.corp.example"}) || !reflect.DeepEqual(obs["fallback"], []any{"pool.ntp.org"}) {
		t.Fatalf("observed %v", obs)
	}
	write(t, env, "etc/chrony/chrony.conf", "sourcedir /etc/chrony/sources.d\n")
	if obs := providertest.ObserveJSON(t, p, env, raw); strings.Contains(obs["message"].(string), "sourcedir") {
		t.Fatalf("sourcedir present but reported: %v", obs["message"])
	}
	// Detected by the unit file alone too.
	env2 := providertest.NewEnv(t)
	write(t, env2, "usr/lib/systemd/system/chrony.service", "[Service]\n")
	if obs := providertest.ObserveJSON(t, p, env2, raw); obs["daemon"] != Chrony {
		t.Fatalf("chrony unit file not detected: %v", obs)
	}
}

func TestInvalid(t *testing.T) {
	env := providertest.NewEnv(t)
	for _, tc := range []struct {
		doc  string
		ptrs []string
	}{
		{`{"servers": ["ntp_1.example"]}`, []string{"/servers/0"}},
		{`{"servers": ["-a.example"]}`, []string{"/servers/0"}},
		{`{"servers": ["a..b"]}`, []string{"/servers/0"}},
		{`{"servers": ["300.1.1.1"]}`, []string{"/servers/0"}},
		{`{"servers": ["fe80::1%eth0"]}`, []string{"/servers/0"}},
		{`{"servers": ["a.example", "A.example."]}`, []string{"/servers/1"}},
		{`{"servers": ["ok.example"], "fallback": ["bad host"]}`, []string{"/fallback/0"}},
		{`{"servers": []}`, []string{"/servers"}},
		{`{"server": ["a.example"]}`, []string{""}},
	} {
		_, err := New().Decode(env, json.RawMessage(tc.doc))
		if ptrs := providertest.Invalid(t, err); !reflect.DeepEqual(ptrs, tc.ptrs) {
			t.Errorf("%s: %v (pointers %v, want %v)", tc.doc, err, ptrs, tc.ptrs)
		}
	}
	for _, ok := range []string{"pool.ntp.org", "ntp1", "10.0.0.1", "::1", "time.example."} {
		if err := checkServer(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	if ents, _ := os.ReadDir(env.Root); len(ents) != 0 {
		t.Fatalf("invalid input changed the root: %v", ents)
	}
}

// TestCloudScope: without rules the twin may name any server; cloud.ntp
// globs match each server and fallback in canonical form (lower case, no
// final dot), located at its index.
func TestCloudScope(t *testing.T) {
	info, ok := providers.Lookup(ID)
	if !ok {
		t.Fatal("ntp is not registered")
	}
	scoper, ok := info.New().(providers.CloudScoper)
	if !ok {
		t.Fatal("ntp has no cloud scope")
	}
	twin := json.RawMessage(`{"servers": ["NTP1.Corp.Example.", "a.b.corp.example", "10.1.2.3", "evil.example"], "fallback": ["pool.ntp.org"], "enabled": true}`)
	pointers := func(r providers.ScopeRules) []string {
		out := []string{}
		for _, fe := range scoper.CloudScope(r, twin) {
			out = append(out, fe.Pointer)
		}
		return out
	}
	if got := pointers(providers.ScopeRules{Deny: info.CloudDeny}); len(got) != 0 {
		t.Fatalf("the default scope forbids %q", got)
	}
	if got, want := pointers(providers.ScopeRules{Allow: []string{"*.corp.example", "10.**"}}), []string{"/servers/1", "/servers/3", "/fallback/0"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("allow forbids %q, want %q", got, want)
	}
	if got, want := pointers(providers.ScopeRules{Allow: []string{"**.corp.example", "pool.ntp.org"}, Deny: []string{"ntp1.**"}}), []string{"/servers/0", "/servers/2", "/servers/3"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("deny and allow forbid %q, want %q", got, want)
	}
}
