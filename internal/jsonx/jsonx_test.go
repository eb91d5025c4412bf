package jsonx

import (
	"encoding/json"
	"testing"
)

func obj(s string) map[string]json.RawMessage {
	var m map[string]json.RawMessage
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		panic(err)
	}
	return m
}

func TestMergePatchAndDiff(t *testing.T) {
	tests := []struct{ old, new, patch string }{
		{`{"a":1}`, `{"a":1}`, `{}`},
		{`{"a":1,"b":{"x":1,"y":2}}`, `{"a":1,"b":{"x":1,"y":3}}`, `{"b":{"y":3}}`},
		{`{"a":1,"b":2}`, `{"a":1}`, `{"b":null}`},
		{`{"a":{"x":1}}`, `{"a":[1,2]}`, `{"a":[1,2]}`},
		{`{}`, `{"s":{"t":{"u":"v"}}}`, `{"s":{"t":{"u":"v"}}}`},
	}
	for _, tt := range tests {
		p := Diff(obj(tt.old), obj(tt.new))
		if !Equal(mustJSON(p), json.RawMessage(tt.patch)) {
			t.Errorf("Diff(%s, %s) = %s, want %s", tt.old, tt.new, mustJSON(p), tt.patch)
		}
		// Applying the diff to old gives new.
		if got := MergePatch(obj(tt.old), p); !Equal(mustJSON(got), json.RawMessage(tt.new)) {
			t.Errorf("MergePatch(%s, Diff) = %s, want %s", tt.old, mustJSON(got), tt.new)
		}
	}
	// Nulls inside a merged document mean absence.
	if got := MergePatch(nil, obj(`{"a":null,"b":{"c":null,"d":1}}`)); !Equal(mustJSON(got), json.RawMessage(`{"b":{"d":1}}`)) {
		t.Errorf("nulls kept: %s", mustJSON(got))
	}
}

func mustJSON(v any) json.RawMessage {
	b, _ := json.Marshal(v)
	return b
}

// FuzzDiff: for any two objects, MergePatch(old, Diff(old, new)) == new
// once nulls (absence) are removed from new.
func FuzzDiff(f *testing.F) {
	f.Add([]byte(`{"a":1,"b":{"c":2}}`), []byte(`{"b":{"c":3,"d":null},"e":[1]}`))
	f.Fuzz(func(t *testing.T, a, b []byte) {
		var old, new map[string]json.RawMessage
		if json.Unmarshal(a, &old) != nil || json.Unmarshal(b, &new) != nil {
			return
		}
		old, new = MergePatch(nil, old), MergePatch(nil, new)
		if got := MergePatch(old, Diff(old, new)); !Equal(mustJSON(got), mustJSON(new)) {
			t.Fatalf("old %s new %s: got %s", a, b, mustJSON(got))
		}
	})
}
