package packages

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/twinlet/twinlet/providers"
	"github.com/twinlet/twinlet/providers/providertest"
	"github.com/twinlet/twinlet/schemas"
)

// TestSchema checks schemas/packages.json against documents it must
// accept (which must then decode) and reject (with the pointer of the
// problem), so that the schema and Decode stay in step, and that every
// property is described.
func TestSchema(t *testing.T) {
	key := `"-----BEGIN PGP PUBLIC KEY BLOCK-----\nx\n-----END PGP PUBLIC KEY BLOCK-----"`
	for _, tc := range []struct {
		doc   string
		valid bool
		ptr   string
	}{
		{`{"hello": {}, "py": {"name": "python3.11", "version": "3.11.2-6"}, "h": {"name": "htop", "hold": true}, "t": {"name": "telnet", "ensure": "absent"}, "prune": true, "reportingMode": "minimal"}`, true, ""},
		{`{"keys": {"corp": {"armored": ` + key + `}}, "sources": {"corp": {"uri": "https://apt.example.com/debian", "suite": "bookworm", "components": ["main"], "signedBy": "corp"}}}`, true, ""},
		{`{"sources": {"l": {"uri": ["file:/srv/repo"], "suite": "./", "trusted": true}, "gone": {"ensure": "absent"}}, "keys": {"old": {"ensure": "absent"}}}`, true, ""},
		{`{"hello": {"version": "abc"}}`, false, "/hello/version"},
		{`{"hello": {"name": "Hello"}}`, false, "/hello/name"},
		{`{"hello": {"ensure": "latest"}}`, false, "/hello/ensure"},
		{`{"hello": {"hold": "yes"}}`, false, "/hello/hold"},
		{`{"hello": {"colour": "red"}}`, false, "/hello/colour"},
		{`{"he.llo": {}}`, false, "/he.llo"},
		{`{"sources": {"s": {"suite": "bookworm"}}}`, false, "/sources/s"},
		{`{"sources": {"s": {"uri": "https://x/d", "suite": "s", "colour": 1}}}`, false, "/sources/s/colour"},
		{`{"sources": {"s.x": {"uri": "https://x/d", "suite": "s"}}}`, false, "/sources/s.x"},
		{`{"keys": {"k": {}}}`, false, "/keys/k"},
	} {
		t.Run(tc.doc, func(t *testing.T) {
			problems, err := schemas.Validate(ID, []byte(tc.doc))
			if err != nil {
				t.Fatal(err)
			}
			if tc.valid {
				if len(problems) != 0 {
					t.Fatalf("problems %+v", problems)
				}
				if _, err := New().Decode(providertest.NewEnv(t), json.RawMessage(tc.doc)); err != nil {
					t.Fatalf("schema-valid section does not decode: %v", err)
				}
				return
			}
			for _, p := range problems {
				if p.Pointer == tc.ptr {
					return
				}
			}
			t.Fatalf("want a problem at %q, got %+v", tc.ptr, problems)
		})
	}
}

func TestSchemaDocs(t *testing.T) {
	raw, ok := schemas.Raw(ID)
	if !ok {
		t.Fatal("no schema")
	}
	var s map[string]any
	if err := json.Unmarshal(raw, &s); err != nil {
		t.Fatal(err)
	}
	if s["$id"] != "https://twinlet.dev/schemas/packages.json" || s["title"] != ID || s["description"] == nil {
		t.Fatal("$id, title or description missing")
	}
	var walk func(where string, v any)
	walk = func(where string, v any) {
		m, ok := v.(map[string]any)
		if !ok {
			return
		}
		if props, ok := m["properties"].(map[string]any); ok {
			for name, p := range props {
				if pm, ok := p.(map[string]any); ok && pm["description"] == nil {
					t.Errorf("%s/%s has no description", where, name)
				}
			}
		}
		for k, c := range m {
			if k != "if" && k != "then" && k != "else" {
				walk(where+"/"+k, c)
			}
		}
	}
	walk("", s)
}

// TestRegistered: the section is a collection whose calls the reconciler
// bounds by 30 minutes (a long install), not the 2 minute default.
func TestRegistered(t *testing.T) {
	info, ok := providers.Lookup(ID)
	if !ok || info.Kind != providers.Collection {
		t.Fatalf("not registered as a collection: %+v", info)
	}
	if info.Timeout != 30*time.Minute || info.Timeout == providers.DefaultTimeout {
		t.Fatalf("timeout %v, want 30m", info.Timeout)
	}
}
