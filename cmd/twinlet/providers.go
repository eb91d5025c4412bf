package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/twinlet/twinlet/internal/config"
	"github.com/twinlet/twinlet/internal/extprov"
	"github.com/twinlet/twinlet/internal/version"
	"github.com/twinlet/twinlet/providers"
	"github.com/twinlet/twinlet/reconciler"
	"github.com/twinlet/twinlet/state"
)

const providersUsage = `usage: twinlet providers <command> [flags]

commands:
  list                 the built-in and external providers: version, source, state, and
                       their section's last status as the agent reported it (state dir)
  check MANIFEST       start an external provider, describe it, check its schema, run a no-op observe

list exits 0, or 1 when a manifest was refused (the reason is in its row).
check exits 0 when every step passed, 1 when one failed, 2 on a usage error.
`

// loadExternal reads the external providers' manifests and starts each
// once to describe it. The caller closes the Host. Refused manifests are
// logged with their location; the rest starts.
func loadExternal(ctx context.Context, dirs []string, log *slog.Logger) *extprov.Host {
	h := extprov.Load(ctx, extprov.Options{
		Dirs:         dirs,
		Builtin:      func(id string) bool { _, ok := providers.Lookup(id); return ok },
		Logger:       log,
		AgentVersion: version.Version,
	})
	for _, p := range h.Problems() {
		log.Error("external provider refused", "at", p.Pos, "section", p.Section, "err", p.Message)
	}
	return h
}

// splitDirs reads --provider-dirs: comma-separated, "" for none.
func splitDirs(s string) []string {
	out := []string{}
	for _, d := range strings.Split(s, ",") {
		if d = strings.TrimSpace(d); d != "" {
			out = append(out, d)
		}
	}
	return out
}

func providersCommand(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, providersUsage)
		return 2
	}
	switch args[0] {
	case "list":
		return providersList(ctx, args[1:], stdout, stderr)
	case "check":
		return providersCheck(ctx, args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, providersUsage)
		return 0
	}
	fmt.Fprintf(stderr, "twinlet providers: unknown command %q\n%s", args[0], providersUsage)
	return 2
}

// providerDirsFlags are the flags that say where manifests are and where
// the agent reports its sections' status.
type providerDirsFlags struct {
	config, dirs, output, stateDir string
}

func (f *providerDirsFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.config, "config", config.DefaultPath, "agent configuration file (for providerDirs and stateDir)")
	fs.StringVar(&f.dirs, "provider-dirs", "", "comma-separated manifest directories (default from config, else /usr/lib/twinlet/providers.d,/etc/twinlet/providers.d)")
	fs.StringVar(&f.stateDir, "state-dir", "", "state directory whose reported.json gives each section's last status (default from config)")
	fs.StringVar(&f.output, "output", "text", "output: text or json")
}

// resolve returns the manifest directories and the state directory. The
// config is needed only for what the flags leave out; when the manifest
// directories come from a flag, a config that cannot be read only leaves
// the status out.
func (f *providerDirsFlags) resolve(fs *flag.FlagSet) (dirs []string, stateDir string, err error) {
	if f.output != "text" && f.output != "json" {
		return nil, "", fmt.Errorf("--output: %q is not text or json", f.output)
	}
	dirsSet, stateSet := set(fs, "provider-dirs"), set(fs, "state-dir")
	dirs, stateDir = splitDirs(f.dirs), f.stateDir
	if dirsSet && stateSet {
		return dirs, stateDir, nil
	}
	cfg, err := config.Load(f.config, set(fs, "config"))
	switch {
	case err != nil && !dirsSet:
		return nil, "", err
	case err != nil:
		return dirs, stateDir, nil
	}
	if !dirsSet {
		dirs = cfg.ProviderDirs
	}
	if !stateSet {
		stateDir = cfg.StateDir
	}
	return dirs, stateDir, nil
}

// providerRow is one line of `twinlet providers list`.
type providerRow struct {
	Section string `json:"section"`
	Version string `json:"version"`
	Source  string `json:"source"`
	// State is the provider's: ok, or refused with the reason in Message.
	State   string `json:"state"`
	Message string `json:"message,omitempty"`
	// Status is the section's last status in the agent's reported.json
	// (a crashed provider's section is Failed/ProviderCrashed there);
	// absent when the agent has not reported the section.
	Status *sectionStatus `json:"status,omitempty"`
}

