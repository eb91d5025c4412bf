package extprov

import (
	"context"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twinlet/twinlet/providers"
)

var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "extprov-bin-")
	if err != nil {
		panic(err)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

var goBuild struct {
	once sync.Once
	path string
	out  []byte
	err  error
}

// goExample builds the Go example provider with the real toolchain.
func goExample(t testing.TB) string {
	t.Helper()
	goBuild.once.Do(func() {
		goBuild.path = filepath.Join(binDir, "sensor-calibration")
		cmd := exec.Command("go", "build", "-o", goBuild.path, "./examples/providers/sensor-calibration")
		cmd.Dir = "../.."
		goBuild.out, goBuild.err = cmd.CombinedOutput()
	})
	if goBuild.err != nil {
		t.Fatalf("go build the Go example: %v\n%s", goBuild.err, goBuild.out)
	}
	return goBuild.path
}

// python skips the test without Debian's python3 (make ext-tools).
func python(t testing.TB) {
	t.Helper()
	if _, err := os.Stat("/usr/bin/python3"); err != nil {
		t.Skip("needs /usr/bin/python3: run make ext-tools")
	}
}

// install copies an executable into a fresh directory that passes
// StrictModes (a checkout may be group-writable).
func install(t testing.TB, src string) string {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), filepath.Base(src))
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return dst
}

func pythonExample(t testing.TB) string {
	python(t)
	return install(t, "../../examples/providers/vendor-ini/vendor-ini")
}

func chaos(t testing.TB) string {
	python(t)
	return install(t, "testdata/chaos.py")
}

// manifest writes a manifest into dir and returns its path.
func manifest(t testing.TB, dir, name, section, exe string, extra ...string) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("apiVersion: twinlet.dev/v1\nkind: Provider\nsection: " + section + "\nexecutable: " + exe + "\nprotocolVersion: 1\n")
	for _, e := range extra {
		b.WriteString(e + "\n")
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func builtin(id string) bool { _, ok := providers.Lookup(id); return ok || id == "files" }

func testOpts(t testing.TB) Options {
	return Options{Builtin: builtin, Logger: slog.New(slog.DiscardHandler), RestartBackoff: time.Nanosecond, StartTimeout: time.Minute}
}

// load loads the manifests of dir and closes the host when the test ends.
func load(t testing.TB, opts Options, dir string) *Host {
	t.Helper()
	opts.Dirs = []string{dir}
	h := Load(context.Background(), opts)
	t.Cleanup(h.Close)
	return h
}

func one(t testing.TB, h *Host, id string) providers.Info {
	t.Helper()
	for _, info := range h.Infos() {
		if info.ID == id {
			return info
		}
	}
	t.Fatalf("no provider %s; problems: %v", id, h.Problems())
	return providers.Info{}
}
