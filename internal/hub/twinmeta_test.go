package hub

import (
	"encoding/json"
	"reflect"
	"testing"
)

// TestLeafMetadataShared checks that the leaves of one reported patch
// share one metadata map, that a later patch replaces a leaf's metadata
// instead of writing the shared map, and that a restarted hub shares the
// metadata of leaves it reads from disk while showing the same $metadata.
func TestLeafMetadataShared(t *testing.T) {
	dir := t.TempDir()
	h := startHub(t, Options{Dir: dir})
	if _, err := h.CreateDevice("d1"); err != nil {
		t.Fatal(err)
	}
	key := idKey("d1", "")
	same := func(a, b any) bool {
		return reflect.ValueOf(a).UnsafePointer() == reflect.ValueOf(b).UnsafePointer()
	}
	meta := func(h *Hub) map[string]any {
		h.mu.Lock()
		defer h.mu.Unlock()
		return h.records[key].Twin.ReportedMeta
	}
	shown := func(h *Hub) string {
		h.mu.Lock()
		defer h.mu.Unlock()
		t := h.records[key].Twin
		b, _ := json.Marshal(withSystem(t.Reported, t.ReportedMeta, t.ReportedVersion, true))
		return string(b)
	}
	if _, err := h.patchReported(key, map[string]any{"a": 1.0, "b": "x", "o": map[string]any{"c": true}}); err != nil {
		t.Fatal(err)
	}
	m := meta(h)
	first := m["a"]
	if !same(first, m["b"]) || !same(first, m["o"].(map[string]any)["c"]) {
		t.Fatal("the leaves of one patch do not share their metadata")
	}
	if same(first, m["o"]) {
		t.Fatal("an object shares its metadata map with leaves")
	}
	// A leaf set again gets the new patch's map; the object's own map
	// takes the new $lastUpdated; the shared map is left as it was.
	before := map[string]any{}
	for k, v := range first.(map[string]any) {
		before[k] = v
	}
	if _, err := h.patchReported(key, map[string]any{"a": 2.0, "o": map[string]any{"d": 1.0}}); err != nil {
		t.Fatal(err)
	}
	m = meta(h)
	if same(m["a"], first) || !same(m["b"], first) || !reflect.DeepEqual(first, before) {
		t.Fatalf("a later patch wrote the shared metadata: %v, was %v", first, before)
	}
	want := shown(h)
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}

	h2 := startHub(t, Options{Dir: dir})
	if got := shown(h2); got != want {
		t.Fatalf("after restart the twin shows\n%s\nwant\n%s", got, want)
	}
	m = meta(h2)
	if !same(m["b"], m["o"].(map[string]any)["c"]) || !same(m["a"], m["o"].(map[string]any)["d"]) {
		t.Fatal("leaves read from disk with the same metadata do not share it")
	}
	// Within one millisecond two patches write the same $lastUpdated.
	if same(m["a"], m["b"]) && !reflect.DeepEqual(m["a"], m["b"]) {
		t.Fatal("leaves with different metadata share a map")
	}
}
