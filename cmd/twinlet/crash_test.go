package main

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/twinlet/twinlet/state"
)

// bigPolicy manages n files whose content carries gen, so that every
// generation is real work.
func bigPolicy(n, gen int) string {
	var b strings.Builder
	b.WriteString("  files:\n")
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, "    f%04d: { path: /srv/data/d%02d/f%04d.txt, content: \"generation %d of file %d\\n\", mode: \"0640\" }\n", i, i%16, i, gen, i)
	}
	return b.String()
}

// TestCrashSafety starts `apply --once` of a policy with hundreds of files
// in a subprocess, kills it with SIGKILL at random moments, and checks
// each time that the state file is intact and that a restart converges.
func TestCrashSafety(t *testing.T) {
	if testing.Short() {
		t.Skip("crash test skipped in -short")
	}
	const files, kills = 300, 20
	s := newSandbox(t)
	child := func(args ...string) *exec.Cmd {
		argv, _ := json.Marshal(args)
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), "TWINLET_TEST_CHILD="+string(argv))
		return cmd
	}
	check := func(gen int) {
		t.Helper()
		for _, i := range []int{0, files / 2, files - 1} {
			want := fmt.Sprintf("generation %d of file %d\n", gen, i)
			if got := s.file(fmt.Sprintf("srv/data/d%02d/f%04d.txt", i%16, i)); got != want {
				t.Fatalf("file %d = %q, want %q", i, got, want)
			}
		}
	}

	// Time one uninterrupted apply to spread the kills over it.
	s.write(t, "big.yaml", policyDoc("default", bigPolicy(files, 0)))
	start := time.Now()
	if out, err := child(s.args("apply")...).CombinedOutput(); err != nil {
		t.Fatalf("first apply: %v\n%s", err, out)
	}
	span := time.Since(start)
	check(0)

	for k := 1; k <= kills; k++ {
		s.write(t, "big.yaml", policyDoc("default", bigPolicy(files, k)))
		cmd := child(s.args("apply")...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(rand.Int64N(int64(span))))
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()

		// The state file is intact: it parses, no warning.
		if _, err := (&state.Store{Dir: s.state}).Load(); err != nil {
			t.Fatalf("kill %d: state not intact: %v", k, err)
		}
		if _, err := os.Stat(filepath.Join(s.state, state.FileName+".corrupt")); err == nil {
			t.Fatalf("kill %d: state was corrupt", k)
		}
		// No temp file is mistaken for content, and a restart converges.
		if out, err := child(s.args("apply")...).CombinedOutput(); err != nil {
			t.Fatalf("kill %d: restart did not converge: %v\n%s", k, err, out)
		}
		check(k)
		st, _ := (&state.Store{Dir: s.state}).Load()
		if n := len(st.Sections["files"].Managed); n != files {
			t.Fatalf("kill %d: %d managed files recorded, want %d", k, n, files)
		}
	}
	if code, out, _ := twinlet(t, s.args("plan")...); code != 0 {
		t.Fatalf("plan after the kills: %d\n%.500s", code, out)
	}
}
