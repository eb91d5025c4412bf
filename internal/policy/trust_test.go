package policy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The owner rule needs files owned by someone else, which only root can
// make; the mode rules run for everyone.
func asRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown to another uid needs root")
	}
}

func mkfile(t *testing.T, p string, mode os.FileMode) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte("apiVersion: twinlet.dev/v1\nkind: DevicePolicy\nmetadata: {name: x}\nspec:\n  hostname: {name: a}\n"), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestTrusted(t *testing.T) {
	for _, tt := range []struct {
		name  string
		root  bool
		setup func(t *testing.T, dir string) string
		want  string // "" for accepted
	}{
		{"good", false, func(t *testing.T, dir string) string { return mkfile(t, filepath.Join(dir, "a/p.yaml"), 0o644) }, ""},
		{"group writable file", false, func(t *testing.T, dir string) string { return mkfile(t, filepath.Join(dir, "p.yaml"), 0o664) }, "p.yaml: refused: mode 0664"},
		{"world writable file", false, func(t *testing.T, dir string) string { return mkfile(t, filepath.Join(dir, "p.yaml"), 0o646) }, "refused: mode 0646"},
		{"group writable directory", false, func(t *testing.T, dir string) string {
			p := mkfile(t, filepath.Join(dir, "d/p.yaml"), 0o644)
			os.Chmod(filepath.Join(dir, "d"), 0o775)
			return p
		}, "directory " + "DIR/d: refused: mode 0775"},
		{"writable directory further up", false, func(t *testing.T, dir string) string {
			p := mkfile(t, filepath.Join(dir, "up/a/b/p.yaml"), 0o644)
			os.Chmod(filepath.Join(dir, "up"), 0o757)
			return p
		}, "directory DIR/up: refused: mode 0757"},
		{"sticky world writable directory", false, func(t *testing.T, dir string) string {
			p := mkfile(t, filepath.Join(dir, "tmp/p.yaml"), 0o644)
			os.Chmod(filepath.Join(dir, "tmp"), 0o777|os.ModeSticky)
			return p
		}, ""},
		{"link into an untrusted directory", false, func(t *testing.T, dir string) string {
			target := mkfile(t, filepath.Join(dir, "open/p.yaml"), 0o644)
			os.Chmod(filepath.Join(dir, "open"), 0o777)
			link := filepath.Join(dir, "safe/p.yaml")
			os.MkdirAll(filepath.Dir(link), 0o755)
			if err := os.Symlink(target, link); err != nil {
				t.Fatal(err)
			}
			return link
		}, "directory DIR/open: refused: mode 0777"},
		{"file owned by another user", true, func(t *testing.T, dir string) string {
			p := mkfile(t, filepath.Join(dir, "p.yaml"), 0o644)
			os.Chown(p, 4321, 4321)
			return p
		}, "p.yaml: refused: owned by uid 4321"},
		{"directory owned by another user", true, func(t *testing.T, dir string) string {
			p := mkfile(t, filepath.Join(dir, "theirs/p.yaml"), 0o644)
			os.Chown(filepath.Join(dir, "theirs"), 4321, 4321)
			return p
		}, "directory DIR/theirs: refused: owned by uid 4321"},
		{"sticky directory owned by another user", true, func(t *testing.T, dir string) string {
			p := mkfile(t, filepath.Join(dir, "tmp/p.yaml"), 0o644)
			os.Chmod(filepath.Join(dir, "tmp"), 0o777|os.ModeSticky)
			os.Chown(filepath.Join(dir, "tmp"), 4321, 4321)
			return p
		}, "directory DIR/tmp: refused: owned by uid 4321"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if tt.root {
				asRoot(t)
			}
			dir := t.TempDir()
			p := tt.setup(t, dir)
			_, err := ReadSecure(p)
			want := strings.ReplaceAll(tt.want, "DIR", dir)
			switch {
			case want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case want != "" && (err == nil || !strings.Contains(err.Error(), want)):
				t.Fatalf("err = %v, want %q", err, want)
			}
			if err2 := Trusted(p); (err2 == nil) != (err == nil) {
				t.Fatalf("Trusted and ReadSecure disagree: %v / %v", err2, err)
			}
		})
	}
}

func TestLoadDirRefusesUntrustedFiles(t *testing.T) {
	dir := t.TempDir()
	mkfile(t, filepath.Join(dir, "10-good.yaml"), 0o644)
	bad := mkfile(t, filepath.Join(dir, "20-bad.yaml"), 0o666)
	set, err := LoadDir(dir, known)
	if err != nil {
		t.Fatal(err)
	}
	if len(set.Docs) != 1 || set.Docs[0].File != filepath.Join(dir, "10-good.yaml") {
		t.Fatalf("docs %+v", set.Docs)
	}
	if !set.Failed[bad] || len(set.Problems) != 1 || !strings.HasPrefix(set.Problems[0].String(), bad+": refused") {
		t.Fatalf("problems %v, failed %v", set.Problems, set.Failed)
	}
}
