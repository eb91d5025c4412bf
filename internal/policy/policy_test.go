package policy

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func known(id string) bool { return id == "hostname" || id == "files" }

func TestParseLocatesProblems(t *testing.T) {
	tests := []struct {
		name, body string
		want       []string // substrings of the problems, in order
	}{
		{"syntax", "apiVersion: twinlet.dev/v1\nkind: DevicePolicy\nspec: {a: [\n", []string{"p.yaml:3:1: YAML syntax"}},
		{"wrong kind", "apiVersion: twinlet.dev/v1\nkind: Pod\nmetadata: {name: x}\nspec: {}\n", []string{"p.yaml:2:7: /kind:"}},
		{"unknown field", "apiVersion: twinlet.dev/v1\nkind: DevicePolicy\nmetadata: {name: x}\nspec: {}\nextra: 1\n", []string{"p.yaml:5:8: /extra: unknown field 'extra'"}},
		{"unknown section", "apiVersion: twinlet.dev/v1\nkind: DevicePolicy\nmetadata: {name: x}\nspec:\n  hostnam: {name: a}\n", []string{`p.yaml:5:3: /spec/hostnam: unknown section "hostnam"`}},
		{"bad mode", "apiVersion: twinlet.dev/v1\nkind: DevicePolicy\nmetadata: {name: x}\nspec:\n  mode: strict\n", []string{"p.yaml:5:9: /spec/mode:"}},
		{"duplicate key", "apiVersion: twinlet.dev/v1\nkind: DevicePolicy\nkind: DevicePolicy\n", []string{`p.yaml:3:1: duplicate key "kind"`}},
		{"alias", "a: &x 1\nb: *x\n", []string{"p.yaml:2:4: aliases are not supported"}},
		{"section not an object", "apiVersion: twinlet.dev/v1\nkind: DevicePolicy\nmetadata: {name: x}\nspec:\n  hostname: kiosk\n", []string{"p.yaml:5:13: /spec/hostname:"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, probs := Parse("p.yaml", []byte(tt.body), known)
			if len(probs) < len(tt.want) {
				t.Fatalf("problems = %v, want %v", probs, tt.want)
			}
			for i, w := range tt.want {
				if !strings.Contains(probs[i].String(), w) {
					t.Errorf("problem %d = %q, want it to contain %q", i, probs[i].String(), w)
				}
			}
		})
	}
}

func TestParseGood(t *testing.T) {
	body := `apiVersion: twinlet.dev/v1
kind: DevicePolicy
metadata: { name: base }
spec:
  mode: enforce
  hostname: { name: kiosk-17 }
  files:
    motd:
      path: /etc/motd
      content: "hello\n"
---
apiVersion: twinlet.dev/v1
kind: DevicePolicy
metadata: { name: second }
spec:
  hostname: { name: other }
`
	docs, probs := Parse("dir/base.yaml", []byte(body), known)
	if len(probs) != 0 || len(docs) != 2 {
		t.Fatalf("docs=%d probs=%v", len(docs), probs)
	}
	d := docs[0]
	if d.Mode != Enforce || d.Name != "base" || string(d.Sections["hostname"]) != `{"name":"kiosk-17"}` {
		t.Fatalf("doc = %+v", d)
	}
	if got := d.Locate("files", "/motd/content"); got != "dir/base.yaml:10:16" {
		t.Fatalf("Locate = %s", got)
	}
	if got := d.Locate("files", "/motd/absent"); got != "dir/base.yaml:8:5" {
		t.Fatalf("Locate of a missing field = %s", got)
	}
	if docs[1].Mode != Default || docs[1].Source() != "base.yaml#2" {
		t.Fatalf("second doc = %+v", docs[1])
	}
}

func TestReadSecureRefusesWritableFiles(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "p.yaml")
	os.WriteFile(p, []byte("a: 1\n"), 0o644)
	if _, err := ReadSecure(p); err != nil {
		t.Fatal(err)
	}
	os.Chmod(p, 0o666)
	if _, err := ReadSecure(p); err == nil || !strings.Contains(err.Error(), "group or others") {
		t.Fatalf("err = %v", err)
	}
	set, err := LoadDir(dir, known)
	if err != nil {
		t.Fatal(err)
	}
	if !set.Failed[p] || len(set.Problems) != 1 {
		t.Fatalf("set = %+v", set)
	}
}

