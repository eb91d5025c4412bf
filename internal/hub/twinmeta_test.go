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
	meta := state(h).ReportedMeta.tree(state(h).Reported.obj())
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
	if v, _ := getPath(st.DesiredMeta.tree(st.Desired.obj()), []string{"s", "k", "$lastUpdatedVersion"}); v != st.DesiredVersion {
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

// TestMetaPacked checks the compact metadata: a tree that mirrors its
// section decodes to the same tree in a fraction of its JSON, and one
// that does not (an extra node, a missing one, a node with more than
// $lastUpdated and $lastUpdatedVersion, a version that is no integer) is
// kept as JSON and decodes as it was.
func TestMetaPacked(t *testing.T) {
	norm := func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	at := func(s string, v float64) map[string]any {
		return map[string]any{"$lastUpdated": s, "$lastUpdatedVersion": v}
	}
	section := map[string]any{"a": 1.0, "o": map[string]any{"b": "x", "e": map[string]any{}, "l": []any{1.0, map[string]any{"z": true}}}}
	meta := map[string]any{
		"$lastUpdated": "2026-01-02T03:04:05.006Z", "$lastUpdatedVersion": 7.0,
		"a": at("2026-01-02T03:04:05.006Z", 7),
		"o": map[string]any{
			"$lastUpdated": "2026-01-02T03:04:05.006Z", "$lastUpdatedVersion": 7.0,
			"b": at("2026-01-01T00:00:00.000Z", 3),
			"e": at("2026-01-02T03:04:05.006Z", 7),
			"l": at("2026-01-01T00:00:00.000Z", 3),
		},
	}
	p := packMeta(section, meta)
	if p[0] != metaCompact {
		t.Fatalf("a mirroring tree is kept as %q", p)
	}
	if got, want := norm(p.tree(section)), norm(meta); got != want {
		t.Fatalf("decoded\n%s\nwant\n%s", got, want)
	}
	if js := norm(meta); len(p)*4 > len(js) {
		t.Errorf("compact metadata is %d bytes, its JSON %d", len(p), len(js))
	}
	reported := map[string]any{"$lastUpdated": "2026-01-02T03:04:05.006Z", "a": map[string]any{"$lastUpdated": "2026-01-02T03:04:05.006Z"}}
	if p := packMeta(map[string]any{"a": "x"}, reported); p[0] != metaCompact || norm(p.tree(map[string]any{"a": "x"})) != norm(reported) {
		t.Fatalf("reported metadata (no versions) packs to %q", p)
	}

	for name, bad := range map[string]func(m map[string]any){
		"extra node":   func(m map[string]any) { m["gone"] = at("2026-01-01T00:00:00.000Z", 1) },
		"missing node": func(m map[string]any) { delete(m["o"].(map[string]any), "b") },
		"other key":    func(m map[string]any) { m["a"].(map[string]any)["x"] = "y" },
		"no stamp":     func(m map[string]any) { delete(m["a"].(map[string]any), "$lastUpdated") },
		"odd version":  func(m map[string]any) { m["a"].(map[string]any)["$lastUpdatedVersion"] = 1.5 },
	} {
		m := deepCopy(meta).(map[string]any)
		bad(m)
		want := norm(m)
		p := packMeta(section, m)
		if p[0] != '{' {
			t.Errorf("%s: kept compact", name)
			continue
		}
		if got := norm(p.tree(section)); got != want {
			t.Errorf("%s: decoded\n%s\nwant\n%s", name, got, want)
		}
	}
	if p := packMeta(section, nil); len(p) != 0 || len(p.tree(section)) != 0 {
		t.Fatalf("no metadata packs to %q", p)
	}
}

// TestPairs checks the small string maps of a twin: lookups, comparison
// with a map and the JSON object they persist as.
func TestPairs(t *testing.T) {
	m := map[string]string{"b": "2", "a": "1", "c": "3"}
	p := pairsOf(m)
	for k, v := range m {
		if got, ok := p.get(k); !ok || got != v {
			t.Fatalf("get(%q) = %q, %v", k, got, ok)
		}
	}
	if _, ok := p.get("d"); ok {
		t.Fatal("get of a missing key succeeds")
	}
	if !p.equal(m) || p.equal(map[string]string{"a": "1", "b": "2"}) || p.equal(map[string]string{"a": "1", "b": "2", "c": "4"}) {
		t.Fatal("equal is wrong")
	}
	b, err := json.Marshal(struct {
		P pairs `json:"p,omitempty"`
		E pairs `json:"e,omitempty"`
	}{P: p})
	if err != nil || string(b) != `{"p":{"a":"1","b":"2","c":"3"}}` {
		t.Fatalf("marshal: %s %v", b, err)
	}
	var back struct{ P pairs }
	if err := json.Unmarshal([]byte(`{"P":{"c":"3","a":"1","b":"2"}}`), &back); err != nil || !back.P.equal(m) {
		t.Fatalf("unmarshal: %v %v", back.P, err)
	}
	if pairsOf(nil) != nil || !pairs(nil).equal(nil) {
		t.Fatal("empty pairs")
	}
}
