// Package clidoc describes a command-line program (its commands and their
// flags) and renders that description as shell completion scripts for bash,
// zsh and fish and as a man page. The description is taken from the same
// flag definitions that print `-h`: either straight from a flag.FlagSet or
// by reading the program's own help output, so the completions and the man
// page can never drift from the flags.
package clidoc

import (
	"bufio"
	"flag"
	"fmt"
	"regexp"
	"sort"
	"strings"
)

// Flag is one command-line flag.
type Flag struct {
	// Name is the flag without dashes ("state-dir").
	Name string
	// Value names the flag's argument ("string", "duration", "FILE"); it
	// is empty for a boolean flag, which takes none.
	Value string
	// Usage is the flag's help text.
	Usage string
	// Default is the default value as -h prints it; empty when none.
	Default string
}

// Command is one command of a program, possibly nested ("devices create").
type Command struct {
	// Path is the words that name the command: ["devices", "create"].
	Path []string
	// Args describes the positional arguments ("DEVICE METHOD").
	Args string
	// Summary is one line about what the command does.
	Summary string
	// Flags are the command's own flags (not the program's global ones).
	Flags []Flag
}

// Name is the command's words joined by spaces.
func (c Command) Name() string { return strings.Join(c.Path, " ") }

// Program is a whole command-line program.
type Program struct {
	// Name is the executable's name.
	Name string
	// Section is the man page section: 1 for users, 8 for the daemon.
	Section int
	// Summary is the man page's NAME line: what the program is.
	Summary string
	// Description is the man page's DESCRIPTION, in paragraphs separated
	// by blank lines.
	Description string
	// Global are flags every command accepts.
	Global []Flag
	// Commands are the leaf commands, sorted by Name.
	Commands []Command
	// Files are FILES entries of the man page: path → what it is.
	Files map[string]string
	// Exit is the EXIT STATUS paragraph.
	Exit string
}

// FlagsOf returns the flags defined on fs, sorted by name, as -h prints
// them (flag.UnquoteUsage decides the argument name).
func FlagsOf(fs *flag.FlagSet) []Flag {
	var out []Flag
	fs.VisitAll(func(f *flag.Flag) {
		value, usage := flag.UnquoteUsage(f)
		def := f.DefValue
		if isZero(f, def) {
			def = ""
		}
		out = append(out, Flag{Name: f.Name, Value: value, Usage: usage, Default: def})
	})
	return out
}

// isZero reports whether def is the zero value of the flag's type, which
// -h does not print as a default either.
func isZero(f *flag.Flag, def string) bool {
	switch def {
	case "", "0", "false", "0s", "[]":
		return true
	}
	if bf, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && bf.IsBoolFlag() {
		return def == "false"
	}
	return false
}

var (
	// "  -name type" or "  -name" (PrintDefaults' first line of a flag),
	// optionally followed on the same line by the usage for short names.
	flagLine = regexp.MustCompile(`^  -([A-Za-z0-9][A-Za-z0-9_.-]*)(?: ([A-Za-z0-9_.{}|-]+))?(?:\t(.*))?$`)
	// "    \tusage" continuation lines.
	usageLine = regexp.MustCompile(`^    \t(.*)$`)
	defaultRe = regexp.MustCompile(` \(default (.*)\)$`)
	// "  name [| other] [ARGS]   summary" inside a "commands:" block.
	commandLine = regexp.MustCompile(`^  ([a-z][a-z0-9-]*(?: \| [a-z][a-z0-9-]*)*)((?: [^ ]+)*)(?:\s{2,}(.*))?$`)
)

