package providers

import (
	"encoding/json"
	"sort"
	"strings"
)

// CollectionInput is a Collection section split into its items and its
// settings, as every collection provider's Decode needs it.
type CollectionInput struct {
	// Names are the item names, sorted.
	Names []string
	// Items maps item names to their JSON.
	Items map[string]json.RawMessage
	// Prune is the section's prune setting.
	Prune bool
}

// SplitCollection splits a Collection section. Problems (not an object, a
// prune that is not a boolean) are added to errs.
func SplitCollection(raw json.RawMessage, errs *InvalidError) CollectionInput {
	var section map[string]json.RawMessage
	if err := json.Unmarshal(raw, &section); err != nil {
		errs.Add("", "%v", err)
		return CollectionInput{Items: map[string]json.RawMessage{}}
	}
	in := CollectionInput{Items: make(map[string]json.RawMessage, len(section))}
	if p, ok := section["prune"]; ok {
		if err := json.Unmarshal(p, &in.Prune); err != nil {
			errs.Add("/prune", "must be true or false")
		}
	}
	for name, v := range section {
		if !ReservedKeys[name] {
			in.Names = append(in.Names, name)
			in.Items[name] = v
		}
	}
	sort.Strings(in.Names)
	return in
}

// Pointer builds a JSON pointer from unescaped tokens: Pointer("a/b",
// "path") is "/a~1b/path". Empty tokens are skipped.
func Pointer(tokens ...string) string {
	var b strings.Builder
	for _, t := range tokens {
		if t == "" {
			continue
		}
		b.WriteByte('/')
		b.WriteString(pointerEscaper.Replace(t))
	}
	return b.String()
}

var pointerEscaper = strings.NewReplacer("~", "~0", "/", "~1")
