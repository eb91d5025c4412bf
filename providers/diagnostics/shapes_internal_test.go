package diagnostics

import (
	"strings"
	"testing"
)

// TestNameShapesKeepTheirLengths: the name, unit and since checks keep
// the lengths their counted patterns had.
func TestNameShapesKeepTheirLengths(t *testing.T) {
	for _, c := range []struct {
		re  charsRE
		max int
		ok  string
		bad string
	}{{nameRE, 128, "a_b-1", "a b"}, {unitRE, 256, "ssh@x.service", "a/b"}, {sinceRE, 64, "2026-12-02 10:00", "a;b"}} {
		if !c.re.MatchString(c.ok) || c.re.MatchString(c.bad) || c.re.MatchString("") {
			t.Errorf("%v: %q/%q/empty", c.re.re, c.ok, c.bad)
		}
		if !c.re.MatchString(strings.Repeat("a", c.max)) || c.re.MatchString(strings.Repeat("a", c.max+1)) {
			t.Errorf("%v: the limit is not %d", c.re.re, c.max)
		}
	}
}
