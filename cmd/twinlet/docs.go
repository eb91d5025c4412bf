package main

import (
	"bytes"
	"context"
	"fmt"
	"io"

	"github.com/twinlet/twinlet/internal/clidoc"
	"github.com/twinlet/twinlet/internal/version"
)

// program describes twinlet for its completions and man page, read from
// the same flag definitions that `twinlet COMMAND -h` prints.
func program(ctx context.Context) clidoc.Program {
	help := func(path []string) string {
		var buf bytes.Buffer
		args := append(append([]string(nil), path...), "-h")
		if len(path) == 0 {
			args = []string{"help"}
		}
		run(ctx, args, &buf, &buf)
		return buf.String()
	}
	return clidoc.Program{
		Name:    "twinlet",
		Section: 8,
		Summary: "declarative device-management agent for Azure IoT Hub",
		Description: `twinlet reconciles a Linux device against desired state: the device twin's desired
properties and local YAML policy files (/etc/twinlet/policy.d). Providers observe the system, a plan
converges it, and the result is reported to the twin's reported properties.

Layers, highest first: local policy with mode enforce, the twin, local policy with mode default.
Invalid input is reported with its location and never replaces the last good desired state.`,
		Commands: clidoc.Discover(help, "help"),
		Files: map[string]string{
			"/etc/twinlet/twinlet.yaml": "the agent configuration",
			"/etc/twinlet/policy.d/":    "local policy files (*.yaml)",
			"/var/lib/twinlet/":         "the agent's state: last good desired state, outbox, identity",
		},
		Exit: "0 success (plan: nothing to do); 1 an error or a section not Ready; 2 a usage error (plan: changes pending).",
	}
}

// docs runs `twinlet completion SHELL` and `twinlet man`.
func docs(ctx context.Context, cmd string, args []string, stdout, stderr io.Writer) int {
	// Usage first: program() asks every command for -h, this one too.
	var err error
	switch {
	case cmd == "completion" && (len(args) != 1 || args[0] == "-h" || args[0] == "--help"):
		fmt.Fprintln(stderr, "usage: twinlet completion bash|zsh|fish")
		return 2
	case cmd == "completion":
		err = program(ctx).Render(stdout, args[0])
	case len(args) == 0:
		err = program(ctx).Man(stdout, version.Version, version.Date())
	default:
		fmt.Fprintln(stderr, "usage: twinlet man")
		return 2
	}
	if err != nil {
		fmt.Fprintf(stderr, "twinlet %s: %v\n", cmd, err)
		return 1
	}
	return 0
}
