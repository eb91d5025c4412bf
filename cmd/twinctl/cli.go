package main

import (
	"context"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"

	"github.com/twinlet/twinlet/internal/iothub"
)

// Exit codes.
const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
)

const usageText = `twinctl: operate a fleet on Azure IoT Hub or twinhub.

Usage:
  twinctl [global flags] COMMAND [flags] [args]

Commands:
  devices create DEVICE [--status enabled|disabled] [--edge]
  devices list
  devices show DEVICE
  devices delete DEVICE [--etag ETAG]
  twin show DEVICE [--module MODULE]
  twin patch DEVICE -f FILE|- [--module MODULE] [--etag ETAG]
                                  FILE (JSON or YAML) holds "tags" and/or
                                  "properties": {"desired": …} (or "desired")
  invoke DEVICE METHOD [--module MODULE] [--payload JSON] [--timeout 30s]
                       [--connect-timeout 0s]
                                  exits 1 when the device answers a status >= 400
  query "SELECT …" [--page-size N]
  events [--follow] [--since SEQ] [--device DEVICE]
                                  device-to-cloud messages kept by twinhub
  enroll -f FILE|- [--dry-run]    DPS enrollments from YAML (kind: Enrollment or
                                  EnrollmentGroup; schema: twinlet schema enrollment),
                                  all validated (file:line) before any is sent
  enrollments list | show ID [--group] [--show-keys] | delete ID [--group] [--etag E]
  registrations list [--group G] | show REGISTRATION | delete REGISTRATION [--etag E]
  console [--listen 127.0.0.1:0] [--token T] [--open] [--interval 5s]
                                  a web console of the fleet (devices, twins,
                                  methods, configurations, rollouts) on loopback;
                                  prints its address with a random token
  completion bash|zsh|fish        print a shell completion script
  man                             print the man page (roff)

GitOps (a fleet repository of FleetConfig and DeviceConfig YAML files):
  apply -f DIR [--prune] [--dry-run] [--wait 5m]
                                  create, update and replace configurations
                                  and patch devices; new content replaces old
                                  only once it reaches the same devices
  diff -f DIR                     exit 0 when the hub matches, 2 when it
                                  differs, 1 on error
  get configs [--target COND]     configurations with their device counts
  get devices [--target COND]     devices with their state and configurations
  rollout status NAME [--watch] [--max-failed N|P%]
                                  targeted, applied, Ready, Failed, pending;
                                  exit 3 when failures cross the threshold
  rollout run NAME [--timeout 30m]
                                  widen a staged rollout stage by stage; stops
                                  (exit 3) when failures cross maxFailed,
                                  resumes where it stopped

Global flags (also accepted after the command):
  --hub CONNSTR      hub policy connection string (env TWINCTL_HUB)
  --ca FILE          PEM CA to trust, e.g. twinhub's (env TWINCTL_CA)
  --hub-addr H:P     connect to this address instead of HostName:443,
                     e.g. a twinhub on another port (env TWINCTL_HUB_ADDR)
  -o, --output FMT   table (default), json or yaml

DPS commands (enroll, enrollments, registrations) take, after the command:
  --dps CONNSTR      DPS policy connection string, e.g. twinhub's
                     provisioningserviceowner (env TWINCTL_DPS)
  --dps-addr H:P     connect to this address instead of HostName:443
                     (env TWINCTL_DPS_ADDR); --ca applies too

Exit codes: 0 ok, 1 error, 2 usage (diff: the hub differs), 3 rollout failures
over the threshold.
`

// cli is one invocation's environment; tests build it with buffers.
type cli struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	getenv         func(string) string

	g globals
}

func newCLI(stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string) *cli {
	return &cli{stdin: stdin, stdout: stdout, stderr: stderr, getenv: getenv}
}

// globals are the flags every command accepts.
type globals struct {
	hub, ca, addr, output string
}

// exitCoder is an error with its own exit code (diff: 2 when the hub
// differs; rollout: 3 when failures cross the threshold).
type exitCoder interface {
	error
	ExitCode() int
}

// usageError is a mistake in the command line: exit code 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{fmt.Sprintf(format, args...)}
}

// run executes one command line and returns the exit code.
func (c *cli) run(ctx context.Context, args []string) int {
	err := c.dispatch(ctx, args)
	var ue *usageError
	var ec exitCoder
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, flag.ErrHelp):
		fmt.Fprint(c.stdout, usageText)
		return exitOK
	case errors.As(err, &ec):
		if msg := err.Error(); msg != "" {
			fmt.Fprintf(c.stderr, "twinctl: %s\n", msg)
		}
		return ec.ExitCode()
	case errors.As(err, &ue):
		fmt.Fprintf(c.stderr, "twinctl: %s\nRun 'twinctl help' for usage.\n", ue.msg)
		return exitUsage
	default:
		fmt.Fprintf(c.stderr, "twinctl: %v\n", err)
		return exitError
	}
}

