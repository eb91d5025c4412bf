package reconciler

import (
	"encoding/json"
	"testing"

	"github.com/twinlet/twinlet/internal/jsonx"
)

// FuzzMerge checks the merge's invariants on arbitrary layer contents: it
// never panics, every merged key comes from some input, and a key an
// enforce input sets always has the enforce value.
func FuzzMerge(f *testing.F) {
	f.Add([]byte(`{"a":1,"b":{"x":1}}`), []byte(`{"a":2,"c":null}`), []byte(`{"b":3}`))
	f.Add([]byte(`null`), []byte(`[]`), []byte(`{}`))
	f.Add([]byte(`{"motd":{"path":"/etc/motd"}}`), []byte(`{"motd":{"path":"/etc/x"},"prune":true}`), []byte(`{"prune":false}`))
	f.Fuzz(func(t *testing.T, def, twin, enforce []byte) {
		ins := []Input{
			{Layer: LayerEnforce, Source: "e", Value: enforce},
			{Layer: LayerDefault, Source: "d", Value: def},
			{Layer: LayerTwin, Source: "twin", Value: twin},
		}
		m, err := Merge(ins)
		if err != nil {
			return
		}
		var em map[string]json.RawMessage
		if json.Unmarshal(enforce, &em) == nil {
			for k, v := range em {
				if string(v) == "null" {
					continue
				}
				if !jsonx.Equal(m.Value[k], v) || m.Origin[k].Layer != LayerEnforce {
					t.Fatalf("enforce key %q lost: %s", k, m.Value[k])
				}
			}
		}
		for k := range m.Value {
			if m.Origin[k] == nil {
				t.Fatalf("key %q has no origin", k)
			}
		}
		_ = m.JSON()
	})
}
