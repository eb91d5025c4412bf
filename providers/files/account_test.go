package files

import (
	"regexp"
	"testing"
)

func TestValidAccountMatchesRE(t *testing.T) {
	re := regexp.MustCompile(`^([A-Za-z_][A-Za-z0-9_.-]{0,31}\$?|[0-9]{1,10})$`)
	for _, v := range []string{"", "root", "_apt", "a$", "a$$", "$", "0", "1234567890", "12345678901", "a1", "1a", "-a", "a-b.c_d", "ab cd", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa$", "é", "a\n", "_"} {
		if re.MatchString(v) != validAccount(v) {
			t.Errorf("%q: re %v, func %v", v, re.MatchString(v), validAccount(v))
		}
	}
}
