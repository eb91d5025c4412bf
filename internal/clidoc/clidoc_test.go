package clidoc

import (
	"bytes"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func testFlags() *flag.FlagSet {
	fs := flag.NewFlagSet("demo run", flag.ContinueOnError)
	fs.String("state-dir", "/var/lib/demo", "state `directory`")
	fs.Bool("once", false, "one pass, then exit")
	fs.Duration("resync", 5*time.Minute, "re-reconcile this often")
	fs.Int("port", 0, "the port; 0 means 8883")
	fs.String("o", "table", "output format…")
	return fs
}

func testProgram() Program {
	return Program{
		Name: "demo", Section: 1, Summary: "a demo — with a dash",
		Description: "First paragraph\nstill first.\n\n.Second starts with a dot.",
		Global:      []Flag{{Name: "hub", Value: "string", Usage: "hub connection string"}, {Name: "o", Value: "string", Usage: "output"}},
		Commands: []Command{
			{Path: []string{"devices", "create"}, Args: "DEVICE", Flags: []Flag{{Name: "status", Value: "string"}, {Name: "edge"}}},
			{Path: []string{"devices", "list"}},
			{Path: []string{"run"}, Summary: "run it", Flags: FlagsOf(testFlags())},
		},
		Files: map[string]string{"/etc/demo.yaml": "the config"},
		Exit:  "0 ok",
	}
}

// ParseDefaults must read back exactly what FlagsOf sees, from the text
// that -h prints, so completions made either way agree.
func TestParseDefaultsRoundTrip(t *testing.T) {
	fs := testFlags()
	var buf bytes.Buffer
	fs.SetOutput(&buf)
	fs.PrintDefaults()
	got := ParseDefaults("Usage of demo run:\n" + buf.String())
	want := FlagsOf(fs)
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("ParseDefaults:\n got %+v\nwant %+v\nfrom:\n%s", got, want, buf.String())
	}
	if want[4].Value != "directory" || want[4].Default != "/var/lib/demo" || want[1].Value != "" {
		t.Fatalf("FlagsOf: %+v", want)
	}
}

func TestParseCommands(t *testing.T) {
	text := "usage: demo <command>\n\ncommands:\n  run         run it\n  ek | srk    a key\n  slot-token N [--ttl 1h]  a token\n  enrollment-info [--output json]\n                 what the factory records\n  version     print\n\nRun 'demo'.\n  notacommand  x\n"
	got := ParseCommands(text)
	var names []string
	for _, c := range got {
		names = append(names, c.Name()+"="+c.Summary)
	}
	if want := []string{"run=run it", "ek=a key", "srk=a key", "slot-token=a token", "enrollment-info=", "version=print"}; !reflect.DeepEqual(names, want) {
		t.Fatalf("got %q, want %q", names, want)
	}
}

func TestDiscoverNested(t *testing.T) {
	help := map[string]string{
		"":          "commands:\n  tpm         the TPM\n  run         run\n  help        help\n",
		"tpm":       "commands:\n  slots       list\n  ek          the EK\n",
		"tpm slots": "  -tpm string\n    \tthe TCTI (default \"device:/dev/tpmrm0\")\n",
		"tpm ek":    "",
		"run":       "  -once\n    \tonce\n",
	}
	got := Discover(func(p []string) string { return help[strings.Join(p, " ")] }, "help")
	var names []string
	for _, c := range got {
		names = append(names, c.Name())
	}
	if want := []string{"run", "tpm ek", "tpm slots"}; !reflect.DeepEqual(names, want) {
		t.Fatalf("got %q, want %q", names, want)
	}
	if f := got[2].Flags; len(f) != 1 || f[0].Default != "device:/dev/tpmrm0" {
		t.Fatalf("tpm slots flags: %+v", f)
	}
}

func script(t *testing.T, render func(*bytes.Buffer) error) string {
	t.Helper()
	var buf bytes.Buffer
	if err := render(&buf); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "completion")
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// BashComplete runs the generated script in a real bash the way
// programmable completion calls it and returns COMPREPLY.
func BashComplete(t *testing.T, scriptPath string, words ...string) []string {
	t.Helper()
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("bash not installed")
	}
	// The words go in as arguments, never into the script.
	cmd := exec.Command("bash", append([]string{"--norc", "--noprofile", "-c",
		`source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); ` +
			`"_$1"; printf '%s\n' "${COMPREPLY[@]}"`, "bash", scriptPath}, words...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("bash: %v\n%s", err, out)
	}
	return strings.Fields(string(out))
}

