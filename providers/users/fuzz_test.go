package users

import (
	"strings"
	"testing"
)

// FuzzCheckKey: a line that checkKey accepts renders as exactly one line
// of authorized_keys, starting with a supported type, so that no input
// can smuggle a second key or an option into the file.
func FuzzCheckKey(f *testing.F) {
	for _, s := range []string{edKey, ecdsaKey, "ssh-ed25519 AAAA", "command=\"x\" " + edKey, edKey + "\n" + ecdsaKey, "ssh-rsa AAAAB3NzaC1yc2E=", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA== x\ry"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		if checkKey(line) != nil {
			return
		}
		out := strings.TrimPrefix(string(renderKeys([]string{line})), keysHeader)
		if strings.Count(out, "\n") != 1 || !strings.HasSuffix(out, "\n") {
			t.Fatalf("%q renders as %q", line, out)
		}
		if typ, _, _ := strings.Cut(out, " "); !keyTypes[typ] {
			t.Fatalf("%q renders with type %q", line, typ)
		}
	})
}
