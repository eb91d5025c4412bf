package hub

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
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

// twinState is the persisted twin of one identity. Tags hold plain JSON
// values (map[string]any, []any, string, float64, bool); the desired and
// reported sections and their metadata trees, which mirror the object
// structure of the sections, are held as their JSON encoding (packed) and
// decoded only while a patch, a read or a query needs them.
type twinState struct {
	Tags            map[string]any `json:"tags"`
	Desired         packed         `json:"desired"`
	Reported        packed         `json:"reported"`
	DesiredMeta     packed         `json:"desiredMeta"`
	ReportedMeta    packed         `json:"reportedMeta"`
	DesiredVersion  int64          `json:"desiredVersion"`
	ReportedVersion int64          `json:"reportedVersion"`
	// Version counts every change of the twin document; the etag derives
	// from it.
	Version int64 `json:"version"`
	// Configs is the status of each configuration that targets the twin;
	// CfgOwners the configuration whose content each desired path
	// ("properties.desired.a.b") holds. Both nil when none.
	Configs   map[string]string `json:"configurations,omitempty"`
	CfgOwners map[string]string `json:"configurationOwners,omitempty"`
}

func newTwinState(now time.Time) twinState {
	t := twinState{Tags: map[string]any{}, DesiredVersion: 1, ReportedVersion: 1, Version: 1}
	t.DesiredMeta = mustPack(map[string]any{"$lastUpdated": stamp(now), "$lastUpdatedVersion": int64(1)})
	t.ReportedMeta = mustPack(map[string]any{"$lastUpdated": stamp(now)})
	return t
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
func withSystem(section, meta packed, version int64, withMeta bool) map[string]any {
	out := section.obj()
	if withMeta {
		out["$metadata"] = meta.obj()
	}
	out["$version"] = version
	return out
}
