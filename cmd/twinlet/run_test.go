package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/twinlet/twinlet/internal/testutil"
)

// TestRunLifecycle runs the agent as a process: it converges, follows a
// policy edit, heals drift, reloads on SIGHUP and stops cleanly on SIGTERM.
func TestRunLifecycle(t *testing.T) {
	s := newSandbox(t)
	s.write(t, "base.yaml", policyDoc("default", goodSpec))
	argv, _ := json.Marshal(s.args("run", "--resync", "1s"))
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "TWINLET_TEST_CHILD="+string(argv))
	var logs testutil.SyncBuffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
		}
	}()
	reported := func() string {
		b, _ := os.ReadFile(filepath.Join(s.state, "reported.json"))
		return string(b)
	}
	testutil.Eventually(t, "first convergence", func() bool {
		return s.file("etc/motd") == "hello\n" && strings.Contains(reported(), `"state": "Ready"`)
	})

	s.write(t, "base.yaml", policyDoc("default", strings.Replace(goodSpec, `hello\n`, `bonjour\n`, 1)))
	testutil.Eventually(t, "policy edit applied", func() bool { return s.file("etc/motd") == "bonjour\n" })

	os.WriteFile(filepath.Join(s.root, "etc/hostname"), []byte("tampered\n"), 0o644)
	testutil.Eventually(t, "drift healed", func() bool { return s.file("etc/hostname") == "kiosk-17\n" })

	cmd.Process.Signal(syscall.SIGHUP)
	testutil.Eventually(t, "reload logged", func() bool { return strings.Contains(logs.String(), "reload requested") })

	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, logs.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("no exit after SIGTERM\n%s", logs.String())
	}
	if !strings.Contains(logs.String(), "twinlet stopped") {
		t.Fatalf("no clean stop:\n%s", logs.String())
	}
}

// TestRunTrimsWhenIdle: `twinlet run` hands back its memory once it has
// been idle for --idle-trim after converging, and again after the next
// piece of work (a policy edit), not in between.
func TestRunTrimsWhenIdle(t *testing.T) {
	s := newSandbox(t)
	s.write(t, "base.yaml", policyDoc("default", goodSpec))
	argv, _ := json.Marshal(s.args("run", "--resync", "1h", "--idle-trim", "300ms", "--log-level", "debug"))
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "TWINLET_TEST_CHILD="+string(argv))
	var logs testutil.SyncBuffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	trims := func() int { return strings.Count(logs.String(), "idle: memory handed back") }
	testutil.Eventually(t, "first convergence", func() bool { return s.file("etc/motd") == "hello\n" })
	testutil.Eventually(t, "a trim after converging", func() bool { return trims() == 1 })
	s.write(t, "base.yaml", policyDoc("default", strings.Replace(goodSpec, `hello\n`, `bonjour\n`, 1)))
	testutil.Eventually(t, "policy edit applied", func() bool { return s.file("etc/motd") == "bonjour\n" })
	testutil.Eventually(t, "a trim after the edit", func() bool { return trims() == 2 })
	if strings.Contains(logs.String(), "unmapping the executable") {
		t.Fatalf("unmapping the executable failed:\n%s", logs.String())
	}
}
