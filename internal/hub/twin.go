package hub

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sort"
	"strings"
	"time"
	"unicode/utf8"
)

// Twin limits of the service (iot-hub-devguide-device-twins).
const (
	maxSectionBytes = 32 * 1024
	maxTagsBytes    = 8 * 1024
	maxDepth        = 10
	maxKeyBytes     = 1024
	maxStringBytes  = 4 * 1024
	maxSafeInt      = 4503599627370495
)

// twinState is the persisted twin of one identity. Its tags and its
// desired and reported sections are held as their JSON encoding (packed),
// the sections' metadata trees (which mirror their objects) as a compact
// table (metaPacked); each is decoded only while a patch, a read or a
// query needs it. Decoded, they are plain JSON values (map[string]any,
// []any, string, float64, bool).
type twinState struct {
	Tags            packed     `json:"tags"`
	Desired         packed     `json:"desired"`
	Reported        packed     `json:"reported"`
	DesiredMeta     metaPacked `json:"-"`
	ReportedMeta    metaPacked `json:"-"`
	DesiredVersion  int64      `json:"desiredVersion"`
	ReportedVersion int64      `json:"reportedVersion"`
	// Version counts every change of the twin document; the etag derives
	// from it.
	Version int64 `json:"version"`
	// Configs is the status of each configuration that targets the twin;
	// CfgOwners the configuration whose content each desired path
	// ("properties.desired.a.b") holds. Both nil when none.
	Configs   pairs `json:"configurations,omitempty"`
	CfgOwners pairs `json:"configurationOwners,omitempty"`
}

func newTwinState(now time.Time) twinState {
	t := twinState{DesiredVersion: 1, ReportedVersion: 1, Version: 1}
	t.DesiredMeta = packMeta(nil, map[string]any{"$lastUpdated": stamp(now), "$lastUpdatedVersion": int64(1)})
	t.ReportedMeta = packMeta(nil, map[string]any{"$lastUpdated": stamp(now)})
	return t
}

// twinStateJSON is twinState as persisted: the metadata trees in full.
type twinStateJSON struct {
	twinStateFields
	DesiredMeta  map[string]any `json:"desiredMeta"`
	ReportedMeta map[string]any `json:"reportedMeta"`
}

// twinStateFields is twinState without its methods.
type twinStateFields twinState

// MarshalJSON writes the twin as the registry persists it.
func (t twinState) MarshalJSON() ([]byte, error) {
	return json.Marshal(twinStateJSON{
		twinStateFields: twinStateFields(t),
		DesiredMeta:     t.DesiredMeta.tree(t.Desired.obj()),
		ReportedMeta:    t.ReportedMeta.tree(t.Reported.obj()),
	})
}

// UnmarshalJSON reads a persisted twin.
func (t *twinState) UnmarshalJSON(b []byte) error {
	var j twinStateJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*t = twinState(j.twinStateFields)
	t.DesiredMeta = packMeta(t.Desired.obj(), j.DesiredMeta)
	t.ReportedMeta = packMeta(t.Reported.obj(), j.ReportedMeta)
	return nil
}

// packed is a JSON object held as its compact encoding; empty is {}.
//
// A twin section as a map[string]any tree costs a map per object (a few
// hundred bytes however few keys it has), a boxed value per number and a
// string header per key and string, and its metadata tree as much again:
// encoded, the same section and metadata take a fraction of that. A twin
// is read or patched far less often than it is held, so each use decodes
// a fresh tree (which the caller may change at will) and a change is
// packed again.
type packed []byte

// MarshalJSON writes the object as it is.
func (p packed) MarshalJSON() ([]byte, error) {
	if len(p) == 0 {
		return []byte("{}"), nil
	}
	return p, nil
}

// UnmarshalJSON keeps a compact copy of a JSON object; null leaves p empty.
func (p *packed) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		*p = nil
		return nil
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, b); err != nil {
		return err
	}
	if buf.Len() == 0 || buf.Bytes()[0] != '{' {
		return errors.New("twin section is not a JSON object")
	}
	*p = bytes.Clone(buf.Bytes())
	return nil
}

// obj decodes the object into a tree of its own.
func (p packed) obj() map[string]any {
	m := map[string]any{}
	if len(p) == 0 {
		return m
	}
	if err := json.Unmarshal(p, &m); err != nil {
		// Only pack and UnmarshalJSON make a packed, both from valid
		// JSON objects.
		panic(fmt.Sprintf("hub: packed twin section does not decode: %v", err))
	}
	return m
}

