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

	bin  string
	stop func()
}

// Start starts swtpm for t and stops it at cleanup. It skips the test
// (with the command that installs it) when swtpm is not installed.
func Start(t testing.TB) *SWTPM {
	t.Helper()
	bin, err := exec.LookPath("swtpm")
	if err != nil {
		t.Skip("swtpm is not installed: run `make tpm-tools` (apt-get install swtpm swtpm-tools tpm2-tools)")
	}
	s := &SWTPM{StateDir: t.TempDir(), bin: bin}
	t.Cleanup(func() { s.Stop() })
	var lastErr error
	for range 10 {
		port, ok := freePair()
		if !ok {
			continue
		}
		if lastErr = s.start(port); lastErr == nil {
			s.Port, s.TCTI = port, fmt.Sprintf("swtpm:host=127.0.0.1,port=%d", port)
			return s
		}
	}
	t.Fatalf("swtpm: %v", lastErr)
	return nil
}

func (s *SWTPM) start(port int) error {
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, s.bin, "socket", "--tpm2",
		"--tpmstate", "dir="+s.StateDir,
		"--server", "type=tcp,bindaddr=127.0.0.1,port="+strconv.Itoa(port),
		"--ctrl", "type=tcp,bindaddr=127.0.0.1,port="+strconv.Itoa(port+1),
		"--flags", "not-need-init,startup-clear")
	out := &testutil.SyncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		cancel()
		return fmt.Errorf("start swtpm: %w", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	s.stop = func() { cancel(); <-exited }
	if !waitListening(port, exited) {
		s.Stop()
		return fmt.Errorf("swtpm on port %d did not start: %s", port, out.String())
	}
	return nil
}

// Stop stops swtpm; its state stays in StateDir.
func (s *SWTPM) Stop() {
	if s.stop != nil {
		s.stop()
		s.stop = nil
	}
}

// Restart stops swtpm and starts it again on the same port and state, as
// a reboot of a VM's TPM would.
func (s *SWTPM) Restart(t testing.TB) {
	t.Helper()
	s.Stop()
	var err error
	deadline := time.Now().Add(testutil.Timeout)
	for time.Now().Before(deadline) {
		if err = s.start(s.Port); err == nil {
			return
		}
		time.Sleep(50 * time.Millisecond) // the old process's port is being released
	}
	t.Fatalf("restart swtpm: %v", err)
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
