// Command run drives the conformance suite of twinhub with Microsoft's
// official Node.js SDKs (see ../README.md). It starts an embedded hub on
// loopback, runs `node --test` on the suite with the hub's coordinates in
// the environment, stops the hub and exits with node's status.
//
//	go run ./internal/hub/conformance/run [-dir internal/hub/conformance] [-v] [-fixed-ports] [test files…]
//
// Without test files it runs every *.test.js of the directory.
//
// `make conformance` installs the npm packages first and then runs this.
package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/twinlet/twinlet/internal/hub"
)

func main() {
	code, err := run(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "conformance:", err)
		if code == 0 {
			code = 2
		}
	}
	os.Exit(code)
}

func run(args []string) (int, error) {
	fs := flag.NewFlagSet("conformance", flag.ContinueOnError)
	dir := fs.String("dir", ".", "the conformance directory (package.json, node_modules, the suite)")
	hostname := fs.String("hostname", "localhost", "the hub's host name")
	verbose := fs.Bool("v", false, "stream the hub's debug log to stderr")
	fixed := fs.Bool("fixed-ports", false, "serve on 127.0.0.1:8883 and 127.0.0.1:443 (the SDKs' defaults) instead of ephemeral ports")
	timeout := fs.Duration("timeout", 5*time.Minute, "give up after this long")
	if err := fs.Parse(args); err != nil {
		return 2, err
	}
	abs, err := filepath.Abs(*dir)
	if err != nil {
		return 2, err
	}
	for _, need := range []string{"package-lock.json", "loopback.cjs", "reporter.mjs", "node_modules/azure-iothub", "node_modules/azure-iot-device-mqtt"} {
		if _, err := os.Stat(filepath.Join(abs, need)); err != nil {
			return 2, fmt.Errorf("%s: missing %s (run `make conformance`, which installs the packages with npm ci)", abs, need)
		}
	}
	node, err := exec.LookPath("node")
	if err != nil {
		return 2, errors.New("node is not on PATH (the suite needs Node.js 20 or later)")
	}
	files := fs.Args()
	if len(files) == 0 {
		// node --test runs the files in parallel, each in its own process.
		files, _ = filepath.Glob(filepath.Join(abs, "*.test.js"))
		if len(files) == 0 {
			return 2, fmt.Errorf("%s: no *.test.js", abs)
		}
	}

	tmp, err := os.MkdirTemp("", "twinhub-conformance-")
	if err != nil {
		return 2, err
	}
	defer os.RemoveAll(tmp)

	// The hub logs at debug level into a file; -v streams it too.
	logPath := filepath.Join(tmp, "hub.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return 2, err
	}
	defer logFile.Close()
	var logOut io.Writer = logFile
	if *verbose {
		logOut = io.MultiWriter(logFile, os.Stderr)
	}
	logger := slog.New(slog.NewTextHandler(logOut, &slog.HandlerOptions{Level: slog.LevelDebug}))

	mqttAddr, httpsAddr := "127.0.0.1:0", "127.0.0.1:0"
	if *fixed {
		mqttAddr, httpsAddr = "127.0.0.1:8883", "127.0.0.1:443"
		for _, a := range []string{mqttAddr, httpsAddr} {
			ln, err := net.Listen("tcp", a)
			if err != nil {
				return 2, fmt.Errorf("-fixed-ports: %s is not free (%v); stop what listens there or run without -fixed-ports", a, err)
			}
			ln.Close()
		}
	}
	h, err := hub.New(hub.Options{
		Dir:       filepath.Join(tmp, "hub"),
		Hostname:  *hostname,
		MQTTAddr:  mqttAddr,
		HTTPSAddr: httpsAddr,
		Logger:    logger,
		// The provisioning SDKs wait Retry-After between polls: 1 s, not 3.
		DPSHostname:   "dps." + *hostname,
		DPSRetryAfter: time.Second,
	})
	if err != nil {
		return 2, fmt.Errorf("hub: %w", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	if err := h.Start(ctx); err != nil {
		return 2, fmt.Errorf("hub: %w", err)
	}
	defer h.Close()

	caFile := h.CAFile()
	if caFile == "" {
		caFile = filepath.Join(tmp, "ca.pem")
		if err := os.WriteFile(caFile, h.CAPEM(), 0o600); err != nil {
			return 2, err
		}
	}
	_, mqttPort, _ := net.SplitHostPort(h.MQTTAddr())
	_, httpsPort, _ := net.SplitHostPort(h.HTTPSAddr())
	fmt.Printf("twinhub %s: mqtts %s, https %s (SDKs dial %s:8883 and %s:443)\n", h.Hostname(), h.MQTTAddr(), h.HTTPSAddr(), h.Hostname(), h.Hostname())

	// The files wait on timers (method timeouts, token lifetimes) far more
	// than they compute: run them all at once, whatever the CPU count.
	nodeArgs := []string{"--test", fmt.Sprintf("--test-concurrency=%d", len(files)),
		"--test-reporter=" + filepath.Join(abs, "reporter.mjs"), "--test-reporter-destination=stdout"}
	nodeArgs = append(nodeArgs, files...)
	cmd := exec.CommandContext(ctx, node, nodeArgs...)
	cmd.Dir = abs
	cmd.Stdout = os.Stdout
	cmd.Stderr = os.Stderr
	cmd.WaitDelay = 5 * time.Second
	cmd.Env = append(os.Environ(),
		"TWINHUB_HOSTNAME="+h.Hostname(),
		"TWINHUB_MQTT_PORT="+mqttPort,
		"TWINHUB_HTTPS_PORT="+httpsPort,
		"TWINHUB_CONNECTION_STRING="+h.OwnerConnectionString(),
		"TWINHUB_DPS_HOSTNAME="+h.DPSHostname(),
		"TWINHUB_ID_SCOPE="+h.IDScope(),
		"TWINHUB_DPS_CONNECTION_STRING="+h.DPSConnectionString().String(),
		"NODE_EXTRA_CA_CERTS="+caFile,
		"NODE_OPTIONS="+strings.TrimSpace(os.Getenv("NODE_OPTIONS")+" --require "+filepath.Join(abs, "loopback.cjs")),
	)
	started := time.Now()
	runErr := cmd.Run()
	fmt.Printf("node finished in %s\n", time.Since(started).Round(time.Millisecond))

	code := 0
	var exit *exec.ExitError
	switch {
	case runErr == nil:
	case errors.As(runErr, &exit):
		code = exit.ExitCode()
		if code <= 0 {
			code = 1
		}
	default:
		return 2, fmt.Errorf("node: %w", runErr)
	}
	if ctx.Err() != nil {
		fmt.Fprintf(os.Stderr, "conformance: stopped: %v\n", context.Cause(ctx))
		if code == 0 {
			code = 1
		}
	}
	if code != 0 && !*verbose {
		logFile.Sync()
		tailLog(os.Stderr, logPath, 80)
	}
	return code, nil
}

// tailLog prints the last n lines of the hub's log, for the failure report.
func tailLog(w io.Writer, path string, n int) {
	data, err := os.ReadFile(path)
	if err != nil || len(data) == 0 {
		return
	}
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	fmt.Fprintf(w, "--- last %d lines of the hub's log ---\n%s\n---\n", len(lines), strings.Join(lines, "\n"))
}
