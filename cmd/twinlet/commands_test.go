package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/twinlet/twinlet/internal/testutil"
	"github.com/twinlet/twinlet/state"
)

const commandDefs = `  commands:
    definitions:
      slow:
        argv: [sh, -c, 'echo run >> "$TWINLET_ROOT/marker"; echo $$ > "$TWINLET_ROOT/pid"; exec sleep 120']
        timeout: 5m
      hello:
        argv: [echo, hello]
`

// gone reports whether a process no longer runs (or is a zombie).
func gone(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return len(f) == 0 || f[0] == "Z" || f[0] == "X"
}

func applyJSON(t *testing.T, s *sandbox, twin string) map[string]map[string]json.RawMessage {
	t.Helper()
	_, out, errs := twinlet(t, s.args("apply", "--twin-desired", twin, "--output", "json")...)
	var doc map[string]map[string]json.RawMessage
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("apply output: %v\n%s%s", err, out, errs)
	}
	return doc
}

// A kill -9 of a real `twinlet apply` while the command the twin asked
// for runs: the command dies with the agent, and every later start
// reports the commandId Interrupted and never runs it again (the marker
// the command writes first holds one line).
func TestCommandKilledMidRunIsNeverRunTwice(t *testing.T) {
	s := newSandbox(t)
	s.write(t, "commands.yaml", policyDoc("default", commandDefs))
	twin := filepath.Join(t.TempDir(), "twin.json")
	os.WriteFile(twin, []byte(`{"commands":{"runs":{"job-1":{"name":"slow"}}},"$version":2}`), 0o644)

	argv, _ := json.Marshal(s.args("apply", "--twin-desired", twin))
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "TWINLET_TEST_CHILD="+string(argv))
	var out testutil.SyncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, "the command runs", func() bool { return s.file("pid") != "<missing>" && s.file("marker") == "run\n" })
	pid, _ := strconv.Atoi(strings.TrimSpace(s.file("pid")))
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	testutil.Eventually(t, "the command died with the agent", func() bool { return gone(pid) })
	st, _ := (&state.Store{Dir: s.state}).Load()
	if got := st.Sections["commands"].InFlight; len(got) != 1 || got[0] != "job-1" {
		t.Fatalf("in flight at the kill: %v\n%s", got, out.String())
	}

	for i := 0; i < 2; i++ {
		doc := applyJSON(t, s, twin)
		sec := doc["commands"]
		// The section converged (nothing is left to run); the run's own
		// state says what happened to it.
		if status := compact(sec["__status"]); !strings.Contains(status, `"Ready"`) {
			t.Fatalf("start %d: status %s", i, status)
		}
		var runs map[string]struct {
			State, Name string
		}
		json.Unmarshal(sec["runs"], &runs)
		if runs["job-1"].State != "Interrupted" || runs["job-1"].Name != "slow" {
			t.Fatalf("start %d: runs %s", i, sec["runs"])
		}
		if got := s.file("marker"); got != "run\n" {
			t.Fatalf("start %d: ran again: %q", i, got)
		}
	}
	// plan shows nothing to run for it either.
	if code, out, errs := twinlet(t, s.args("plan", "--twin-desired", twin)...); strings.Contains(out, "job-1: run") {
		t.Fatalf("plan %d plans it again:\n%s%s", code, out, errs)
	}
}

// From the twin: a definition is Forbidden with its pointer and changes
// nothing, a run of a defined command runs once and shows in plan as a
// diff line, a run of an unknown name is Invalid at its name.
func TestCommandsFromTheTwin(t *testing.T) {
	s := newSandbox(t)
	s.write(t, "commands.yaml", policyDoc("default", commandDefs))
	twin := filepath.Join(t.TempDir(), "twin.json")
	os.WriteFile(twin, []byte(`{"commands":{"definitions":{"hello":{"argv":["/bin/sh","-c","echo pwned"]}},`+
		`"runs":{"r1":{"name":"hello"}}},"$version":2}`), 0o644)
	code, out, errs := twinlet(t, s.args("plan", "--twin-desired", twin)...)
	if !strings.Contains(out, "+ runs/r1: run hello: echo") {
		t.Fatalf("plan: %d\n%s%s", code, out, errs)
	}
	doc := applyJSON(t, s, twin)
	sec := doc["commands"]
	if st, e := compact(sec["__status"]), compact(sec["__errors"]); !strings.Contains(st, `"Forbidden"`) || !strings.Contains(e, `"pointer":"/definitions/hello"`) {
		t.Fatalf("twin definition: status %s errors %s", st, e)
	}
	var runs map[string]struct{ State, Stdout string }
	json.Unmarshal(sec["runs"], &runs)
	if runs["r1"].State != "Succeeded" || runs["r1"].Stdout != "hello\n" {
		t.Fatalf("the run used the twin's definition or did not run: %s", sec["runs"])
	}

	os.WriteFile(twin, []byte(`{"commands":{"runs":{"r1":{"name":"hello"},"r2":{"name":"nope"}}},"$version":3}`), 0o644)
	sec = applyJSON(t, s, twin)["commands"]
	if st, e := compact(sec["__status"]), compact(sec["__errors"]); !strings.Contains(st, `"Invalid"`) || !strings.Contains(e, `"pointer":"/runs/r2/name"`) {
		t.Fatalf("unknown name: status %s errors %s", st, e)
	}
}
