// Package debtest builds what the packages provider's tests need from the
// real Debian tools, with no network: small .deb files (dpkg-deb --build),
// a flat file repository with its Packages index, and a sandbox root with
// an empty dpkg database of its own, so that no test ever reads or changes
// the machine's.
package debtest

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// Require skips the test when the Debian tools are missing.
func Require(t testing.TB) {
	t.Helper()
	for _, tool := range []string{"dpkg", "dpkg-deb", "dpkg-query", "apt-get", "apt-cache"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("the packages tests need %s (dpkg and apt, on every Debian system: apt-get install dpkg apt)", tool)
		}
	}
}

// Deb describes a package to build.
type Deb struct {
	Name, Version string
	// Depends is the Depends field ("libgreet (>= 1.0)").
	Depends string
	// Essential marks the package Essential: yes.
	Essential bool
	// Postinst is the body of a postinst script (/bin/sh), run with
	// DPKG_ROOT set to the root; empty for none.
	Postinst string
	// Files maps device paths to contents.
	Files map[string]string
}

// Repo is a flat file repository.
type Repo struct {
	Dir  string
	debs []string
}

// URI is the repository's URI for a source item.
func (r *Repo) URI() string { return "file:" + r.Dir }

// NewRepo builds the packages into a new flat repository and writes its
// Packages index.
func NewRepo(t testing.TB, debs ...Deb) *Repo {
	t.Helper()
	r := &Repo{Dir: t.TempDir()}
	r.Add(t, debs...)
	return r
}

// Add builds more packages into the repository and rewrites its index.
// The root's lists see them after the next apt-get update.
func (r *Repo) Add(t testing.TB, debs ...Deb) {
	t.Helper()
	for _, d := range debs {
		r.debs = append(r.debs, Build(t, r.Dir, d))
	}
	var index strings.Builder
	sort.Strings(r.debs)
	for _, file := range r.debs {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command("dpkg-deb", "--field", file).Output()
		if err != nil {
			t.Fatalf("dpkg-deb --field %s: %v", file, err)
		}
		sum := sha256.Sum256(b)
		fmt.Fprintf(&index, "%sFilename: ./%s\nSize: %d\nSHA256: %s\n\n", out, filepath.Base(file), len(b), hex.EncodeToString(sum[:]))
	}
	if err := os.WriteFile(filepath.Join(r.Dir, "Packages"), []byte(index.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

// Build builds one package with dpkg-deb into dir and returns its path.
func Build(t testing.TB, dir string, d Deb) string {
	t.Helper()
	tree := t.TempDir()
	if err := os.Chmod(tree, 0o755); err != nil { // the package's "./"
		t.Fatal(err)
	}
	ctl := filepath.Join(tree, "DEBIAN")
	if err := os.MkdirAll(ctl, 0o755); err != nil {
		t.Fatal(err)
	}
	var c strings.Builder
	fmt.Fprintf(&c, "Package: %s\nVersion: %s\nArchitecture: all\nMaintainer: twinlet tests <tests@twinlet.invalid>\n", d.Name, d.Version)
	if d.Depends != "" {
		fmt.Fprintf(&c, "Depends: %s\n", d.Depends)
	}
	if d.Essential {
		c.WriteString("Essential: yes\n")
	}
	fmt.Fprintf(&c, "Priority: optional\nDescription: %s for the twinlet tests\n", d.Name)
	write(t, filepath.Join(ctl, "control"), c.String(), 0o644)
	if d.Postinst != "" {
		write(t, filepath.Join(ctl, "postinst"), "#!/bin/sh\nset -e\n"+d.Postinst+"\n", 0o755)
	}
	files := d.Files
	if len(files) == 0 {
		files = map[string]string{"/usr/share/doc/" + d.Name + "/README": d.Name + " " + d.Version + "\n"}
	}
	for p, content := range files {
		write(t, filepath.Join(tree, filepath.FromSlash(p)), content, 0o644)
	}
	out := filepath.Join(dir, fmt.Sprintf("%s_%s_all.deb", d.Name, strings.ReplaceAll(d.Version, ":", "%3a")))
	if b, err := exec.Command("dpkg-deb", "-Zgzip", "--root-owner-group", "--build", tree, out).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb --build %s: %v: %s", d.Name, err, b)
	}
	return out
}

func write(t testing.TB, p, content string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
}

// InitRoot gives root an empty dpkg database and the directories apt
// needs, as debootstrap would leave them.
func InitRoot(t testing.TB, root string) {
	t.Helper()
	for _, d := range []string{"var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers", "var/lib/dpkg/alternatives",
		"var/lib/apt/lists/partial", "var/cache/apt/archives/partial", "var/log/apt", "etc/apt/sources.list.d",
		"etc/apt/apt.conf.d", "etc/apt/preferences.d", "etc/apt/trusted.gpg.d", "tmp"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"var/lib/dpkg/status", "var/lib/dpkg/available"} {
		write(t, filepath.Join(root, f), "", 0o644)
	}
}

// Dpkg runs dpkg on root (behind twinlet's back) and fails the test on
// an error.
func Dpkg(t testing.TB, root string, args ...string) string {
	t.Helper()
	all := append([]string{"--root=" + root, "--log=" + filepath.Join(root, "var/log/dpkg.log"), "--force-script-chrootless"}, args...)
	if os.Geteuid() != 0 {
		all = append([]string{"--force-not-root"}, all...)
	}
	cmd := exec.Command("dpkg", all...)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	b, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("dpkg %s: %v: %s", strings.Join(args, " "), err, b)
	}
	return string(b)
}

// Installed returns "name version status-want" of every package in
// root's dpkg database that is not just not-installed.
func Installed(t testing.TB, root string) map[string]string {
	t.Helper()
	out, err := exec.Command("dpkg-query", "--admindir="+filepath.Join(root, "var/lib/dpkg"), "-W", "-f", "${Package}\t${Version}\t${Status}\n").Output()
	if err != nil {
		t.Fatalf("dpkg-query: %v", err)
	}
	m := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Split(line, "\t")
		if len(f) == 3 && !strings.HasSuffix(f[2], "not-installed") {
			m[f[0]] = f[1] + " " + f[2]
		}
	}
	return m
}

