package agent

import (
	"bytes"
	"encoding/json"
)

// mergePatch applies a JSON merge patch (objects merge recursively, null
// deletes) to doc and returns the result; doc is not modified.
func mergePatch(doc, patch map[string]json.RawMessage) map[string]json.RawMessage {
	out := make(map[string]json.RawMessage, len(doc)+len(patch))
	for k, v := range doc {
		out[k] = v
	}
	for k, pv := range patch {
		if isNull(pv) {
			delete(out, k)
			continue
		}
		var po map[string]json.RawMessage
		if json.Unmarshal(pv, &po) == nil && po != nil {
			var do map[string]json.RawMessage
			if cur, ok := out[k]; ok && json.Unmarshal(cur, &do) == nil && do != nil {
				b, _ := json.Marshal(mergePatch(do, po))
				out[k] = b
				continue
			}
			b, _ := json.Marshal(mergePatch(nil, po)) // drop nulls inside
			out[k] = b
			continue
		}
		out[k] = pv
	}
	return out
}

// diff returns the merge patch that turns old into new: changed members,
// recursively for objects, and null for members that disappeared. An
// empty result means equal.
func diff(old, new map[string]json.RawMessage) map[string]json.RawMessage {
	out := map[string]json.RawMessage{}
	for k, nv := range new {
		ov, ok := old[k]
		if ok && jsonEqual(ov, nv) {
			continue
		}
		var oo, no map[string]json.RawMessage
		if ok && json.Unmarshal(ov, &oo) == nil && oo != nil && json.Unmarshal(nv, &no) == nil && no != nil {
			if d := diff(oo, no); len(d) > 0 {
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

func isNull(v json.RawMessage) bool { return bytes.Equal(bytes.TrimSpace(v), []byte("null")) }

func jsonEqual(a, b json.RawMessage) bool {
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
