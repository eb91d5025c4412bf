package hostname

import (
	"encoding/json"
	"os"
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
		t.Fatal(err)
	}
	return string(b)
}

func write(t *testing.T, env *providers.Env, p, s string) {
	t.Helper()
	host := filepath.Join(env.Root, p)
	if err := os.MkdirAll(filepath.Dir(host), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(host, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestRegistered(t *testing.T) {
	info, ok := providers.Lookup(ID)
	if !ok || info.Kind != providers.Object || info.ReadOnly {
		t.Fatalf("Lookup(%q) = %+v, %v", ID, info, ok)
	}
}

func TestDriftTimeline(t *testing.T) {
	p, env := New(), providertest.NewEnv(t)
	const hosts = "# static table\n127.0.0.1\tlocalhost\n127.0.1.1\told.example.com old myapp # keep me\n\n::1 localhost ip6-localhost\n"
	write(t, env, "/etc/hostname", "old\n")
	write(t, env, "/etc/hosts", hosts)
	raw := json.RawMessage(`{"name":"kiosk-17","__meta":{"deploymentId":"d1"},"reportingMode":"detailed"}`)

	changes := providertest.Converge(t, p, env, raw)
	if got := providertest.Lines(changes); !reflect.DeepEqual(got, []string{
		"~ name: old -> kiosk-17",
		"~ hosts: 127.0.1.1 old.example.com old myapp -> 127.0.1.1 kiosk-17",
	}) {
		t.Fatalf("first plan = %q", got)
	}
	if got := read(t, env, "/etc/hostname"); got != "kiosk-17\n" {
		t.Fatalf("/etc/hostname = %q", got)
	}
	want := "# static table\n127.0.0.1\tlocalhost\n127.0.1.1\tkiosk-17 myapp # keep me\n\n::1 localhost ip6-localhost\n"
	if got := read(t, env, "/etc/hosts"); got != want {
		t.Fatalf("/etc/hosts =\n%s\nwant\n%s", got, want)
	}
	obs := providertest.ObserveJSON(t, p, env, raw)
	if !reflect.DeepEqual(obs, map[string]any{"name": "kiosk-17", "hostsMatches": true}) {
		t.Fatalf("observed %v", obs)
	}

	// Behind the agent's back: someone renames the device by hand.
	write(t, env, "/etc/hostname", "intruder\n")
	write(t, env, "/etc/hosts", strings.Replace(want, "kiosk-17", "intruder", 1))
	changes = providertest.Converge(t, p, env, raw)
	if len(changes) != 2 {
		t.Fatalf("heal plan = %q", providertest.Lines(changes))
	}
	if got := read(t, env, "/etc/hosts"); got != want {
		t.Fatalf("/etc/hosts after heal =\n%s", got)
	}
	if left := providertest.PlanOnly(t, p, env, raw); len(left) != 0 {
		t.Fatalf("further plan = %q", providertest.Lines(left))
	}
}

func TestFreshRoot(t *testing.T) {
	p, env := New(), providertest.NewEnv(t)
	providertest.Converge(t, p, env, json.RawMessage(`{"name":"kiosk-17.fleet.example"}`))
	if got := read(t, env, "/etc/hosts"); !strings.Contains(got, "127.0.0.1\tlocalhost\n") || !strings.Contains(got, "127.0.1.1\tkiosk-17.fleet.example kiosk-17\n") {
		t.Fatalf("/etc/hosts =\n%s", got)
	}
}

func TestRewriteHosts(t *testing.T) {
	for _, tc := range []struct{ name, in, host, want string }{
		{"adds after localhost", "127.0.0.1 localhost\n::1 localhost\n", "a", "127.0.0.1 localhost\n127.0.1.1\ta\n::1 localhost\n"},
		{"appends without localhost", "10.0.0.1 gw", "a", "10.0.0.1 gw\n127.0.1.1\ta\n"},
		{"drops second line", "127.0.1.1 x\n127.0.1.1 y\n", "a", "127.0.1.1\ta\n"},
		{"fqdn", "127.0.1.1 x\n", "a.b.c", "127.0.1.1\ta.b.c a\n"},
		{"keeps aliases, no duplicates", "127.0.1.1 old a extra extra\n", "a", "127.0.1.1\ta extra\n"},
		{"comment only line untouched", "#127.0.1.1 x\n", "a", "#127.0.1.1 x\n127.0.1.1\ta\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := string(rewriteHosts([]byte(tc.in), tc.host))
			if got != tc.want {
				t.Fatalf("got\n%q\nwant\n%q", got, tc.want)
			}
			if again := string(rewriteHosts([]byte(got), tc.host)); again != got {
				t.Fatalf("not idempotent: %q", again)
			}
		})
	}
}

func TestInvalid(t *testing.T) {
	p, env := New(), providertest.NewEnv(t)
	for _, raw := range []string{
		`{"name":""}`,
		`{"name":"-kiosk"}`,
		`{"name":"kiosk-"}`,
		`{"name":"Kiosk"}`,
		`{"name":"kiosk_17"}`,
		`{"name":"a..b"}`,
		`{"name":"a.b."}`,
		`{"name":"kiosk 17"}`,
		`{"name":"` + strings.Repeat("a", 64) + `"}`,
		`{"name":"` + strings.Repeat("a.", 32) + `a"}`,
		`{"name":"x;reboot"}`,
		`{}`,
	} {
		t.Run(raw, func(t *testing.T) {
			_, err := p.Decode(env, json.RawMessage(raw))
			if got := providertest.Invalid(t, err); !reflect.DeepEqual(got, []string{"/name"}) {
				t.Fatalf("pointers %q (%v)", got, err)
			}
		})
	}
	_, err := p.Decode(env, json.RawMessage(`{"name":"a","extra":1}`))
	providertest.Invalid(t, err)
	for _, ok := range []string{"a", "kiosk-17", "0", strings.Repeat("a", 63), "a-b.c-d.e"} {
		if err := Validate(ok); err != nil {
			t.Errorf("Validate(%q) = %v", ok, err)
		}
	}
}
