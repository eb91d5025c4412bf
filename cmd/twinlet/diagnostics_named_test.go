package main

import (
	"encoding/json"
	"github.com/twinlet/twinlet/internal/testutil"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// untarFile reads a tar.gz bundle into name → content.
func untarFile(t *testing.T, p string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for name, data := range testutil.Untar(t, b) {
		out[name] = string(data)
	}
	return out
}

// A diagnostics collector that names a command of the commands section
// runs it through the real runtime as that section defines it (working
// directory, environment redacted from the output, stdout and stderr
// apart); a name the commands section does not define, or that only the
// twin defines, is an error entry of the manifest and runs nothing.
func TestDiagnosticsNamedCommands(t *testing.T) {
	s := newSandbox(t)
	os.MkdirAll(filepath.Join(s.root, "srv/app"), 0o755)
	s.write(t, "ops.yaml", policyDoc("default", `  commands:
    definitions:
      where:
        argv: [sh, -c, 'pwd; echo "token=$TOKEN"; echo warn >&2']
        workingDir: /srv/app
        env: { TOKEN: s3cret-v4lue }
  diagnostics:
    collectors:
      where: { command: { name: where } }
      missing: { command: { name: nope } }
      evil: { command: { name: evil } }
`))
	twin := filepath.Join(t.TempDir(), "twin.json")
	os.WriteFile(twin, []byte(`{"commands":{"definitions":{"evil":{"argv":["sh","-c","echo pwned > \"$TWINLET_ROOT/pwned\""]}}},`+
		`"diagnostics":{"requests":{"r1":{}}},"$version":2}`), 0o644)
	code, out, errs := twinlet(t, s.args("apply", "--once", "--twin-desired", twin)...)
	if code != 1 || !strings.Contains(out, "no cloud connection to upload through") {
		t.Fatalf("apply offline: %d\n%s%s", code, out, errs)
	}
	files := untarFile(t, filepath.Join(s.state, "diagnostics", "pending", "r1.tar.gz"))
	if got, want := files["commands/where.out"], filepath.Join(s.root, "srv/app")+"\ntoken=[REDACTED]\n"; got != want {
		t.Errorf("commands/where.out %q, want %q", got, want)
	}
	if got := files["commands/where.err"]; got != "warn\n" {
		t.Errorf("commands/where.err %q", got)
	}
	for name, data := range files {
		if strings.Contains(data, "s3cret-v4lue") {
			t.Errorf("%s holds the command's secret", name)
		}
	}
	var m struct {
		Entries []struct{ Collector, Path, Source, Error string }
	}
	if err := json.Unmarshal([]byte(files["manifest.json"]), &m); err != nil {
		t.Fatal(err)
	}
	errsBy := map[string]string{}
	for _, e := range m.Entries {
		errsBy[e.Collector] = e.Error
		if e.Collector == "where" && !strings.HasPrefix(e.Source, "commands.where: sh -c") {
			t.Errorf("where's source %q", e.Source)
		}
	}
	if !strings.Contains(errsBy["missing"], `no command "nope" in the commands section (defined: where)`) {
		t.Errorf("missing: %q", errsBy["missing"])
	}
	if !strings.Contains(errsBy["evil"], `no command "evil"`) || s.file("pwned") != "<missing>" {
		t.Errorf("a definition from the twin ran: %q, pwned %q", errsBy["evil"], s.file("pwned"))
	}
}
