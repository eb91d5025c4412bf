package providers

import (
	"path"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestMatchGlob(t *testing.T) {
	for _, tt := range []struct {
		pattern, name string
		sep           byte
		want          bool
	}{
		{"/etc/ssh/**", "/etc/ssh", '/', true},
		{"/etc/ssh/**", "/etc/ssh/sshd_config", '/', true},
		{"/etc/ssh/**", "/etc/ssh/sshd_config.d/x.conf", '/', true},
		{"/etc/ssh/**", "/etc/sshd", '/', false},
		{"/etc/ssh/**", "/etc", '/', false},
		{"/etc/sudoers*/**", "/etc/sudoers", '/', true},
		{"/etc/sudoers*/**", "/etc/sudoers.d/90-cloud", '/', true},
		{"/etc/sudoers*", "/etc/sudoers.d/90-cloud", '/', false},
		{"/etc/sudoers*", "/etc/sudoers.d", '/', true},
		{"/etc/*.conf", "/etc/a.conf", '/', true},
		{"/etc/*.conf", "/etc/a/b.conf", '/', false},
		{"/etc/**/b*/c", "/etc/x/by/z/bq/c", '/', true},
		{"/etc/**.conf", "/etc/a/b.conf", '/', true},
		{"/etc/?", "/etc/a", '/', true},
		{"/etc/?", "/etc/ab", '/', false},
		{"/etc/a?b", "/etc/a/b", '/', false},
		{`/etc/\*`, "/etc/*", '/', true},
		{`/etc/\*`, "/etc/a", '/', false},
		{"**", "/anything/at/all", '/', true},
		{"kernel.core_pattern", "kernel.core_pattern", '.', true},
		{"kernel.core_pattern", "kernel.core_patterns", '.', false},
		{"fs.binfmt_misc.*", "fs.binfmt_misc.register", '.', true},
		{"fs.binfmt_misc.*", "fs.binfmt_misc.python3/11", '.', true},
		{"fs.binfmt_misc.*", "fs.binfmt_misc", '.', false},
		{"net.**", "net.ipv4.ip_forward", '.', true},
		{"net.*", "net.ipv4.ip_forward", '.', false},
		{"", "", '/', true},
		{"", "x", '/', false},
	} {
		if got := MatchGlob(tt.pattern, tt.name, tt.sep); got != tt.want {
			t.Errorf("MatchGlob(%q, %q, %q) = %v, want %v", tt.pattern, tt.name, tt.sep, got, tt.want)
		}
	}
	for p, ok := range map[string]bool{"/etc/**": true, "": false, `a\`: false, `a\\`: true, "a\x00": false} {
		if err := CheckGlob(p); (err == nil) != ok {
			t.Errorf("CheckGlob(%q) = %v", p, err)
		}
	}
}

// FuzzMatchGlob checks the matcher against path.Match for the patterns
// both understand (no classes, no **), and that ** patterns never panic.
func FuzzMatchGlob(f *testing.F) {
	for _, s := range [][2]string{{"/etc/*.conf", "/etc/a.conf"}, {"/a/**/b", "/a/x/y/b"}, {`\*?`, "*x"}, {"*a*b*", "xaybz"}} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, pattern, name string) {
		got := MatchGlob(pattern, name, '/')
		if !utf8.ValidString(pattern) || !utf8.ValidString(name) || strings.ContainsAny(pattern, "[]") || strings.Contains(pattern, "**") || CheckGlob(pattern) != nil {
			return
		}
		want, err := path.Match(pattern, name)
		if err == nil && got != want {
			t.Fatalf("MatchGlob(%q, %q) = %v, path.Match says %v", pattern, name, got, want)
		}
	})
}
