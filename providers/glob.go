package providers

import (
	"fmt"
	"strings"
)

// MatchGlob reports whether name matches the glob pattern, for the cloud
// scope's rules. sep separates the components of names ('/' for paths,
// '.' for sysctl keys). The syntax is small on purpose:
//
//	"*"   any run of characters without sep: "/etc/sudoers*" matches
//	      /etc/sudoers and /etc/sudoers.d, not /etc/sudoers.d/x
//	"?"   one character other than sep
//	"**"  any run of characters, sep included: "/etc/ssh/**" matches
//	      everything below /etc/ssh
//	"\c"  the character c itself (\*, \?, \\)
//
// Every other character matches itself; there are no classes or braces.
// A pattern that ends in sep followed by ** also matches what comes before
// it, so "/etc/ssh/**" covers the directory /etc/ssh itself, and
// "/etc/sudoers*/**" covers /etc/sudoers, /etc/sudoers.d and all below.
// Matching is on the name as written: callers clean paths first.
func MatchGlob(pattern, name string, sep byte) bool {
	if prefix, ok := strings.CutSuffix(pattern, string(sep)+"**"); ok && !strings.HasSuffix(prefix, `\`) && match(prefix, name, sep) {
		return true
	}
	return match(pattern, name, sep)
}

// CheckGlob says what is wrong with a pattern ("" for nothing): it must
// not be empty, nor end in a lone backslash, nor hold a NUL byte.
func CheckGlob(pattern string) error {
	switch {
	case pattern == "":
		return fmt.Errorf("an empty pattern")
	case strings.IndexByte(pattern, 0) >= 0:
		return fmt.Errorf("%q holds a NUL byte", pattern)
	}
	esc := false
	for i := 0; i < len(pattern); i++ {
		esc = !esc && pattern[i] == '\\'
	}
	if esc {
		return fmt.Errorf("%q ends in a lone backslash", pattern)
	}
	return nil
}

// match is an iterative glob matcher over runes with backtracking to the last star
// (linear for patterns without **, and bounded by len(p)*len(s) with it).
func match(ps, ss string, sepb byte) bool {
	// Runes, so that ? is one character, not one byte.
	p, s, sep := []rune(ps), []rune(ss), rune(sepb)
	// Positions to resume from after the last '*' and the last '**'.
	starP, starS := -1, -1
	dstarP, dstarS := -1, -1
	i, j := 0, 0
	for j < len(s) {
		if i < len(p) {
			switch c := p[i]; {
			case c == '*' && i+1 < len(p) && p[i+1] == '*':
				i += 2
				for i < len(p) && p[i] == '*' {
					i++
				}
				dstarP, dstarS = i, j
				starP, starS = -1, -1
				continue
			case c == '*':
				i++
				starP, starS = i, j
				continue
			case c == '?' && s[j] != sep:
				i++
				j++
				continue
			case c == '\\' && i+1 < len(p):
				if p[i+1] == s[j] {
					i += 2
					j++
					continue
				}
			case c != '?' && c != '\\' && c == s[j]:
				i++
				j++
				continue
			}
		}
		// Mismatch: let the last '*' eat one more character (not sep),
		// else the last '**' (anything).
		if starP >= 0 && s[starS] != sep {
			starS++
			i, j = starP, starS
			continue
		}
		if dstarP >= 0 {
			dstarS++
			i, j = dstarP, dstarS
			starP, starS = -1, -1
			continue
		}
		return false
	}
	for i < len(p) && p[i] == '*' {
		i++
	}
	return i == len(p)
}

// Forbids reports whether the rules keep the twin from touching name
// (components separated by sep), and says why in a sentence for
// __errors. A name matching a Deny glob is forbidden even when it also
// matches an Allow glob: deny wins. With Allow set, a name that matches
// none of its globs is forbidden.
func (r ScopeRules) Forbids(name string, sep byte) (string, bool) {
	for _, g := range r.Deny {
		if MatchGlob(g, name, sep) {
			return fmt.Sprintf("the cloud scope keeps the twin from setting %s (denied by %q); only local policy may", name, g), true
		}
	}
	if len(r.Allow) == 0 {
		return "", false
	}
	for _, g := range r.Allow {
		if MatchGlob(g, name, sep) {
			return "", false
		}
	}
	return fmt.Sprintf("the cloud scope lets the twin set only %s; %s is not among them, only local policy may set it", strings.Join(quoteAll(r.Allow), ", "), name), true
}

func quoteAll(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = fmt.Sprintf("%q", s)
	}
	return out
}
