package main

import (
	"bytes"
	"fmt"
	"io"

	"github.com/twinlet/twinlet/internal/clidoc"
	"github.com/twinlet/twinlet/internal/version"
)

// program describes twinhub for its completions and man page, read from
// the flag definitions that `twinhub serve -h` prints.
func program() clidoc.Program {
	help := func(args ...string) string {
		var buf bytes.Buffer
		_ = run(append(args, "-h"), &buf, &buf)
		return buf.String()
	}
	return clidoc.Program{
		Name:    "twinhub",
		Section: 1,
		Summary: "a local, protocol-faithful Azure IoT Hub for development and tests",
		Description: `twinhub serves device MQTT 3.1.1 over TLS and the service REST API over HTTPS as Azure IoT Hub
does, with persistence in a directory and fault injection, so that twinlet, twinctl and the official
Azure IoT SDKs run against it on one machine. It is for development and tests only.
twinhub serve runs with GOGC=25 unless the environment sets GOGC; GOMEMLIMIT sets a soft memory
limit, as for any Go program. --pprof serves Go's profiles on a loopback address.`,
		Commands: []clidoc.Command{
			{Path: []string{"completion"}, Args: "bash|zsh|fish", Summary: "print a shell completion script"},
			{Path: []string{"man"}, Summary: "print the man page (roff)"},
			{Path: []string{"serve"}, Summary: "run the hub in the foreground", Flags: clidoc.ParseDefaults(help("serve"))},
			{Path: []string{"version"}, Summary: "print the version"},
		},
		Exit: "0 on a clean stop; 2 on a usage or start-up error.",
	}
}

// docs runs `twinhub completion SHELL` and `twinhub man`.
func docs(cmd string, args []string, stdout io.Writer) error {
	switch {
	case cmd == "completion" && len(args) == 1 && args[0] != "-h":
		return program().Render(stdout, args[0])
	case cmd == "completion":
		return fmt.Errorf("usage: twinhub completion bash|zsh|fish")
	case len(args) == 0:
		return program().Man(stdout, version.Version, version.Date())
	}
	return fmt.Errorf("usage: twinhub man")
}
