package providers

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func TestRel(t *testing.T) {
	for in, want := range map[string]string{"/etc/motd": "etc/motd", "/": ".", "/etc//x/": "etc/x"} {
		if got, err := Rel(in); err != nil || got != want {
			t.Errorf("Rel(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"etc/motd", "/etc/../root", "", "/a\x00b"} {
		if got, err := Rel(in); err == nil {
			t.Errorf("Rel(%q) = %q, want an error", in, got)
		}
	}
	if _, err := Rel("/etc/../x"); !errors.Is(err, ErrOutsideRoot) {
		t.Errorf("a \"..\" error does not wrap ErrOutsideRoot: %v", err)
	}
}

// tree builds a root with links of every kind that matters.
func tree(t *testing.T) (*Dir, string) {
	t.Helper()
	root := t.TempDir()
	mk := func(p string) {
		if err := os.MkdirAll(filepath.Join(root, p), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	link := func(target, at string) {
		if err := os.Symlink(target, filepath.Join(root, at)); err != nil {
			t.Fatal(err)
		}
	}
	mk("etc/app")
	mk("opt/real")
	if err := os.WriteFile(filepath.Join(root, "opt/real/x"), []byte("real"), 0o644); err != nil {
		t.Fatal(err)
	}
	link("/opt/real", "etc/abs")         // absolute target, would be inside chroot-style
	link("../opt/real", "etc/rel")       // relative target, inside the root
	link("../../../../../../", "etc/up") // climbs out
	link(t.TempDir(), "etc/out")         // absolute, outside
	link("loop2", "etc/loop1")
	link("loop1", "etc/loop2")
	d, err := (&Env{Root: root}).OpenRoot()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d, root
}

func TestDirLinks(t *testing.T) {
	d, _ := tree(t)
	// Relative links inside the root are followed by the os.Root methods.
	if b, err := d.ReadFile("etc/rel/x"); err != nil || string(b) != "real" {
		t.Fatalf("relative link inside the root: %q %v", b, err)
	}
	// Absolute links (even chroot-style ones) and escapes are refused.
	for _, name := range []string{"etc/abs/x", "etc/up/x", "etc/out/x"} {
		_, err := d.ReadFileIfExists(name)
		if !IsOutsideRoot(err) || !errors.Is(err, ErrOutsideRoot) {
			t.Errorf("%s: want an outside-the-root error, got %v", name, err)
		}
		if _, err := d.Sub(filepath.Dir(name)); !IsOutsideRoot(err) {
			t.Errorf("Sub(%s): want an outside-the-root error, got %v", filepath.Dir(name), err)
		}
	}
	if _, err := d.ReadFile("etc/loop1/x"); err == nil {
		t.Error("a link loop was resolved")
	}
	// Walk follows no link at all, not even one inside the root.
	for _, name := range []string{"etc/rel", "etc/abs", "etc/up", "etc/loop1"} {
		if _, err := d.Walk(name, false, 0); !errors.Is(err, ErrSymlink) {
			t.Errorf("Walk(%s): want ErrSymlink, got %v", name, err)
		}
	}
	if _, err := d.Walk("etc/missing/x", false, 0); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Walk of a missing directory: %v", err)
	}
	w, err := d.Walk("etc/new/deeper", true, 0o750)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if w.Path() != "/etc/new/deeper" {
		t.Errorf("Path() = %q", w.Path())
	}
	if fi, err := d.Stat("etc/new/deeper"); err != nil || !fi.IsDir() || fi.Mode().Perm()&^0o750 != 0 {
		t.Fatalf("created directory: %v %v", fi, err)
	}
	// OpenNoFollow refuses a final link.
	if _, err := w.OpenNoFollow("x", os.O_RDONLY); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("OpenNoFollow of a missing file: %v", err)
	}
	etc, err := d.Walk("etc", false, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer etc.Close()
	if _, err := etc.OpenNoFollow("rel", os.O_RDONLY); !errors.Is(err, ErrSymlink) || !errors.Is(err, syscall.ELOOP) {
		t.Errorf("OpenNoFollow of a link: %v", err)
	}
	if _, err := etc.OpenNoFollow("app/x", os.O_RDONLY); err == nil {
		t.Error("OpenNoFollow took a name with a slash")
	}
}

func TestDirWriteFileAtomic(t *testing.T) {
	d, root := tree(t)
	// A final link is replaced, never written through.
	if err := d.WriteFileAtomic("etc/rel", []byte("new"), FileMeta{Mode: 0o640}); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(filepath.Join(root, "etc/rel"))
	if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o640 {
		t.Fatalf("etc/rel: %v %v", fi, err)
	}
	if b, _ := os.ReadFile(filepath.Join(root, "opt/real/x")); string(b) != "real" {
		t.Fatal("wrote through the link")
	}
	// Parents are created; setuid survives (chmod after chown).
	meta := FileMeta{Mode: 0o755 | os.ModeSetuid}
	if os.Geteuid() == 0 {
		meta.SetOwner, meta.UID, meta.GID = true, 4321, 4322
	}
	if err := d.WriteFileAtomic("usr/local/bin/tool", []byte("#!"), meta); err != nil {
		t.Fatal(err)
	}
	fi, err = os.Lstat(filepath.Join(root, "usr/local/bin/tool"))
	if err != nil || fi.Mode()&os.ModeSetuid == 0 || fi.Mode().Perm() != 0o755 {
		t.Fatalf("tool: %v %v", fi, err)
	}
	if st := fi.Sys().(*syscall.Stat_t); meta.SetOwner && (st.Uid != 4321 || st.Gid != 4322) {
		t.Fatalf("tool owner %d:%d", st.Uid, st.Gid)
	}
	// Through an absolute link: refused, nothing written outside.
	if err := d.WriteFileAtomic("etc/out/x", []byte("x"), FileMeta{Mode: 0o644}); !IsOutsideRoot(err) {
		t.Fatalf("write through a link out of the root: %v", err)
	}
	out, _ := os.Readlink(filepath.Join(root, "etc/out"))
	if ents, _ := os.ReadDir(out); len(ents) != 0 {
		t.Fatalf("created outside the root: %v", ents)
	}
	// No temporary file is left behind.
	ents, _ := os.ReadDir(filepath.Join(root, "usr/local/bin"))
	if len(ents) != 1 {
		t.Fatalf("entries %v", ents)
	}
	// SymlinkAtomic replaces whatever is there with the link.
	if err := d.SymlinkAtomic("/usr/share/zoneinfo/UTC", "etc/localtime"); err != nil {
		t.Fatal(err)
	}
	if err := d.SymlinkAtomic("/usr/share/zoneinfo/Europe/Berlin", "etc/localtime"); err != nil {
		t.Fatal(err)
	}
	if got, _ := d.Readlink("etc/localtime"); got != "/usr/share/zoneinfo/Europe/Berlin" {
		t.Fatalf("localtime -> %q", got)
	}
}

func TestOpenRootWithHeldHandle(t *testing.T) {
	root := t.TempDir()
	held, err := os.OpenRoot(root)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	env := &Env{Root: "/does/not/matter", RootFS: held}
	d, err := env.OpenRoot()
	if err != nil {
		t.Fatal(err)
	}
	if err := d.WriteFileAtomic("etc/x", []byte("x"), FileMeta{Mode: 0o644}); err != nil {
		t.Fatal(err)
	}
	d.Close()
	// Closing the Dir did not close the agent's handle.
	if _, err := held.Stat("etc/x"); err != nil {
		t.Fatal(err)
	}
}

func TestHostPath(t *testing.T) {
	env := &Env{Root: "/r"}
	for in, want := range map[string]string{"/etc/motd": "/r/etc/motd", "/../../x": "/r/x", "etc": "/r/etc"} {
		if got := env.HostPath(in); got != want {
			t.Errorf("HostPath(%q) = %q, want %q", in, got, want)
		}
	}
}
