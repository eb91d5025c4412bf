// Package accountstest builds temporary roots with minimal account
// databases for tests that drive the real shadow tools with --root.
package accountstest

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/twinlet/twinlet/providers"
	"github.com/twinlet/twinlet/providers/providertest"
)

// Tools are the shadow programs the users and groups providers run. They
// come with Debian's "passwd" package (priority required, so on every
// Debian machine).
var Tools = []string{"useradd", "usermod", "userdel", "groupadd", "groupmod", "groupdel", "gpasswd", "chpasswd"}

// LoginDefs is the root's etc/login.defs: the ranges and defaults of a
// Debian system, written out so that tests do not depend on the host's.
const LoginDefs = `UID_MIN 1000
UID_MAX 60000
SYS_UID_MIN 100
SYS_UID_MAX 999
GID_MIN 1000
GID_MAX 60000
SYS_GID_MIN 100
SYS_GID_MAX 999
USERGROUPS_ENAB yes
HOME_MODE 0700
ENCRYPT_METHOD SHA512
PASS_MAX_DAYS 99999
PASS_MIN_DAYS 0
PASS_WARN_AGE 7
`

// Need skips the test unless it can drive the shadow tools on a temporary
// root: they must be installed, and their --root chroots, which needs
// root.
func Need(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the shadow tools' --root chroots into the test root: run the tests as root")
	}
	for _, tool := range Tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is missing: install Debian's passwd package (apt-get install passwd)", tool)
		}
	}
}

// NewEnv returns an Env on a fresh root that Populate filled. It skips
// the test when Need does.
func NewEnv(t testing.TB) *providers.Env {
	t.Helper()
	Need(t)
	env := providertest.NewEnv(t)
	Populate(t, env.Root)
	return env
}

// Populate writes into root etc/passwd, group, shadow, gshadow,
// login.defs and shells, with the users root, daemon and nobody and the
// groups root, daemon, adm, sudo, users and nogroup, and an empty home.
func Populate(t testing.TB, root string) {
	t.Helper()
	etc := filepath.Join(root, "etc")
	if err := os.MkdirAll(etc, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []struct {
		name, content string
		mode          os.FileMode
	}{
		{"passwd", "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n", 0o644},
		{"group", "root:x:0:\ndaemon:x:1:\nadm:x:4:\nsudo:x:27:\nusers:x:100:\nnogroup:x:65534:\n", 0o644},
		{"shadow", "root:*:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n", 0o640},
		{"gshadow", "root:*::\ndaemon:*::\nadm:*::\nsudo:*::\nusers:*::\nnogroup:*::\n", 0o640},
		{"login.defs", LoginDefs, 0o644},
		{"shells", "# /etc/shells: valid login shells\n/bin/sh\n/usr/bin/sh\n/bin/bash\n/usr/bin/bash\n", 0o644},
	} {
		if err := os.WriteFile(filepath.Join(etc, f.name), []byte(f.content), f.mode); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Join(root, "home"), 0o755); err != nil {
		t.Fatal(err)
	}
}