func TestBashCompletes(t *testing.T) {
	p := testProgram()
	path := script(t, func(b *bytes.Buffer) error { return p.Bash(b) })
	cases := []struct {
		words []string
		want  []string
	}{
		{[]string{"demo", ""}, []string{"devices", "run"}},
		{[]string{"demo", "dev"}, []string{"devices"}},
		{[]string{"demo", "devices", ""}, []string{"create", "list"}},
		{[]string{"demo", "--hub", "x", "devices", "c"}, []string{"create"}},
		{[]string{"demo", "run", "--st"}, []string{"--state-dir"}},
		{[]string{"demo", "run", "--o"}, []string{"--once"}},
		{[]string{"demo", "devices", "create", "--"}, []string{"--edge", "--hub", "--status"}},
		{[]string{"demo", "-o", "json", "ru"}, []string{"run"}},
	}
	for _, c := range cases {
		if got := BashComplete(t, path, c.words...); !reflect.DeepEqual(got, c.want) {
			t.Errorf("%q: got %q, want %q", c.words, got, c.want)
		}
	}
}

func TestFishCompletes(t *testing.T) {
	if _, err := exec.LookPath("fish"); err != nil {
		t.Skip("fish not installed (make deb-tools installs it)")
	}
	p := testProgram()
	path := script(t, func(b *bytes.Buffer) error { return p.Fish(b) })
	complete := func(line string) []string {
		cmd := exec.Command("fish", "--no-config", "-c", `source $argv[1]; complete -C $argv[2]`, path, line)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("fish: %v\n%s", err, out)
		}
		var words []string
		for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if f := strings.Fields(l); len(f) > 0 {
				words = append(words, f[0])
			}
		}
		return words
	}
	if got := complete("demo dev"); !reflect.DeepEqual(got, []string{"devices"}) {
		t.Errorf("demo dev: %q", got)
	}
	if got := complete("demo devices cr"); !reflect.DeepEqual(got, []string{"create"}) {
		t.Errorf("demo devices cr: %q", got)
	}
	if got := complete("demo run --state"); !reflect.DeepEqual(got, []string{"--state-dir"}) {
		t.Errorf("demo run --state: %q", got)
	}
}

func TestZshSyntax(t *testing.T) {
	if _, err := exec.LookPath("zsh"); err != nil {
		t.Skip("zsh not installed (make deb-tools installs it)")
	}
	p := testProgram()
	path := script(t, func(b *bytes.Buffer) error { return p.Zsh(b) })
	if out, err := exec.Command("zsh", "-n", path).CombinedOutput(); err != nil {
		t.Fatalf("zsh -n: %v\n%s", err, out)
	}
}

// The man page must render without a single groff warning, and say what
// the flags say.
func TestManRendersCleanly(t *testing.T) {
	if _, err := exec.LookPath("groff"); err != nil {
		t.Skip("groff not installed")
	}
	var buf bytes.Buffer
	if err := testProgram().Man(&buf, "1.2.3", time.Unix(1700000000, 0)); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("groff", "-man", "-Tutf8", "-ww", "-z")
	cmd.Stdin = bytes.NewReader(buf.Bytes())
	if out, err := cmd.CombinedOutput(); err != nil || len(out) > 0 {
		t.Fatalf("groff: %v\n%s\n%s", err, out, buf.String())
	}
	cmd = exec.Command("groff", "-man", "-Tascii", "-P-cbou")
	cmd.Stdin = bytes.NewReader(buf.Bytes())
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	text := string(out)
	for _, want := range []string{"demo devices create DEVICE", "--state-dir directory", "(default /var/lib/demo)", ".Second starts", "2023-11-14", "demo 1.2.3"} {
		if !strings.Contains(text, want) {
			t.Errorf("man page lacks %q:\n%s", want, text)
		}
	}
}

func TestRejectsUnsafeNames(t *testing.T) {
	p := testProgram()
	p.Commands = append(p.Commands, Command{Path: []string{"x;rm"}})
	if err := p.Bash(&bytes.Buffer{}); err == nil {
		t.Fatal("a command word with ; was accepted into a shell script")
	}
	if err := p.Render(&bytes.Buffer{}, "csh"); err == nil {
		t.Fatal("unknown shell accepted")
	}
}