// pack encodes a section or metadata tree. It fails only on values JSON
// has no encoding for, which a patch decoded from JSON cannot hold (and
// checkKeysAndValues refuses NaN and infinities from Go callers).
func pack(m map[string]any) (packed, error) {
	if len(m) == 0 {
		return nil, nil
	}
	b, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	return packed(b), nil
}

// mustPack packs what the hub built itself: metadata, and sections from
// content that was decoded from JSON.
func mustPack(m map[string]any) packed {
	p, err := pack(m)
	if err != nil {
		panic(fmt.Sprintf("hub: twin section does not encode: %v", err))
	}
	return p
}

func (t *twinState) etag() string {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(t.Version))
	return base64.StdEncoding.EncodeToString(b[:])
}

// stamp formats a time as the service does in $metadata.
func stamp(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000Z") }

// limitError is a twin patch that the service rejects with 400.
type limitError struct{ msg string }

func (e *limitError) Error() string { return e.msg }

func limitf(format string, a ...any) error { return &limitError{fmt.Sprintf(format, a...)} }

// stripSystem removes $version and $metadata from the root of a section
// patch: clients echo them back from a GET and the service ignores them.
func stripSystem(patch map[string]any) map[string]any {
	if _, ok := patch["$version"]; !ok {
		if _, ok := patch["$metadata"]; !ok {
			return patch
		}
	}
	out := make(map[string]any, len(patch))
	for k, v := range patch {
		if k != "$version" && k != "$metadata" {
			out[k] = v
		}
	}
	return out
}

// checkKeysAndValues validates the key and value rules on a patch.
func checkKeysAndValues(v any, at string) error {
	switch x := v.(type) {
	case map[string]any:
		for k, c := range x {
			if err := checkKey(k, at); err != nil {
				return err
			}
			if err := checkKeysAndValues(c, at+"."+k); err != nil {
				return err
			}
		}
	case []any:
		for i, c := range x {
			if err := checkKeysAndValues(c, fmt.Sprintf("%s[%d]", at, i)); err != nil {
				return err
			}
		}
	case string:
		if len(x) > maxStringBytes {
			return limitf("value of %s is %d bytes long, more than %d", at, len(x), maxStringBytes)
		}
	case float64:
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return limitf("value of %s is not a finite number", at)
		}
		if x == math.Trunc(x) && (x > maxSafeInt || x < -maxSafeInt-1) {
			return limitf("integer value of %s is out of range", at)
		}
	}
	return nil
}

func checkKey(k, at string) error {
	switch {
	case k == "":
		return limitf("empty property name under %s", at)
	case len(k) > maxKeyBytes:
		return limitf("property name under %s is longer than %d bytes", at, maxKeyBytes)
	case strings.ContainsAny(k, ".$ "):
		return limitf("property name %q under %s contains '.', '$' or a space", k, at)
	}
	for _, r := range k {
		if r < 0x20 || r == 0x7f {
			return limitf("property name %q under %s contains a control character", k, at)
		}
	}
	if !utf8.ValidString(k) {
		return limitf("property name under %s is not UTF-8", at)
	}
	return nil
}

// depth is the nesting of objects under a section root: {"a":1} is 0,
// {"a":{"b":1}} is 1.
func depth(v any) int {
	d := 0
	switch x := v.(type) {
	case map[string]any:
		for _, c := range x {
			if _, ok := c.(map[string]any); ok {
				d = max(d, 1+depth(c))
			} else {
				d = max(d, depth(c))
			}
		}
	case []any:
		for _, c := range x {
			if _, ok := c.(map[string]any); ok {
				d = max(d, 1+depth(c))
			} else {
				d = max(d, depth(c))
			}
		}
	}
	return d
}

// size is the service's twin size: the UTF-8 length of every key and
// string, 8 bytes per number, 4 per boolean.
func size(v any) int {
	switch x := v.(type) {
	case map[string]any:
		n := 0
		for k, c := range x {
			n += len(k) + size(c)
		}
		return n
	case []any:
		n := 0
		for _, c := range x {
			n += size(c)
		}
		return n
	case string:
		return len(x)
	case float64:
		return 8
	case bool:
		return 4
	}
	return 0
}

func checkSection(name string, section map[string]any, limit int) error {
	if d := depth(section); d > maxDepth {
		return limitf("%s is nested %d levels deep, more than %d", name, d, maxDepth)
	}
	if n := size(section); n > limit {
		return limitf("%s is %d bytes, more than %d", name, n, limit)
	}
	return nil
}

