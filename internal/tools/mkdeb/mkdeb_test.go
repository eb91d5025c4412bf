package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

// These tests build the real packages from the real binaries and drive
// them with Debian's own tools: dpkg-deb, lintian, dpkg --root (with
// chrootless maintainer scripts, as image builders install), systemd-analyze,
// bash and fish. Nothing is installed on this machine: every install goes
// into a throwaway root.

func need(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed (make deb-tools installs the packaging test tools)", tool)
		}
	}
}

func sh(t *testing.T, env []string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// built holds the packages of two versions, built once for all tests.
type built struct {
	dir        string
	v1, v2     string // versions
	agent      map[string]string
	tools      map[string]string
	binV1Agent string
}

var cache *built

func buildAll(t *testing.T) *built {
	t.Helper()
	need(t, "dpkg-deb", "dpkg")
	if runtime.GOARCH != "amd64" && runtime.GOARCH != "arm64" {
		t.Skipf("packages are built for amd64 and arm64, not %s", runtime.GOARCH)
	}
	if cache != nil {
		return cache
	}
	src, err := filepath.Abs("../../..")
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "mkdeb-test-")
	if err != nil {
		t.Fatal(err)
	}
	b := &built{dir: dir, v1: "1.0.0", v2: "1.0.1", agent: map[string]string{}, tools: map[string]string{}}
	date := time.Unix(1796198299, 0).UTC()
	for _, v := range []string{b.v1, b.v2} {
		bin := filepath.Join(dir, "bin-"+v)
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags",
			"-s -w -X github.com/twinlet/twinlet/internal/version.Version="+v+
				fmt.Sprintf(" -X github.com/twinlet/twinlet/internal/version.SourceDate=%d", date.Unix()),
			"-o", bin+"/", "./cmd/twinlet", "./cmd/twinctl", "./cmd/twinhub")
		cmd.Dir = src
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build: %v\n%s", err, out)
		}
		out := filepath.Join(dir, "dist-"+v)
		o := opts{version: v, date: date, arch: runtime.GOARCH, bin: bin, docbin: bin, src: src, out: out}
		if err := build(context.Background(), o); err != nil {
			t.Fatal(err)
		}
		b.agent[v] = filepath.Join(out, fmt.Sprintf("twinlet_%s_%s.deb", v, runtime.GOARCH))
		b.tools[v] = filepath.Join(out, fmt.Sprintf("twinctl_%s_%s.deb", v, runtime.GOARCH))
	}
	cache = b
	return b
}

func TestMain(m *testing.M) {
	code := m.Run()
	if cache != nil {
		os.RemoveAll(cache.dir)
	}
	os.Exit(code)
}

func TestPackagesAreLintianClean(t *testing.T) {
	b := buildAll(t)
	need(t, "lintian")
	out, _ := exec.Command("lintian", "--no-tag-display-limit", "--show-overrides", b.agent[b.v1], b.tools[b.v1]).CombinedOutput()
	var bad []string
	for _, line := range strings.Split(string(out), "\n") {
		// E: errors, W: warnings; I: (info), P: (pedantic) and O:
		// (overridden, each explained in its override file) are allowed.
		if strings.HasPrefix(line, "E: ") || strings.HasPrefix(line, "W: ") {
			bad = append(bad, line)
		}
	}
	if len(bad) > 0 {
		t.Fatalf("lintian:\n%s", strings.Join(bad, "\n"))
	}
	t.Logf("lintian:\n%s", out)
}

func TestPackageSizes(t *testing.T) {
	b := buildAll(t)
	for _, p := range []string{b.agent[b.v1], b.tools[b.v1]} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: %.2f MB", filepath.Base(p), float64(fi.Size())/1e6)
	}
	// The agent's package is what every device downloads: the issue's
	// budget is 6 MB.
	if fi, _ := os.Stat(b.agent[b.v1]); fi.Size() > 6e6 {
		t.Errorf("twinlet package is %d bytes, over the 6 MB budget", fi.Size())
	}
}