func TestLoadDirMissingIsEmpty(t *testing.T) {
	set, err := LoadDir(filepath.Join(t.TempDir(), "none"), known)
	if err != nil || len(set.Docs) != 0 {
		t.Fatalf("set=%+v err=%v", set, err)
	}
}

// FuzzParse: policy parsing never panics, and every problem has a
// position in the file.
func FuzzParse(f *testing.F) {
	seeds, _ := filepath.Glob("../../examples/local/*.yaml")
	for _, s := range seeds {
		b, _ := os.ReadFile(s)
		f.Add(b)
	}
	f.Add([]byte("apiVersion: twinlet.dev/v1\nkind: DevicePolicy\nmetadata: {name: a}\nspec: {hostname: {name: x}}\n"))
	f.Add([]byte("a: &x [*x]\n"))
	f.Add([]byte("---\n---\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		docs, probs := Parse("f.yaml", data, known)
		for _, p := range probs {
			if !strings.HasPrefix(p.Pos, "f.yaml") {
				t.Fatalf("problem without position: %+v", p)
			}
		}
		for _, d := range docs {
			for id := range d.Sections {
				_ = d.Locate(id, "/x/y")
			}
		}
	})
}

// TestLoadDirCached: a file that parsed without problems is taken from the
// cache while its content is the same (positions are still found, by
// parsing on demand); a changed, invalid or removed file never is.
func TestLoadDirCached(t *testing.T) {
	dir := t.TempDir()
	good := "apiVersion: twinlet.dev/v1\nkind: DevicePolicy\nmetadata: {name: base}\nspec:\n  mode: enforce\n  hostname: {name: a}\n"
	write := func(name, body string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("base.yaml", good)
	cache := Cache{}
	set, err := LoadDirCached(dir, known, cache)
	if err != nil || len(set.Problems) != 0 || len(set.Docs) != 1 || !set.CacheChanged || len(cache) != 1 {
		t.Fatalf("first load: %v %v changed=%v %d cached", err, set.Problems, set.CacheChanged, len(cache))
	}
	// The cache entry is what is used: doctor it, and the doctored value
	// comes back (this is what saves the parse and the schema).
	for k, docs := range cache {
		docs[0].Sections["hostname"] = json.RawMessage(`{"name":"from-cache"}`)
		cache[k] = docs
	}
	set, _ = LoadDirCached(dir, known, cache)
	if set.CacheChanged || len(set.Docs) != 1 || string(set.Docs[0].Sections["hostname"]) != `{"name":"from-cache"}` || set.Docs[0].Mode != Enforce {
		t.Fatalf("not from the cache: %+v changed=%v", set.Docs, set.CacheChanged)
	}
	if at := set.Docs[0].Locate("hostname", "/name"); at != filepath.Join(dir, "base.yaml")+":6:20" {
		t.Fatalf("a cached document locates %q", at)
	}
	// A section no provider owns any more: parsed again, and refused.
	set, _ = LoadDirCached(dir, func(id string) bool { return id == "files" }, cache)
	if len(set.Problems) != 1 || set.Problems[0].Pointer != "/spec/hostname" {
		t.Fatalf("unknown section from a cached file: %v", set.Problems)
	}
	// A changed file is parsed, an invalid one is not cached, and a file
	// that left is forgotten.
	write("base.yaml", strings.Replace(good, "name: base", "name: Base_", 1))
	set, _ = LoadDirCached(dir, known, cache)
	if len(set.Problems) != 1 || set.Problems[0].Pointer != "/metadata/name" || len(cache) != 0 || !set.CacheChanged {
		t.Fatalf("invalid file: %v, %d cached", set.Problems, len(cache))
	}
	write("base.yaml", good)
	write("more.yaml", strings.Replace(good, "name: base", "name: more", 1))
	LoadDirCached(dir, known, cache)
	os.Remove(filepath.Join(dir, "more.yaml"))
	if set, _ := LoadDirCached(dir, known, cache); len(cache) != 1 || !set.CacheChanged || len(set.Docs) != 1 {
		t.Fatalf("a removed file stays cached: %d", len(cache))
	}
}