// mergeSection applies a JSON merge patch to a section and its metadata:
// null deletes, objects merge recursively, anything else replaces.
// meta may be nil (tags have no metadata). md becomes the metadata of
// every leaf the patch sets, shared: the caller must not change it after.
func mergeSection(dst, meta, patch map[string]any, md map[string]any) {
	for k, v := range patch {
		if v == nil {
			delete(dst, k)
			if meta != nil {
				delete(meta, k)
			}
			continue
		}
		pm, isObj := v.(map[string]any)
		if !isObj {
			dst[k] = deepCopy(v)
			if meta != nil {
				// Every leaf a patch writes shares md: a leaf's metadata
				// is replaced, never written in place (only an object's
				// metadata map is, and that one is its own), and callers
				// build md for one patch and leave it alone after. One
				// map per patch instead of one per leaf is most of a
				// twin's metadata.
				meta[k] = md
			}
			continue
		}
		dm, wasObj := dst[k].(map[string]any)
		if !wasObj {
			dm = map[string]any{}
			dst[k] = dm
		}
		var cm map[string]any
		if meta != nil {
			cm, _ = meta[k].(map[string]any)
			if !wasObj || cm == nil {
				cm = map[string]any{}
			}
			meta[k] = cm
		}
		mergeSection(dm, cm, pm, md)
	}
	if meta != nil {
		for k, v := range md {
			meta[k] = v
		}
	}
}

// replaceSection builds a section and its metadata from scratch.
func replaceSection(patch map[string]any, md map[string]any) (map[string]any, map[string]any) {
	dst, meta := map[string]any{}, map[string]any{}
	mergeSection(dst, meta, patch, md)
	for k, v := range md {
		meta[k] = v
	}
	return dst, meta
}

func deepCopy(v any) any {
	switch x := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, c := range x {
			out[k] = deepCopy(c)
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, c := range x {
			out[i] = deepCopy(c)
		}
		return out
	}
	return v
}

// cloneMerged returns a deep copy of section with patch merged, without
// metadata, to check limits before committing.
func cloneMerged(section, patch map[string]any) map[string]any {
	out := deepCopy(section).(map[string]any)
	mergeSection(out, nil, patch, nil)
	return out
}

// withSystem decodes a section with $metadata and $version, as the
// service shows it.
func withSystem(section packed, meta metaPacked, version int64, withMeta bool) map[string]any {
	out := section.obj()
	if withMeta {
		out["$metadata"] = meta.tree(out)
	}
	out["$version"] = version
	return out
}

// metaPacked is the metadata tree of a packed section, held compactly.
//
// The metadata tree mirrors the section's objects: every object and every
// leaf has a node holding its $lastUpdated (and in desired its
// $lastUpdatedVersion), and the nodes of one patch share those values.
// Written out as JSON that is three times the section itself. Held here
// is a table of the distinct values and, in the order of a walk of the
// section (keys sorted), each node's index into it: a byte or two per
// node. A tree that does not mirror its section (which the hub does not
// write, but a registry on disk might hold) is kept as JSON instead.
//
// Layout: metaCompact, the number of entries, each entry (length and
// bytes of $lastUpdated, 1 and the version or 0), then one index per node;
// or the tree's JSON, which starts with '{'; or nothing for {}.
type metaPacked []byte

const metaCompact = 1

// metaEntry is the content of one metadata node.
type metaEntry struct {
	updated    string
	version    int64
	hasVersion bool
}

// packMeta packs the metadata tree meta of section.
func packMeta(section, meta map[string]any) metaPacked {
	if len(meta) == 0 {
		return nil
	}
	e := metaEncoder{index: map[metaEntry]uint64{}}
	if e.node(section, meta) {
		out := binary.AppendUvarint([]byte{metaCompact}, uint64(len(e.entries)))
		for _, en := range e.entries {
			out = binary.AppendUvarint(out, uint64(len(en.updated)))
			out = append(out, en.updated...)
			if en.hasVersion {
				out = append(out, 1)
				out = binary.AppendVarint(out, en.version)
			} else {
				out = append(out, 0)
			}
		}
		return bytes.Clone(append(out, e.nodes...))
	}
	b, err := json.Marshal(meta)
	if err != nil {
		panic(fmt.Sprintf("hub: twin metadata does not encode: %v", err))
	}
	return metaPacked(b)
}

type metaEncoder struct {
	index   map[metaEntry]uint64
	entries []metaEntry
	nodes   []byte
}

