package timezone

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/twinlet/twinlet/providers"
	"github.com/twinlet/twinlet/providers/providertest"
)

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

// zoneDB fabricates a zoneinfo database under the root.
func zoneDB(t *testing.T, env *providers.Env, zones ...string) {
	t.Helper()
	for _, z := range zones {
		write(t, env, ZoneDir+"/"+z, "TZif2 fabricated")
	}
}

func TestRegistered(t *testing.T) {
	if info, ok := providers.Lookup(ID); !ok || info.Kind != providers.Object {
		t.Fatalf("Lookup(%q) = %+v, %v", ID, info, ok)
	}
}

func TestDriftTimeline(t *testing.T) {
	p, env := New(), providertest.NewEnv(t)
	zoneDB(t, env, "Europe/Berlin", "America/New_York", "UTC")
	raw := json.RawMessage(`{"name":"Europe/Berlin","reportingMode":"minimal"}`)

	first := providertest.Converge(t, p, env, raw)
	if got := providertest.Lines(first); !reflect.DeepEqual(got, []string{
		"~ localtime: (missing) -> /usr/share/zoneinfo/Europe/Berlin",
		"~ timezone: (none) -> Europe/Berlin",
	}) {
		t.Fatalf("first plan %q", got)
	}
	lt := filepath.Join(env.Root, "/etc/localtime")
	if target, err := os.Readlink(lt); err != nil || target != "/usr/share/zoneinfo/Europe/Berlin" {
		t.Fatalf("/etc/localtime -> %q, %v", target, err)
	}
	if obs := providertest.ObserveJSON(t, p, env, raw); !reflect.DeepEqual(obs, map[string]any{
		"name": "Europe/Berlin", "localtime": "/usr/share/zoneinfo/Europe/Berlin", "timezoneFile": "Europe/Berlin",
	}) {
		t.Fatalf("observed %v", obs)
	}

	drifts := []struct {
		name  string
		drift func(t *testing.T)
		want  int
	}{
		{"link to another zone", func(t *testing.T) {
			os.Remove(lt)
			if err := os.Symlink("/usr/share/zoneinfo/America/New_York", lt); err != nil {
				t.Fatal(err)
			}
		}, 1},
		{"copied file instead of a link", func(t *testing.T) { os.Remove(lt); write(t, env, "/etc/localtime", "TZif2") }, 1},
		{"/etc/timezone edited", func(t *testing.T) { write(t, env, "/etc/timezone", "UTC\n") }, 1},
		{"both removed", func(t *testing.T) { os.Remove(lt); os.Remove(filepath.Join(env.Root, "/etc/timezone")) }, 2},
	}
	for _, d := range drifts {
		t.Run(d.name, func(t *testing.T) {
			d.drift(t)
			if got := providertest.Converge(t, p, env, raw); len(got) != d.want {
				t.Fatalf("heal plan %q", providertest.Lines(got))
			}
			if left := providertest.PlanOnly(t, p, env, raw); len(left) != 0 {
				t.Fatalf("further plan %q", providertest.Lines(left))
			}
		})
	}
}

func TestRelativeLinkIsAccepted(t *testing.T) {
	p, env := New(), providertest.NewEnv(t)
	zoneDB(t, env, "UTC")
	write(t, env, "/etc/timezone", "UTC\n")
	if err := os.Symlink("../usr/share/zoneinfo/UTC", filepath.Join(env.Root, "/etc/localtime")); err != nil {
		t.Fatal(err)
	}
	if got := providertest.PlanOnly(t, p, env, json.RawMessage(`{"name":"UTC"}`)); len(got) != 0 {
		t.Fatalf("plan %q", providertest.Lines(got))
	}
}

func TestEmbeddedDatabase(t *testing.T) {
	p, env := New(), providertest.NewEnv(t) // no zoneinfo under the root
	providertest.Converge(t, p, env, json.RawMessage(`{"name":"Asia/Kolkata"}`))
	_, err := p.Decode(env, json.RawMessage(`{"name":"Mars/Olympus_Mons"}`))
	if got := providertest.Invalid(t, err); !reflect.DeepEqual(got, []string{"/name"}) {
		t.Fatalf("pointers %q", got)
	}
}

func TestInvalid(t *testing.T) {
	p, env := New(), providertest.NewEnv(t)
	zoneDB(t, env, "Europe/Berlin")
	write(t, env, ZoneDir+"/Europe/Notes", "not a zone")
	if err := os.Symlink("/etc", filepath.Join(env.Root, ZoneDir, "Europe/Etc")); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{
		"Asia/Kolkata", // in Go's database, not in the root's
		"Mars/Olympus_Mons",
		"Europe/Notes", // not TZif
		"Europe/Etc",   // a directory
		"Europe/Etc/passwd",
		"../../../etc/passwd",
		"Europe/../Europe/Berlin",
		"/Europe/Berlin",
		"Europe/Berlin/",
		"Europe//Berlin",
		"zone.tab",
		"Local",
		"",
		"Europe/Berlin\n",
	} {
		t.Run(name, func(t *testing.T) {
			b, _ := json.Marshal(map[string]string{"name": name})
			_, err := p.Decode(env, b)
			if got := providertest.Invalid(t, err); !reflect.DeepEqual(got, []string{"/name"}) {
				t.Fatalf("pointers %q (%v)", got, err)
			}
		})
	}
	_, err := p.Decode(env, json.RawMessage(`{}`))
	providertest.Invalid(t, err)
}