// command is a leaf command. setup registers its flags on a fresh flag
// set and returns the function that runs it with the positional
// arguments, so that no state outlives one invocation.
type command struct {
	name  string // "devices create"
	args  string // positional arguments, for messages: "DEVICE"
	nargs int    // exact number of positional arguments
	setup func(fs *flag.FlagSet) runFunc
}

type runFunc func(ctx context.Context, c *cli, args []string) error

func (c *cli) dispatch(ctx context.Context, args []string) error {
	fs := c.flagSet("twinctl")
	pos, err := parseArgsUntilCommand(fs, args)
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		return usagef("missing command")
	}
	name := pos[0]
	rest := pos[1:]
	if name == "help" {
		return flag.ErrHelp
	}
	if groups[name] {
		if len(rest) == 0 {
			return usagef("%s: missing subcommand", name)
		}
		name += " " + rest[0]
		rest = rest[1:]
	}
	cmd, ok := commands[name]
	if !ok {
		return usagef("unknown command %q", name)
	}
	cfs := c.flagSet("twinctl " + cmd.name)
	runCmd := cmd.setup(cfs)
	cargs, err := parseInterleaved(cfs, rest)
	if err != nil {
		return err
	}
	if len(cargs) != cmd.nargs {
		if cmd.nargs == 0 {
			return usagef("%s takes no arguments, got %q", cmd.name, strings.Join(cargs, " "))
		}
		return usagef("usage: twinctl %s %s", cmd.name, cmd.args)
	}
	switch c.g.output {
	case "", "table", "json", "yaml":
	default:
		return usagef("--output: unknown format %q (want table, json or yaml)", c.g.output)
	}
	return runCmd(ctx, c, cargs)
}

// groups are commands with subcommands.
var groups = map[string]bool{"devices": true, "twin": true, "get": true, "rollout": true}

var commands = map[string]*command{}

func register(cmd *command) { commands[cmd.name] = cmd }

// flagSet returns a flag set with the global flags, reporting errors as
// usage errors instead of printing.
func (c *cli) flagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&c.g.hub, "hub", c.g.hub, "hub policy connection string")
	fs.StringVar(&c.g.ca, "ca", c.g.ca, "PEM CA file")
	fs.StringVar(&c.g.addr, "hub-addr", c.g.addr, "host:port to connect to")
	fs.StringVar(&c.g.output, "output", c.g.output, "table, json or yaml")
	fs.StringVar(&c.g.output, "o", c.g.output, "table, json or yaml")
	return fs
}

// parseArgsUntilCommand parses global flags up to the first positional
// argument (the command) and returns it with everything after it.
func parseArgsUntilCommand(fs *flag.FlagSet, args []string) ([]string, error) {
	if err := fs.Parse(args); err != nil {
		return nil, flagError(err)
	}
	return fs.Args(), nil
}

// parseInterleaved parses flags wherever they are among the positional
// arguments ("twin show d1 -o json"); after "--" everything is positional.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, flagError(err)
		}
		rest := fs.Args()
		if consumed := len(args) - len(rest); consumed > 0 && args[consumed-1] == "--" {
			return append(pos, rest...), nil
		}
		if len(rest) == 0 {
			return pos, nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

func flagError(err error) error {
	if errors.Is(err, flag.ErrHelp) {
		return err
	}
	return &usageError{err.Error()}
}

// serviceOptions are the options every service client takes from the
// flags and environment: the CA (--ca, TWINCTL_CA) and the address to dial
// (addr, else the environment variable addrEnv).
func (c *cli) serviceOptions(addr, addrEnv string) ([]iothub.ServiceOption, error) {
	var opts []iothub.ServiceOption
	ca, caSrc := c.g.ca, "--ca"
	if ca == "" {
		ca, caSrc = c.getenv("TWINCTL_CA"), "TWINCTL_CA"
	}
	if ca != "" {
		pool, err := loadCA(ca)
		if err != nil {
			return nil, fmt.Errorf("%s %s: %w", caSrc, ca, err)
		}
		opts = append(opts, iothub.WithRootCAs(pool))
	}
	if addr == "" {
		addr = c.getenv(addrEnv)
	}
	if addr != "" {
		opts = append(opts, iothub.WithServiceAddr(addr))
	}
	return opts, nil
}

// client builds the service client from the flags and environment.
func (c *cli) client() (*iothub.ServiceClient, error) {
	hub, src := c.g.hub, "--hub"
	if hub == "" {
		hub, src = c.getenv("TWINCTL_HUB"), "TWINCTL_HUB"
	}
	if hub == "" {
		return nil, usagef("no hub: set --hub or TWINCTL_HUB to a policy connection string (HostName=…;SharedAccessKeyName=…;SharedAccessKey=…)")
	}
	cs, err := iothub.ParseConnectionString(hub)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", src, err)
	}
	opts, err := c.serviceOptions(c.g.addr, "TWINCTL_HUB_ADDR")
	if err != nil {
		return nil, err
	}
	sc, err := iothub.NewServiceClient(cs, opts...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", src, err)
	}
	return sc, nil
}

func loadCA(path string) (*x509.CertPool, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			return nil, pe.Err // the caller names the file
		}
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, errors.New("no PEM certificate found")
	}
	return pool, nil
}
