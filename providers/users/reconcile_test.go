package users_test

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/twinlet/twinlet/internal/accounts/accountstest"
	"github.com/twinlet/twinlet/providers"
	_ "github.com/twinlet/twinlet/providers/files"
	_ "github.com/twinlet/twinlet/providers/groups"
	_ "github.com/twinlet/twinlet/providers/users"
	"github.com/twinlet/twinlet/reconciler"
)

func newReconciler(t *testing.T, root, policy string) *reconciler.Reconciler {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "p.yaml"), []byte("apiVersion: twinlet.dev/v1\nkind: DevicePolicy\nmetadata: { name: p }\nspec:\n"+policy), 0o644); err != nil {
		t.Fatal(err)
	}
	var infos []providers.Info
	for _, id := range []string{"files", "groups", "users"} {
		info, _ := providers.Lookup(id)
		infos = append(infos, info)
	}
	r, err := reconciler.New(reconciler.Options{Root: root, StateDir: t.TempDir(), PolicyDir: dir, Providers: infos, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestFilesAfterUsersAfterGroups: in one pass, groups creates docker,
// users creates alice in it, and files creates a directory owned by her:
// the reconciler orders groups → users → files.
func TestFilesAfterUsersAfterGroups(t *testing.T) {
	env := accountstest.NewEnv(t)
	r := newReconciler(t, env.Root, `  files:
    app: { path: /srv/app, kind: directory, owner: alice, group: docker, mode: "0750" }
  users:
    alice: { uid: 1001, groups: [docker], shell: /bin/bash }
  groups:
    docker: { gid: 2000 }
`)
	if got := strings.Join(r.Sections(), " "); got != "groups users files" {
		t.Fatalf("order %q", got)
	}
	rep := r.ReconcileAll(context.Background(), false)
	if !rep.AllReady() {
		for _, s := range rep.Sections {
			t.Logf("%s: %+v %+v", s.ID, s.Status, s.Errors)
		}
		t.Fatal("not all ready in one pass")
	}
	fi, err := os.Stat(filepath.Join(env.Root, "srv/app"))
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); st.Uid != 1001 || st.Gid != 2000 {
		t.Fatalf("/srv/app owned by %d:%d", st.Uid, st.Gid)
	}
	// A dry run of the converged state plans nothing.
	if rep := r.ReconcileAll(context.Background(), true); rep.Pending() != 0 {
		t.Fatalf("pending after converging: %+v", rep.Summary)
	}
}

// TestFilesDoNotWaitForUndesiredUsers: with no users desired at all,
// files' dependency on users does not hold it back.
func TestFilesDoNotWaitForUndesiredUsers(t *testing.T) {
	root := t.TempDir()
	r := newReconciler(t, root, "  files:\n    motd: { path: /etc/motd, content: \"hi\\n\", owner: \"0\" }\n")
	rep := r.ReconcileAll(context.Background(), false)
	if !rep.AllReady() {
		for _, s := range rep.Sections {
			t.Logf("%s: %+v", s.ID, s.Status)
		}
		t.Fatal("files waited for users that nothing desires")
	}
	if b, err := os.ReadFile(filepath.Join(root, "etc/motd")); err != nil || string(b) != "hi\n" {
		t.Fatalf("motd %q %v", b, err)
	}
}
