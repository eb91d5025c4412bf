package hostname

import (
	"strings"
	"testing"
)

// FuzzRewriteHosts checks on arbitrary hosts files that the rewrite is
// idempotent, maps 127.0.1.1 to the name exactly once, and keeps every
// line that is not a 127.0.1.1 entry.
func FuzzRewriteHosts(f *testing.F) {
	f.Add("127.0.0.1 localhost\n127.0.1.1 old.example old extra # c\n::1 localhost\n", "kiosk-17")
	f.Add("", "a.b")
	f.Add("127.0.1.1\n127.0.1.1 x\n#127.0.1.1 y", "x")
	f.Fuzz(func(t *testing.T, hosts, name string) {
		if Validate(name) != nil {
			return
		}
		once := rewriteHosts([]byte(hosts), name)
		if twice := rewriteHosts(once, name); string(twice) != string(once) {
			t.Fatalf("not idempotent:\n%q\n%q", once, twice)
		}
		n := 0
		for _, line := range strings.Split(string(once), "\n") {
			body, _, _ := strings.Cut(line, "#")
			if f := strings.Fields(body); len(f) > 1 && f[0] == loopback {
				n++
				if f[1] != name {
					t.Fatalf("127.0.1.1 maps to %q", f[1])
				}
			}
		}
		if n != 1 {
			t.Fatalf("%d 127.0.1.1 lines in %q", n, once)
		}
		if len(hosts) > 0 {
			kept := map[string]bool{}
			for _, line := range strings.Split(string(once), "\n") {
				kept[line] = true
			}
			for _, line := range strings.Split(strings.TrimSuffix(hosts, "\n"), "\n") {
				body, _, _ := strings.Cut(line, "#")
				if f := strings.Fields(body); (len(f) == 0 || f[0] != loopback) && !kept[line] {
					t.Fatalf("line %q was lost", line)
				}
			}
		}
	})
}