// newRoot makes an empty root that dpkg --root can install into.
func newRoot(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	for _, d := range []string{"var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers", "etc", "usr/bin"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"var/lib/dpkg/status", "var/lib/dpkg/available"} {
		if err := os.WriteFile(filepath.Join(root, f), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func dpkg(t *testing.T, root string, args ...string) string {
	t.Helper()
	all := append([]string{"--root=" + root, "--force-script-chrootless", "--log=/dev/null"}, args...)
	return sh(t, nil, "dpkg", all...)
}

func mode(t *testing.T, path string) (fs.FileMode, uint32, uint32) {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return fi.Mode(), st.Uid, st.Gid
}

func TestInstallFilesOwnersModes(t *testing.T) {
	b := buildAll(t)
	root := newRoot(t)
	dpkg(t, root, "-i", b.agent[b.v1], b.tools[b.v1])
	want := map[string]fs.FileMode{
		"usr/bin/twinlet":                                  0o755,
		"usr/bin/twinctl":                                  0o755,
		"usr/bin/twinhub":                                  0o755,
		"lib/systemd/system/twinlet.service":               0o644,
		"etc/twinlet/twinlet.yaml":                         0o644,
		"etc/twinlet/policy.d/README":                      0o644,
		"usr/share/man/man8/twinlet.8.gz":                  0o644,
		"usr/share/man/man1/twinctl.1.gz":                  0o644,
		"usr/share/man/man1/twinhub.1.gz":                  0o644,
		"usr/share/bash-completion/completions/twinlet":    0o644,
		"usr/share/zsh/vendor-completions/_twinctl":        0o644,
		"usr/share/fish/vendor_completions.d/twinhub.fish": 0o644,
		"usr/share/doc/twinlet/copyright":                  0o644,
		"var/lib/twinlet":                                  fs.ModeDir | 0o700,
		"etc/twinlet/policy.d":                             fs.ModeDir | 0o755,
	}
	for rel, m := range want {
		got, uid, gid := mode(t, filepath.Join(root, rel))
		if got != m || uid != 0 || gid != 0 {
			t.Errorf("%s: mode %v owner %d:%d, want %v root:root", rel, got, uid, gid, m)
		}
	}
	// The first install enables the unit (offline, through DPKG_ROOT) ...
	link := filepath.Join(root, "etc/systemd/system/multi-user.target.wants/twinlet.service")
	if target, err := os.Readlink(link); err != nil || !strings.HasSuffix(target, "/twinlet.service") {
		t.Errorf("unit not enabled: %v %q", err, target)
	}
	// ... and the ExecStart points at the installed binary.
	unit, _ := os.ReadFile(filepath.Join(root, "lib/systemd/system/twinlet.service"))
	if !bytes.Contains(unit, []byte("ExecStart=/usr/bin/twinlet run")) {
		t.Errorf("unit:\n%s", unit)
	}
	// The installed binary says its version, and its man page renders.
	if out := sh(t, nil, filepath.Join(root, "usr/bin/twinlet"), "version"); !strings.Contains(out, b.v1) {
		t.Errorf("twinlet version: %q", out)
	}
	if _, err := exec.LookPath("man"); err == nil {
		out := sh(t, []string{"MANWIDTH=100"}, "man", "--warnings", "-l", filepath.Join(root, "usr/share/man/man8/twinlet.8.gz"))
		if !strings.Contains(out, "--state-dir") || strings.Contains(out, "warning") {
			t.Errorf("man page:\n%s", out)
		}
	}
}

func TestUnitVerifiesAndIsSandboxed(t *testing.T) {
	b := buildAll(t)
	need(t, "systemd-analyze")
	root := newRoot(t)
	dpkg(t, root, "-i", b.agent[b.v1])
	// verify resolves the unit's dependencies (sysinit.target, …) and
	// checks that ExecReload's /bin/kill exists, in the root it is given:
	// give the throwaway root copies of this machine's systemd units and
	// kill, as a device's root has them.
	sh(t, nil, "cp", "-a", "--no-clobber", "/lib/systemd/system/.", filepath.Join(root, "lib/systemd/system"))
	must(t, os.MkdirAll(filepath.Join(root, "bin"), 0o755))
	sh(t, nil, "cp", "/usr/bin/kill", filepath.Join(root, "bin/kill"))
	unit := filepath.Join(root, "lib/systemd/system/twinlet.service")
	if out, err := exec.Command("systemd-analyze", "verify", "--root="+root, unit).CombinedOutput(); err != nil {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	} else if s := strings.TrimSpace(string(out)); s != "" {
		// verify prints warnings without failing; none are acceptable.
		t.Fatalf("systemd-analyze verify:\n%s", s)
	}
	out, _ := exec.Command("systemd-analyze", "security", "--offline=true", "--root="+root, unit).CombinedOutput()
	m := regexp.MustCompile(`Overall exposure level for twinlet.service: ([0-9.]+) (\S+)`).FindStringSubmatch(string(out))
	if m == nil {
		t.Fatalf("systemd-analyze security:\n%s", out)
	}
	t.Logf("systemd-analyze security: exposure %s %s (0 is best, 10 worst)", m[1], m[2])
}

// TestUpgradeKeepsStateAndDoesNotReapply installs v1, runs the agent, edits
// the configuration, upgrades to v2, and checks that the agent continues
// where it was: same state, same identity, nothing applied again. Then
// remove keeps the state and purge deletes it.
func TestUpgradeKeepsStateAndDoesNotReapply(t *testing.T) {
	b := buildAll(t)
	root := newRoot(t)
	dpkg(t, root, "-i", b.agent[b.v1])

	target := filepath.Join(root, "srv/device") // the device the agent manages
	state := filepath.Join(root, "var/lib/twinlet")
	policyDir := filepath.Join(root, "etc/twinlet/policy.d")
	must(t, os.MkdirAll(target, 0o755))
	conf := fmt.Sprintf("root: %s\nstateDir: %s\npolicyDir: %s\n", target, state, policyDir)
	must(t, os.WriteFile(filepath.Join(root, "etc/twinlet/twinlet.yaml"), []byte(conf), 0o644))
	policy := "apiVersion: twinlet.dev/v1\nkind: DevicePolicy\nmetadata: {name: base}\nspec:\n  files:\n    motd: {path: /etc/motd, content: \"hello\\n\", mode: \"0644\"}\n"
	must(t, os.WriteFile(filepath.Join(policyDir, "10-base.yaml"), []byte(policy), 0o644))
	// An identity other code left in the state directory.
	must(t, os.WriteFile(filepath.Join(state, "device.key"), []byte("HostName=h;DeviceId=d;SharedAccessKey=a2V5\n"), 0o600))

	apply := func(bin string) map[string]any {
		t.Helper()
		cmd := exec.Command(bin, "apply", "--once", "--config", filepath.Join(root, "etc/twinlet/twinlet.yaml"), "--output", "json")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("apply: %v\n%s\n%s", err, out, stderr.String())
		}
		var doc map[string]any
		must(t, json.Unmarshal(out, &doc))
		return doc
	}
	reason := func(doc map[string]any) string {
		files, _ := doc["files"].(map[string]any)
		st, _ := files["__status"].(map[string]any)
		return fmt.Sprint(st["state"], "/", st["reason"])
	}
	if r := reason(apply(filepath.Join(root, "usr/bin/twinlet"))); r != "Ready/Applied" {
		t.Fatalf("first apply: files %s", r)
	}
	motd := filepath.Join(target, "etc/motd")
	before, err := os.Stat(motd)
	must(t, err)
	snap := snapshot(t, state)

	dpkg(t, root, "-i", b.agent[b.v2])
	if out := sh(t, nil, filepath.Join(root, "usr/bin/twinlet"), "version"); !strings.Contains(out, b.v2) {
		t.Fatalf("after upgrade: twinlet version %q", out)
	}
	if got, _ := os.ReadFile(filepath.Join(root, "etc/twinlet/twinlet.yaml")); string(got) != conf {
		t.Fatalf("upgrade replaced the edited configuration:\n%s", got)
	}
	if got := snapshot(t, state); !equal(got, snap) {
		t.Fatalf("upgrade changed the state directory:\nbefore %v\nafter  %v", snap, got)
	}
	if r := reason(apply(filepath.Join(root, "usr/bin/twinlet"))); r != "Ready/Unchanged" {
		t.Fatalf("apply after upgrade: files %s, want Ready/Unchanged", r)
	}
	after, err := os.Stat(motd)
	must(t, err)
	if !os.SameFile(before, after) || !after.ModTime().Equal(before.ModTime()) {
		t.Fatal("the upgraded agent wrote /etc/motd again")
	}

	dpkg(t, root, "-r", "twinlet")
	if _, err := os.Stat(filepath.Join(root, "usr/bin/twinlet")); !os.IsNotExist(err) {
		t.Fatalf("remove left the binary: %v", err)
	}
	if _, err := os.Stat(filepath.Join(state, "device.key")); err != nil {
		t.Fatalf("remove touched the state: %v", err)
	}
	dpkg(t, root, "-P", "twinlet")
	if _, err := os.Stat(state); !os.IsNotExist(err) {
		t.Fatalf("purge left the state: %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, "etc/twinlet/twinlet.yaml")); !os.IsNotExist(err) {
		t.Fatalf("purge left the configuration: %v", err)
	}
}

// TestInstalledCompletionsComplete runs the completion scripts the
// packages install in the real shells.
func TestInstalledCompletionsComplete(t *testing.T) {
	b := buildAll(t)
	need(t, "bash")
	root := newRoot(t)
	dpkg(t, root, "-i", b.agent[b.v1], b.tools[b.v1])
	bash := func(script string, words ...string) string {
		args := append([]string{"--norc", "--noprofile", "-c",
			`source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); "_$1"; echo "${COMPREPLY[*]}"`,
			"bash", filepath.Join(root, script)}, words...)
		return strings.TrimSpace(sh(t, nil, "bash", args...))
	}
	if got := bash("usr/share/bash-completion/completions/twinlet", "twinlet", "run", "--state"); got != "--state-dir" {
		t.Errorf("twinlet run --state<TAB>: %q", got)
	}
	if got := bash("usr/share/bash-completion/completions/twinlet", "twinlet", "comp"); got != "completion" {
		t.Errorf("twinlet comp<TAB>: %q", got)
	}
	if got := bash("usr/share/bash-completion/completions/twinctl", "twinctl", "devices", "cr"); got != "create" {
		t.Errorf("twinctl devices cr<TAB>: %q", got)
	}
	if got := bash("usr/share/bash-completion/completions/twinhub", "twinhub", "serve", "--mqtt"); got != "--mqtt-addr" {
		t.Errorf("twinhub serve --mqtt<TAB>: %q", got)
	}
	if _, err := exec.LookPath("fish"); err == nil {
		out := sh(t, nil, "fish", "--no-config", "-c", `source $argv[1]; complete -C 'twinctl twin sh'`,
			filepath.Join(root, "usr/share/fish/vendor_completions.d/twinctl.fish"))
		if !strings.HasPrefix(strings.TrimSpace(out), "show") {
			t.Errorf("fish: twinctl twin sh<TAB>: %q", out)
		}
	}
	if _, err := exec.LookPath("zsh"); err == nil {
		sh(t, nil, "zsh", "-n", filepath.Join(root, "usr/share/zsh/vendor-completions/_twinlet"))
	}
}

func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(p)
		out[strings.TrimPrefix(p, dir)] = string(data)
		return err
	})
	must(t, err)
	return out
}

func equal(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