// sectionStatus is a section's __status as the agent last reported it.
type sectionStatus struct {
	State   string `json:"state"`
	Reason  string `json:"reason"`
	Message string `json:"message,omitempty"`
	Since   string `json:"since,omitempty"`
}

func (s *sectionStatus) String() string {
	if s == nil {
		return "-"
	}
	return s.State + "/" + s.Reason
}

// reportedStatuses reads each section's __status from the reported
// document in stateDir; none when it does not exist or cannot be read
// (the list is still useful without it).
func reportedStatuses(stateDir string) map[string]*sectionStatus {
	out := map[string]*sectionStatus{}
	if stateDir == "" {
		return out
	}
	data, err := os.ReadFile(filepath.Join(stateDir, state.ReportedFile))
	if err != nil {
		return out
	}
	var doc map[string]json.RawMessage
	if json.Unmarshal(data, &doc) != nil {
		return out
	}
	for id, st := range sectionStatuses(doc) {
		if st.State != "" {
			out[id] = &sectionStatus{State: st.State, Reason: st.Reason, Message: st.Message, Since: st.LastTransitionTime}
		}
	}
	return out
}

// sectionStatuses are the __status of every section of a reported
// document (reported.json), zero where a section has none.
func sectionStatuses(doc map[string]json.RawMessage) map[string]reconciler.Status {
	out := map[string]reconciler.Status{}
	for id, raw := range doc {
		if strings.HasPrefix(id, "__") {
			continue
		}
		var sec struct {
			Status reconciler.Status `json:"__status"`
		}
		_ = json.Unmarshal(raw, &sec)
		out[id] = sec.Status
	}
	return out
}

func providersList(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("twinlet providers list", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var f providerDirsFlags
	f.register(fs)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "twinlet providers list: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	dirs, stateDir, err := f.resolve(fs)
	if err != nil {
		fmt.Fprintf(stderr, "twinlet providers list: %v\n", err)
		return 1
	}
	h := loadExternal(ctx, dirs, slog.New(slog.DiscardHandler))
	defer h.Close()
	reported := reportedStatuses(stateDir)
	var rows []providerRow
	for _, info := range providers.All() {
		rows = append(rows, providerRow{Section: info.ID, Version: version.Version, Source: "built-in", State: "ok", Status: reported[info.ID]})
	}
	for _, s := range h.List() {
		row := providerRow{Section: s.Section, Version: s.Version, Source: s.Manifest, State: s.State, Message: s.Message, Status: reported[s.Section]}
		if s.State == "running" || s.State == "stopped" {
			row.State = "ok" // described; the agent starts it on use
		}
		if row.Section == "" {
			row.Section = "-"
		}
		rows = append(rows, row)
	}
	if f.output == "json" {
		writeJSON(stdout, rows)
	} else {
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SECTION\tVERSION\tSOURCE\tSTATE\tSTATUS\tMESSAGE")
		for _, r := range rows {
			msg := r.Message
			if msg == "" && r.Status != nil && r.Status.State != reconciler.StateReady {
				msg = r.Status.Message
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.Section, orDash(r.Version), r.Source, r.State, r.Status, msg)
		}
		tw.Flush()
	}
	if len(h.Problems()) > 0 {
		return 1
	}
	return 0
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func providersCheck(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("twinlet providers check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	root := fs.String("root", "/", "directory the no-op observe reads")
	output := fs.String("output", "text", "output: text or json")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(stderr, "usage: twinlet providers check [--root DIR] [--output text|json] MANIFEST")
		return 2
	}
	if *output != "text" && *output != "json" {
		fmt.Fprintf(stderr, "twinlet providers check: --output: %q is not text or json\n", *output)
		return 2
	}
	env := &providers.Env{Root: *root, Runner: providers.ExecRunner{}, Logger: slog.New(slog.DiscardHandler), Managed: map[string]bool{}}
	steps, ok := extprov.Check(ctx, fs.Arg(0), extprov.Options{
		Builtin:      func(id string) bool { _, ok := providers.Lookup(id); return ok },
		AgentVersion: version.Version,
	}, env)
	if *output == "json" {
		writeJSON(stdout, map[string]any{"manifest": fs.Arg(0), "ok": ok, "steps": steps})
	} else {
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		for _, s := range steps {
			mark := "ok"
			switch {
			case s.Skipped:
				mark = "skipped"
			case !s.OK:
				mark = "FAILED"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\n", s.Name, mark, s.Message)
		}
		tw.Flush()
	}
	if !ok {
		return 1
	}
	return 0
}