// ParseDefaults reads the flag definitions out of help text that
// flag.PrintDefaults wrote, ignoring every other line.
func ParseDefaults(text string) []Flag {
	var out []Flag
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line := sc.Text()
		if m := flagLine.FindStringSubmatch(line); m != nil {
			out = append(out, Flag{Name: m[1], Value: m[2], Usage: m[3]})
			continue
		}
		if m := usageLine.FindStringSubmatch(line); m != nil && len(out) > 0 {
			f := &out[len(out)-1]
			if f.Usage != "" {
				f.Usage += " "
			}
			f.Usage += strings.TrimSpace(m[1])
		}
	}
	for i := range out {
		if m := defaultRe.FindStringSubmatch(out[i].Usage); m != nil {
			out[i].Default = strings.Trim(m[1], `"`)
			out[i].Usage = strings.TrimSuffix(out[i].Usage, m[0])
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// ParseCommands reads "name  summary" lines from the first block of help
// text headed by a line "commands:" (any case), up to the next blank line.
func ParseCommands(text string) []Command {
	var out []Command
	in := false
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line := sc.Text()
		if strings.EqualFold(strings.TrimSpace(line), "commands:") {
			in = true
			continue
		}
		if !in {
			continue
		}
		if strings.TrimSpace(line) == "" {
			if len(out) > 0 {
				break
			}
			continue
		}
		if m := commandLine.FindStringSubmatch(line); m != nil {
			for _, name := range strings.Split(m[1], " | ") {
				out = append(out, Command{Path: []string{name}, Args: strings.TrimSpace(m[2]), Summary: strings.TrimSpace(m[3])})
			}
		}
	}
	return out
}

// Discover builds the commands of a program that documents itself the way
// twinlet and twinhub do: help(nil) returns the top-level help with a
// "commands:" block, and help(path) the output of `PROGRAM path... -h`,
// which lists the command's flags and, for a command with subcommands, a
// "commands:" block of its own (a command whose -h repeats its parent's
// list is a leaf). Commands named in skip are left out.
func Discover(help func(path []string) string, skip ...string) []Command {
	skipped := map[string]bool{}
	for _, s := range skip {
		skipped[s] = true
	}
	var out []Command
	names := func(cmds []Command) string {
		var n []string
		for _, c := range cmds {
			n = append(n, c.Name())
		}
		return strings.Join(n, " ")
	}
	var walk func(prefix []string, cmds []Command, depth int)
	walk = func(prefix []string, cmds []Command, depth int) {
		for _, c := range cmds {
			path := append(append([]string(nil), prefix...), c.Path...)
			name := strings.Join(path, " ")
			if skipped[name] {
				continue
			}
			text := help(path)
			if subs := ParseCommands(text); len(subs) > 0 && depth < 3 && names(subs) != names(cmds) {
				walk(path, subs, depth+1)
				continue
			}
			out = append(out, Command{Path: path, Args: c.Args, Summary: c.Summary, Flags: ParseDefaults(text)})
		}
	}
	walk(nil, ParseCommands(help(nil)), 0)
	sort.Slice(out, func(i, j int) bool { return out[i].Name() < out[j].Name() })
	return out
}

// groups returns, for each command prefix (including ""), the words that
// may follow it, sorted.
func (p Program) groups() map[string][]string {
	seen := map[string]map[string]bool{}
	for _, c := range p.Commands {
		for i := range c.Path {
			prefix := strings.Join(c.Path[:i], " ")
			if seen[prefix] == nil {
				seen[prefix] = map[string]bool{}
			}
			seen[prefix][c.Path[i]] = true
		}
	}
	out := map[string][]string{}
	for prefix, words := range seen {
		for w := range words {
			out[prefix] = append(out[prefix], w)
		}
		sort.Strings(out[prefix])
	}
	return out
}

// flagsFor returns the global flags and the command's own, as "--name".
func (p Program) flagsFor(c *Command) (plain, valued []string) {
	add := func(fs []Flag) {
		for _, f := range fs {
			if f.Value == "" {
				plain = append(plain, dashed(f.Name))
			} else {
				valued = append(valued, dashed(f.Name))
			}
		}
	}
	add(p.Global)
	if c != nil {
		add(c.Flags)
	}
	return plain, valued
}

func (p Program) validate() error {
	if p.Name == "" || !regexp.MustCompile(`^[a-z][a-z0-9-]*$`).MatchString(p.Name) {
		return fmt.Errorf("clidoc: program name %q", p.Name)
	}
	for _, c := range p.Commands {
		for _, w := range c.Path {
			if !regexp.MustCompile(`^[a-z][a-z0-9-]*$`).MatchString(w) {
				return fmt.Errorf("clidoc: command word %q", w)
			}
		}
		for _, f := range c.Flags {
			if !regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`).MatchString(f.Name) {
				return fmt.Errorf("clidoc: flag name %q", f.Name)
			}
		}
	}
	return nil
}

// dashed is how a flag is typed: -o for a one-letter flag, --name else.
func dashed(name string) string {
	if len(name) == 1 {
		return "-" + name
	}
	return "--" + name
}
