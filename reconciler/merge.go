package reconciler

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"github.com/twinlet/twinlet/internal/jsonx"
	"github.com/twinlet/twinlet/providers"
)

// Layer is one source of desired state. Higher layers win.
type Layer int

// The layers, lowest precedence first.
const (
	LayerDefault Layer = iota // local policy, mode: default
	LayerTwin                 // the twin's desired properties
	LayerEnforce              // local policy, mode: enforce
)

func (l Layer) String() string {
	switch l {
	case LayerDefault:
		return "default"
	case LayerTwin:
		return "twin"
	case LayerEnforce:
		return "enforce"
	}
	return fmt.Sprintf("layer%d", int(l))
}

// Input is one layer's contribution to one section.
type Input struct {
	Layer Layer
	// Source names it: a policy file ("base.yaml") or "twin".
	Source string
	// Value is the section's JSON object.
	Value json.RawMessage
	// Locate maps a JSON pointer relative to the section to a position
	// a human can find ("policy.d/base.yaml:12:5"); nil for none.
	Locate func(pointer string) string
}

func (in *Input) at(pointer string) string {
	if in == nil {
		return ""
	}
	if in.Locate != nil {
		return in.Locate(pointer)
	}
	return in.Source
}

// Conflict is a value of a lower layer that a higher one overrode with a
// different value. It is reported, never silently dropped.
type Conflict struct {
	Pointer    string `json:"pointer"`
	Overridden string `json:"overridden"`
	By         string `json:"by"`
}

func (c Conflict) String() string {
	return fmt.Sprintf("%s from %s overridden by %s", c.Pointer, c.Overridden, c.By)
}

// Merged is the result of merging the inputs of one section.
type Merged struct {
	// Value is the merged section.
	Value map[string]json.RawMessage
	// Origin names, for each top-level key, the input it came from.
	Origin map[string]*Input
	// Conflicts lists overridden twin values (and overlaps between
	// local files of the same layer), sorted by pointer.
	Conflicts []Conflict
}

// JSON returns the merged section as a JSON object with sorted keys.
func (m *Merged) JSON() json.RawMessage {
	b, _ := json.Marshal(m.Value) // map keys marshal sorted
	return b
}

// Locate maps a pointer into the merged section to the input that
// provided it.
func (m *Merged) Locate(pointer string) (string, *Input) {
	key := pointer
	if strings.HasPrefix(key, "/") {
		key = key[1:]
	}
	if i := strings.IndexByte(key, '/'); i >= 0 {
		key = key[:i]
	}
	key = strings.NewReplacer("~1", "/", "~0", "~").Replace(key)
	in := m.Origin[key]
	if in == nil {
		in = m.top()
	}
	return in.at(pointer), in
}

// top returns the highest-precedence input, for problems of the whole
// section.
func (m *Merged) top() *Input {
	var best *Input
	for _, in := range m.Origin {
		if best == nil || in.Layer > best.Layer || (in.Layer == best.Layer && in.Source > best.Source) {
			best = in
		}
	}
	return best
}

// Sources lists the distinct sources that contributed, sorted.
func (m *Merged) Sources() []string {
	seen := map[string]bool{}
	var out []string
	for _, in := range m.Origin {
		if !seen[in.Source] {
			seen[in.Source] = true
			out = append(out, in.Source)
		}
	}
	sort.Strings(out)
	return out
}

// Merge merges the inputs of one section. Top-level keys are the unit of
// merging: fields of an object section, items and settings of a collection
// section. A key of a higher layer replaces the same key of lower ones
// whole; within a layer, later inputs win. A JSON null is the absence of
// the key. Inputs must be ordered within a layer (file name order); Merge
// sorts by layer itself. An input that is not a JSON object is an error
// naming its source.
func Merge(inputs []Input) (*Merged, error) {
	ordered := make([]*Input, len(inputs))
	for i := range inputs {
		ordered[i] = &inputs[i]
	}
	sort.SliceStable(ordered, func(i, j int) bool { return ordered[i].Layer < ordered[j].Layer })
	m := &Merged{Value: map[string]json.RawMessage{}, Origin: map[string]*Input{}}
	for _, in := range ordered {
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(in.Value, &obj); err != nil || obj == nil {
			if bytes.Equal(bytes.TrimSpace(in.Value), []byte("null")) {
				continue
			}
			return nil, fmt.Errorf("%s: section is not an object", in.at(""))
		}
		for k, v := range obj {
			if bytes.Equal(bytes.TrimSpace(v), []byte("null")) {
				continue
			}
			if prev, ok := m.Origin[k]; ok && !jsonx.Equal(m.Value[k], v) &&
				(prev.Layer == LayerTwin || prev.Layer == in.Layer) {
				m.Conflicts = append(m.Conflicts, Conflict{
					Pointer:    providers.Pointer(k),
					Overridden: prev.Source, By: in.Source})
			}
			m.Value[k] = v
			m.Origin[k] = in
		}
	}
	sort.Slice(m.Conflicts, func(i, j int) bool { return m.Conflicts[i].Pointer < m.Conflicts[j].Pointer })
	return m, nil
}