// node appends the node of an object or leaf and, for an object, its
// children's; false when meta does not mirror the section.
func (e *metaEncoder) node(section any, meta any) bool {
	m, ok := meta.(map[string]any)
	if !ok {
		return false
	}
	var en metaEntry
	own := 0
	if v, ok := m["$lastUpdated"]; ok {
		if en.updated, ok = v.(string); !ok {
			return false
		}
		own++
	} else {
		return false
	}
	if v, ok := m["$lastUpdatedVersion"]; ok {
		switch x := v.(type) {
		case int64:
			en.version = x
		case float64:
			if x != math.Trunc(x) || math.Abs(x) > maxSafeInt {
				return false
			}
			en.version = int64(x)
		default:
			return false
		}
		en.hasVersion = true
		own++
	}
	i, ok := e.index[en]
	if !ok {
		i = uint64(len(e.entries))
		e.index[en] = i
		e.entries = append(e.entries, en)
	}
	e.nodes = binary.AppendUvarint(e.nodes, i)
	obj, isObj := section.(map[string]any)
	if !isObj {
		return len(m) == own
	}
	if len(m) != own+len(obj) {
		return false
	}
	for _, k := range sortedKeys(obj) {
		if !e.node(obj[k], m[k]) {
			return false
		}
	}
	return true
}

// tree decodes the metadata tree of section, which must be the section
// it was packed with.
func (p metaPacked) tree(section map[string]any) map[string]any {
	if len(p) == 0 {
		return map[string]any{}
	}
	if p[0] == '{' {
		m := map[string]any{}
		if err := json.Unmarshal(p, &m); err != nil {
			panic(fmt.Sprintf("hub: packed twin metadata does not decode: %v", err))
		}
		return m
	}
	d := metaDecoder{b: p[1:]}
	n := d.uvarint()
	d.entries = make([]metaEntry, 0, min(n, uint64(len(d.b))))
	for j := uint64(0); j < n; j++ {
		l := d.uvarint()
		en := metaEntry{updated: string(d.b[:l])}
		d.b = d.b[l:]
		en.hasVersion = d.b[0] == 1
		d.b = d.b[1:]
		if en.hasVersion {
			v, k := binary.Varint(d.b)
			en.version, d.b = v, d.b[k:]
		}
		d.entries = append(d.entries, en)
	}
	return d.node(section)
}

type metaDecoder struct {
	b       []byte
	entries []metaEntry
}

func (d *metaDecoder) uvarint() uint64 {
	v, k := binary.Uvarint(d.b)
	if k <= 0 {
		panic("hub: packed twin metadata is truncated")
	}
	d.b = d.b[k:]
	return v
}

func (d *metaDecoder) node(section any) map[string]any {
	en := d.entries[d.uvarint()]
	obj, isObj := section.(map[string]any)
	m := make(map[string]any, 2+len(obj))
	m["$lastUpdated"] = en.updated
	if en.hasVersion {
		m["$lastUpdatedVersion"] = en.version
	}
	if isObj {
		for _, k := range sortedKeys(obj) {
			m[k] = d.node(obj[k])
		}
	}
	return m
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// pairs is a small string map held as one slice of keys and values,
// sorted by key: a twin's configurations with their statuses, and the
// configuration owning each of its desired paths. A Go map costs a few
// hundred bytes however few entries it has; a twin has one or two.
type pairs []string

// pairsOf returns m as pairs; nil when m is empty.
func pairsOf(m map[string]string) pairs {
	if len(m) == 0 {
		return nil
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	p := make(pairs, 0, 2*len(m))
	for _, k := range keys {
		p = append(p, k, m[k])
	}
	return p
}

// get returns the value of k.
func (p pairs) get(k string) (string, bool) {
	i := sort.Search(len(p)/2, func(i int) bool { return p[2*i] >= k })
	if 2*i < len(p) && p[2*i] == k {
		return p[2*i+1], true
	}
	return "", false
}

// equal reports whether p holds what m holds.
func (p pairs) equal(m map[string]string) bool {
	if len(p) != 2*len(m) {
		return false
	}
	for i := 0; i < len(p); i += 2 {
		if v, ok := m[p[i]]; !ok || v != p[i+1] {
			return false
		}
	}
	return true
}

// MarshalJSON writes a JSON object.
func (p pairs) MarshalJSON() ([]byte, error) {
	m := make(map[string]string, len(p)/2)
	for i := 0; i < len(p); i += 2 {
		m[p[i]] = p[i+1]
	}
	return json.Marshal(m)
}

// UnmarshalJSON reads a JSON object of strings.
func (p *pairs) UnmarshalJSON(b []byte) error {
	var m map[string]string
	if err := json.Unmarshal(b, &m); err != nil {
		return err
	}
	*p = pairsOf(m)
	return nil
}