// Signer is an OpenPGP signing key of a test's own, in a GnuPG home
// under a temporary directory.
type Signer struct {
	home string
	// Armored is the ASCII-armored public key, as a key item holds it.
	Armored string
}

// NeedGPG skips the test when gpg (Debian package gpg, `make
// packages-tools`) is missing.
func NeedGPG(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath("gpg"); err != nil {
		t.Skip("signing a test repository needs gpg: run `make packages-tools` (apt-get install gpg)")
	}
}

// NewSigner makes a new ed25519 signing key without a passphrase.
func NewSigner(t testing.TB) *Signer {
	t.Helper()
	NeedGPG(t)
	// A short path: gpg-agent's socket lives in the home.
	home, err := os.MkdirTemp("", "gpg")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		exec.Command("gpgconf", "--homedir", home, "--kill", "all").Run()
		os.RemoveAll(home)
	})
	s := &Signer{home: home}
	s.gpg(t, "--passphrase", "", "--quick-generate-key", "twinlet tests <tests@twinlet.invalid>", "ed25519", "sign", "never")
	s.Armored = s.gpg(t, "--armor", "--export")
	return s
}

func (s *Signer) gpg(t testing.TB, args ...string) string {
	t.Helper()
	cmd := exec.Command("gpg", append([]string{"--homedir", s.home, "--batch", "--quiet", "--pinentry-mode", "loopback"}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("gpg %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return string(out)
}

// Sign writes the repository's Release file (the Packages index's size
// and SHA256) and InRelease, the Release file clear-signed by s. Call it
// after the last Add.
func (r *Repo) Sign(t testing.TB, s *Signer) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(r.Dir, "Packages"))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	release := fmt.Sprintf("Origin: twinlet-tests\nLabel: twinlet-tests\nDate: Thu, 01 Jan 2026 00:00:00 UTC\nSHA256:\n %s %d Packages\n", hex.EncodeToString(sum[:]), len(b))
	rel := filepath.Join(r.Dir, "Release")
	write(t, rel, release, 0o644)
	os.Remove(filepath.Join(r.Dir, "InRelease"))
	s.gpg(t, "--clearsign", "--output", filepath.Join(r.Dir, "InRelease"), rel)
}
