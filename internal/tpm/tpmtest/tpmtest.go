// Package tpmtest starts a software TPM (swtpm, the Debian package) for
// tests: a real TPM 2.0 implementation (libtpms) on a loopback TCP port
// with its state in a temp dir, stopped when the test ends.
package tpmtest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/twinlet/twinlet/internal/testutil"
)

// SWTPM is a running swtpm.
type SWTPM struct {
	// TCTI names it for internal/tpm and tpm2-tools: swtpm:host=127.0.0.1,port=N.
	TCTI string
	// Port is the command port; the control port is Port+1.
	Port int
	// StateDir holds the TPM's NV state.
	StateDir string
}

// Start starts swtpm for t and stops it at cleanup. It skips the test
// (with the command that installs it) when swtpm is not installed.
func Start(t testing.TB) *SWTPM {
	t.Helper()
	bin, err := exec.LookPath("swtpm")
	if err != nil {
		t.Skip("swtpm is not installed: run `make tpm-tools` (apt-get install swtpm swtpm-tools tpm2-tools)")
	}
	dir := t.TempDir()
	var lastErr error
	for range 10 {
		port, ok := freePair()
		if !ok {
			continue
		}
		ctx, cancel := context.WithCancel(context.Background())
		cmd := exec.CommandContext(ctx, bin, "socket", "--tpm2",
			"--tpmstate", "dir="+dir,
			"--server", "type=tcp,bindaddr=127.0.0.1,port="+strconv.Itoa(port),
			"--ctrl", "type=tcp,bindaddr=127.0.0.1,port="+strconv.Itoa(port+1),
			"--flags", "not-need-init,startup-clear")
		out := &testutil.SyncBuffer{}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			cancel()
			t.Fatalf("start swtpm: %v", err)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		stop := func() { cancel(); <-exited }
		if waitListening(port, exited) {
			t.Cleanup(stop)
			return &SWTPM{TCTI: fmt.Sprintf("swtpm:host=127.0.0.1,port=%d", port), Port: port, StateDir: dir}
		}
		stop()
		lastErr = fmt.Errorf("swtpm on port %d did not start: %s", port, out.String())
	}
	t.Fatalf("swtpm: %v", lastErr)
	return nil
}

// waitListening polls the command port until it accepts or swtpm exits.
func waitListening(port int, exited <-chan struct{}) bool {
	deadline := time.Now().Add(testutil.Timeout)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return false
		default:
		}
		c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port+1)), time.Second)
		if err == nil {
			c.Close()
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return false
}

// freePair finds a port whose successor is free too (swtpm's control port).
func freePair() (int, bool) {
	port := 20000 + rand.IntN(40000)
	for _, p := range []int{port, port + 1} {
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			return 0, false
		}
		ln.Close()
	}
	return port, true
}

// Env returns the environment for tpm2-tools aimed at this swtpm.
func (s *SWTPM) Env() []string {
	return append(os.Environ(), "TPM2TOOLS_TCTI="+s.TCTI)
}
