package sysctl

import (
	"strings"
	"testing"
)

// FuzzCanonical checks that every key the provider accepts maps to a path
// strictly below /proc/sys and a file line that reads back as the same key.
func FuzzCanonical(f *testing.F) {
	for _, k := range []string{"net.ipv4.ip_forward", "net/ipv4/conf/eth0.100/rp_filter", "a..b", "net/../x", "x.", "a = b\nc"} {
		f.Add(k)
	}
	f.Fuzz(func(t *testing.T, key string) {
		c, err := canonical(key)
		if err != nil {
			return
		}
		for _, comp := range strings.Split(strings.TrimPrefix("/"+procRel(c), "/proc/sys/"), "/") {
			if comp == "" || comp == "." || comp == ".." {
				t.Fatalf("%q → %q has component %q", key, procRel(c), comp)
			}
		}
		if again, err := canonical(c); err != nil || again != c {
			t.Fatalf("canonical(%q) = %q, %v", c, again, err)
		}
		if strings.ContainsAny(c, " =#;\n\r\t") {
			t.Fatalf("%q would break the file", c)
		}
	})
}
