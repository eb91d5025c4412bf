package console

import (
	"sort"

	"github.com/twinlet/twinlet/providers"
	"github.com/twinlet/twinlet/schemas"
)

// KnownSections are the sections of the registered providers (import
// providers/standard for twinlet's own), with the schemas the agent
// validates them with and their direct methods.
func KnownSections() []Section {
	var out []Section
	for _, info := range providers.All() {
		raw := []byte(info.Schema)
		if len(raw) == 0 {
			raw, _ = schemas.Raw(info.ID)
		}
		sec := Section{ID: info.ID, Writable: !info.ReadOnly, Schema: raw}
		for name, m := range info.Methods {
			sec.Methods = append(sec.Methods, Method{Name: name, Description: m.Description, Schema: m.Schema})
		}
		sort.Slice(sec.Methods, func(i, j int) bool { return sec.Methods[i].Name < sec.Methods[j].Name })
		out = append(out, sec)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}
