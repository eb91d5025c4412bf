package hub

import (
	"encoding/json"
	"errors"
	"math"
	"testing"
)

// TestPackedSections checks that a twin holds its reported and desired
// sections as compact JSON, that patches merge into them with the
// metadata of each leaf and object as before, that what a changed
// decoded tree holds never reaches the twin, and that a restarted hub
// reads them back and shows the same twin.
func TestPackedSections(t *testing.T) {
	dir := t.TempDir()
	h := startHub(t, Options{Dir: dir})
	if _, err := h.CreateDevice("d1"); err != nil {
		t.Fatal(err)
	}
	key := idKey("d1", "")
	state := func(h *Hub) twinState {
		h.mu.Lock()
		defer h.mu.Unlock()
		return h.records[key].Twin
	}
	shown := func(h *Hub) string {
		tw, err := h.Twin("d1", "")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(tw.Properties)
		return string(b)
	}
	if _, err := h.patchReported(key, map[string]any{"a": 1.0, "b": "x", "o": map[string]any{"c": true}}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.patchReported(key, map[string]any{"a": 2.0, "b": nil, "o": map[string]any{"d": 1.0}}); err != nil {
		t.Fatal(err)
	}
	if got, want := string(state(h).Reported), `{"a":2,"o":{"c":true,"d":1}}`; got != want {
		t.Fatalf("reported is held as %s, want %s", got, want)
	}
	meta := state(h).ReportedMeta.obj()
	for _, p := range [][]string{{"$lastUpdated"}, {"a", "$lastUpdated"}, {"o", "$lastUpdated"}, {"o", "c", "$lastUpdated"}, {"o", "d", "$lastUpdated"}} {
		if _, ok := getPath(meta, p); !ok {
			t.Errorf("reported $metadata has no %v: %v", p, meta)
		}
	}
	if _, ok := meta["b"]; ok {
		t.Errorf("reported $metadata keeps the removed b: %v", meta)
	}

	if _, err := h.UpdateTwin("d1", "", TwinPatch{Properties: &struct {
		Desired map[string]any `json:"desired,omitempty"`
	}{Desired: map[string]any{"s": map[string]any{"k": "v"}}}}, false, ""); err != nil {
		t.Fatal(err)
	}
	st := state(h)
	if got, want := string(st.Desired), `{"s":{"k":"v"}}`; got != want {
		t.Fatalf("desired is held as %s, want %s", got, want)
	}
	if v, _ := getPath(st.DesiredMeta.obj(), []string{"s", "k", "$lastUpdatedVersion"}); v != float64(st.DesiredVersion) {
		t.Fatalf("desired $metadata of s.k has $lastUpdatedVersion %v, want %d", v, st.DesiredVersion)
	}

	// A decoded tree is the caller's.
	tw, _ := h.Twin("d1", "")
	tw.Properties.Reported["a"] = "changed"
	tw.Properties.Reported["$metadata"].(map[string]any)["a"] = "changed"
	want := shown(h)
	if got := string(state(h).Reported); got != `{"a":2,"o":{"c":true,"d":1}}` {
		t.Fatalf("changing a twin read back changed the hub's: %s", got)
	}

	// JSON has no NaN: refused as the service refuses a bad value, and
	// the twin stays as it was.
	_, err := h.patchReported(key, map[string]any{"n": math.NaN()})
	var le *limitError
	if !errors.As(err, &le) {
		t.Fatalf("a NaN in a reported patch: %v, want a limit error", err)
	}
	if got := shown(h); got != want {
		t.Fatalf("a refused patch changed the twin to\n%s\nfrom\n%s", got, want)
	}

	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	h2 := startHub(t, Options{Dir: dir})
	if got := shown(h2); got != want {
		t.Fatalf("after restart the twin shows\n%s\nwant\n%s", got, want)
	}
	if _, err := h2.patchReported(key, map[string]any{"o": nil}); err != nil {
		t.Fatal(err)
	}
	if got := string(state(h2).Reported); got != `{"a":2}` {
		t.Fatalf("a patch after restart leaves reported %s, want {\"a\":2}", got)
	}
}
