// Package jsonx holds the JSON operations twin documents need: semantic
// equality, merge patches (objects merge, null deletes) and the patch
// between two documents.
package jsonx

import (
	"bytes"
	"encoding/json"
)

// Equal compares two JSON values semantically (key order and white space
// do not matter).
func Equal(a, b json.RawMessage) bool {
	if bytes.Equal(a, b) {
		return true
	}
	var va, vb any
	if json.Unmarshal(a, &va) != nil || json.Unmarshal(b, &vb) != nil {
		return false
	}
	ca, _ := json.Marshal(va)
	cb, _ := json.Marshal(vb)
	return bytes.Equal(ca, cb)
}

// IsNull reports whether v is the JSON null.
func IsNull(v json.RawMessage) bool { return bytes.Equal(bytes.TrimSpace(v), []byte("null")) }

// MergePatch applies a JSON merge patch (objects merge recursively, null
// deletes) to doc and returns the result; doc is not modified.
func MergePatch(doc, patch map[string]json.RawMessage) map[string]json.RawMessage {
	out := make(map[string]json.RawMessage, len(doc)+len(patch))
	for k, v := range doc {
		out[k] = v
	}
	for k, pv := range patch {
		if IsNull(pv) {
			delete(out, k)
			continue
		}
		var po map[string]json.RawMessage
		if json.Unmarshal(pv, &po) == nil && po != nil {
			var do map[string]json.RawMessage
			if cur, ok := out[k]; ok && json.Unmarshal(cur, &do) == nil && do != nil {
				b, _ := json.Marshal(MergePatch(do, po))
				out[k] = b
				continue
			}
			b, _ := json.Marshal(MergePatch(nil, po)) // drop nulls inside
			out[k] = b
			continue
		}
		out[k] = pv
	}
	return out
}

// Diff returns the merge patch that turns old into new: changed members,
// recursively for objects, and null for members that disappeared. An
// empty result means equal.
func Diff(old, new map[string]json.RawMessage) map[string]json.RawMessage {
	out := map[string]json.RawMessage{}
	for k, nv := range new {
		ov, ok := old[k]
		if ok && Equal(ov, nv) {
			continue
		}
		var oo, no map[string]json.RawMessage
		if ok && json.Unmarshal(ov, &oo) == nil && oo != nil && json.Unmarshal(nv, &no) == nil && no != nil {
			if d := Diff(oo, no); len(d) > 0 {
				b, _ := json.Marshal(d)
				out[k] = b
			}
			continue
		}
		out[k] = nv
	}
	for k := range old {
		if _, ok := new[k]; !ok {
			out[k] = json.RawMessage("null")
		}
	}
	return out
}
