package main

import (
	"context"
	"flag"
	"sort"
	"strings"

	"github.com/twinlet/twinlet/internal/clidoc"
	"github.com/twinlet/twinlet/internal/version"
)

func init() {
	register(&command{name: "completion", args: "bash|zsh|fish", nargs: 1, setup: func(*flag.FlagSet) runFunc {
		return func(_ context.Context, c *cli, args []string) error {
			if err := program().Render(c.stdout, args[0]); err != nil {
				return usagef("%v", err)
			}
			return nil
		}
	}})
	register(&command{name: "man", nargs: 0, setup: func(*flag.FlagSet) runFunc {
		return func(_ context.Context, c *cli, _ []string) error {
			return program().Man(c.stdout, version.Version, version.Date())
		}
	}})
}

// program describes twinctl for its completions and man page, from the
// same flag definitions the commands parse.
func program() clidoc.Program {
	global := clidoc.FlagsOf((&cli{}).flagSet("twinctl"))
	isGlobal := map[string]bool{}
	for _, f := range global {
		isGlobal[f.Name] = true
	}
	var cmds []clidoc.Command
	for _, cmd := range commands {
		fs := flag.NewFlagSet(cmd.name, flag.ContinueOnError)
		cmd.setup(fs)
		cc := clidoc.Command{Path: strings.Fields(cmd.name), Args: cmd.args}
		for _, f := range clidoc.FlagsOf(fs) {
			if !isGlobal[f.Name] {
				cc.Flags = append(cc.Flags, f)
			}
		}
		cmds = append(cmds, cc)
	}
	sort.Slice(cmds, func(i, j int) bool { return cmds[i].Name() < cmds[j].Name() })
	return clidoc.Program{
		Name:    "twinctl",
		Section: 1,
		Summary: "operate a fleet of twinlet devices on Azure IoT Hub or twinhub",
		Description: `twinctl manages devices, device twins, direct methods, queries and telemetry of an IoT Hub
(or of twinhub, the local emulator). The hub is named by a policy connection string (--hub or TWINCTL_HUB).`,
		Global:   global,
		Commands: cmds,
		Exit:     "0 success; 1 an error; 2 a usage error.",
	}
}
