package main

import (
	"bytes"
	"context"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/twinlet/twinlet/internal/testutil"
)

// TestRunLeavesNoGoroutine runs the agent in-process and stops it: no
// goroutine that runAgent started (the SIGHUP forwarder among them) may
// outlive it.
func TestRunLeavesNoGoroutine(t *testing.T) {
	s := newSandbox(t)
	s.write(t, "base.yaml", policyDoc("default", goodSpec))
	ctx, cancel := context.WithCancel(context.Background())
	var out, errb testutil.SyncBuffer
	done := make(chan int, 1)
	go func() { done <- run(ctx, s.args("run", "--log-level", "info"), &out, &errb) }()
	testutil.Eventually(t, "first convergence", func() bool { return s.file("etc/motd") == "hello\n" })
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errb.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("run did not return")
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		var left []string
		for _, g := range bytes.Split(buf, []byte("\n\n")) {
			if bytes.Contains(g, []byte(".runAgent")) {
				left = append(left, string(g))
			}
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines of runAgent left:\n%s", len(left), strings.Join(left, "\n\n"))
		}
		time.Sleep(10 * time.Millisecond)
	}
}
