package main

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/twinlet/twinlet/internal/testutil"
	"github.com/twinlet/twinlet/providers"
)

// blockerEnv registers the blocker provider in the agent this test runs
// as a child process; no other test sees it.
const blockerEnv = "TWINLET_TEST_BLOCKER"

// blocker is a test provider whose Observe hangs until its call is
// cancelled, as a package install stuck on a dead mirror would. It marks
// <root>/blocker-started when it starts to hang.
type blocker struct{}

func (blocker) Decode(*providers.Env, json.RawMessage) (providers.Spec, error) { return nil, nil }
func (blocker) Observe(ctx context.Context, env *providers.Env, _ providers.Spec) (providers.Observed, error) {
	if err := os.WriteFile(filepath.Join(env.Root, "blocker-started"), nil, 0o644); err != nil {
		return nil, err
	}
	<-ctx.Done()
	return nil, ctx.Err()
}
func (blocker) Plan(providers.Spec, providers.Observed) ([]providers.Change, error) { return nil, nil }
func (blocker) Apply(context.Context, *providers.Env, providers.Change) error       { return nil }

func init() {
	if os.Getenv(blockerEnv) != "" {
		providers.Register(providers.Info{ID: "blocker", Schema: json.RawMessage(`{"type":"object"}`), Timeout: time.Hour,
			New: func() providers.Provider { return blocker{} }})
	}
}

// TestRunWithAHungSection runs the agent as a process with a section whose
// provider hangs: the other sections converge meanwhile, and SIGTERM still
// stops the agent cleanly, the hung call cancelled.
func TestRunWithAHungSection(t *testing.T) {
	s := newSandbox(t)
	s.write(t, "base.yaml", policyDoc("default", goodSpec+"  blocker: { x: y }\n"))
	argv, _ := json.Marshal(s.args("run", "--resync", "1h"))
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "TWINLET_TEST_CHILD="+string(argv), blockerEnv+"=1")
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
	testutil.Eventually(t, "the blocker hangs", func() bool { return s.file("blocker-started") == "" })
	testutil.Eventually(t, "the other sections converge meanwhile", func() bool {
		b, _ := os.ReadFile(filepath.Join(s.state, "reported.json"))
		var doc map[string]struct {
			Status struct{ State string } `json:"__status"`
		}
		json.Unmarshal(b, &doc)
		for _, id := range []string{"hostname", "timezone", "files", "sysctl"} {
			if doc[id].Status.State != "Ready" {
				return false
			}
		}
		return s.file("etc/hostname") == "kiosk-17\n" && s.file("etc/motd") == "hello\n"
	})
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, logs.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("no exit after SIGTERM with a hung section\n%s", logs.String())
	}
	if !strings.Contains(logs.String(), "twinlet stopped") {
		t.Fatalf("no clean stop:\n%s", logs.String())
	}
}
