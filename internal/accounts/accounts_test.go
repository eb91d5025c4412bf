package accounts

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/twinlet/twinlet/providers"
	"github.com/twinlet/twinlet/providers/providertest"
)

func TestCheckName(t *testing.T) {
	for _, ok := range []string{"alice", "_apt", "svc.app", "web-1", "host$", strings.Repeat("a", 32)} {
		if err := CheckName(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "Alice", "1abc", "-x", "a:b", "a b", "a/b", "a$b", "..", strings.Repeat("a", 33), "a\n"} {
		if err := CheckName(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// TestRead: junk, NIS lines and bad numbers are skipped; the first of
// two entries with one name wins; a missing file is empty.
func TestRead(t *testing.T) {
	env := providertest.NewEnv(t)
	etc := filepath.Join(env.Root, "etc")
	os.MkdirAll(etc, 0o755)
	os.WriteFile(filepath.Join(etc, "passwd"), []byte("root:x:0:0:root:/root:/bin/bash\n+nis::::::\njunk\nbad:x:a:0::/:/bin/sh\nann:x:1000:1000::/home/ann:/bin/sh\nann:x:1001:1001::/x:/bin/sh\n"), 0o644)
	os.WriteFile(filepath.Join(etc, "group"), []byte("root:x:0:\nsudo:x:27:ann, bob\nann:x:1000:\nbad:x:z:\n"), 0o644)
	os.WriteFile(filepath.Join(etc, "shadow"), []byte("root:*:1::::::\nann:$6$s$h:1::::::\n"), 0o640)
	root, err := env.OpenRoot()
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	db, err := Read(root, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(db.Users) != 3 || db.User("ann").UID != 1000 || !db.User("ann").PasswordOK || db.User("root").PasswordOK || db.User("bad") != nil {
		t.Fatalf("users %+v", db.Users)
	}
	if !reflect.DeepEqual(db.Group("sudo").Members, []string{"ann", "bob"}) || db.Group("bad") != nil || db.GroupByGID(1000).Name != "ann" {
		t.Fatalf("groups %+v", db.Groups)
	}
	if !reflect.DeepEqual(db.SupplementaryGroups("ann"), []string{"sudo"}) || db.UserByUID(1001).Name != "ann" {
		t.Fatal("lookups")
	}
	if db.Shells != nil {
		t.Fatal("a missing etc/shells must be nil, not empty")
	}
}

func TestScopeCheck(t *testing.T) {
	r := providers.ScopeRules{Deny: []string{"%sudo", "%w*", "admin*"}, Allow: []string{"app-*", "admin1", "%docker", "%sudo", "%wheel"}}
	for _, tc := range []struct {
		name  string
		group bool
		no    bool
	}{
		{"app-1", false, false},
		{"admin1", false, true}, // deny wins
		{"bob", false, true},    // not allowed
		{"docker", true, false},
		{"sudo", true, true},
		{"wheel", true, true},
		{"video", true, true}, // not among the allowed groups
	} {
		if _, no := ScopeCheck(r, tc.name, tc.group); no != tc.no {
			t.Errorf("%s (group %v): forbidden %v", tc.name, tc.group, no)
		}
	}
	r.Privileged = true
	if _, no := ScopeCheck(r, "sudo", true); no {
		t.Error("privileged scope forbids a group")
	}
	if _, no := ScopeCheck(r, "bob", false); !no {
		t.Error("privileged must not lift the name globs")
	}
}
