package ntp

import (
	"reflect"
	"testing"
)

// FuzzServer checks that every server name the provider accepts is
// written as one token that reads back the same from both daemons'
// files: no name can inject a line or an option.
func FuzzServer(f *testing.F) {
	for _, s := range []string{"pool.ntp.org", "10.0.0.1", "::1", "fe80::1%eth0", "a b", "a\nNTP=evil", "x.", "1.2.3.4.5"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if checkServer(s) != nil {
			return
		}
		spec := Spec{Servers: []string{s}, Fallback: []string{"pool.ntp.org"}, HasFallback: true, Enabled: true}
		for _, d := range []string{Timesyncd, Chrony} {
			servers, fallback := parse(d, render(d, spec))
			if !reflect.DeepEqual(servers, []string{s}) || !reflect.DeepEqual(fallback, []string{"pool.ntp.org"}) {
				t.Fatalf("%s: %q reads back as %q, %q", d, s, servers, fallback)
			}
		}
	})
}
