// Command twinlet is the device agent: it reconciles the device against
// local policy files and the device twin, and reports the result.
//
// The runtime does not re-read the cgroup CPU limit every second to update
// GOMAXPROCS (updatemaxprocs): an idle agent must not wake up for it.
//
//go:debug updatemaxprocs=0
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/twinlet/twinlet/internal/agent"
	"github.com/twinlet/twinlet/internal/config"
	"github.com/twinlet/twinlet/internal/memtrim"
	"github.com/twinlet/twinlet/internal/version"
	"github.com/twinlet/twinlet/providers"
	"github.com/twinlet/twinlet/reconciler"
	"github.com/twinlet/twinlet/schemas"
	"github.com/twinlet/twinlet/state"

	_ "github.com/twinlet/twinlet/providers/standard"
)

const usage = `usage: twinlet <command> [flags]

commands:
  run         reconcile, then keep reconciling on changes (the agent)
  apply       one full reconcile (--once); exit 0 when every section is Ready
  plan        print what apply would change; exit 0 nothing to do, 2 changes pending, 1 errors
  validate    check policy files: validate PATH...
  status      print the last reported state
  provision   get the device's identity from the Device Provisioning Service (DPS)
  schema      print the JSON Schemas: schema [SECTION]
  providers   built-in and external providers: providers list, providers check MANIFEST
  tpm         TPM identities: slots, keys, tokens, DPS enrollment info (tpm help)
  version     print the version
  completion  print a shell completion script: completion bash|zsh|fish
  man         print the man page (roff)

Run 'twinlet <command> -h' for the flags of a command.
`

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

// run is main without the process: tests call it.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "run", "apply", "plan":
		return runAgent(ctx, cmd, rest, stdout, stderr)
	case "validate":
		return validate(rest, stdout, stderr)
	case "provision":
		return provision(ctx, rest, stdout, stderr)
	case "status":
		return status(rest, stdout, stderr)
	case "schema":
		return schema(rest, stdout, stderr)
	case "providers":
		return providersCommand(ctx, rest, stdout, stderr)
	case "tpm":
		return tpmCommand(ctx, rest, os.Stdin, stdout, stderr)
	case "completion", "man":
		return docs(ctx, cmd, rest, stdout, stderr)
	case "version", "--version", "-v":
		fmt.Fprintf(stdout, "twinlet %s\n", version.Version)
		return 0
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "twinlet: unknown command %q\n%s", cmd, usage)
	return 2
}

// common are the flags shared by run, apply and plan.
type common struct {
	config, root, stateDir, policyDir, twinDesired, output, allowedRoots, logLevel, logFormat string
	metricsAddr, keyFile, caFile, providerDirs                                                string
	hubPort                                                                                   int
	resync, idleTrim                                                                          time.Duration
	once                                                                                      bool
}

func (c *common) register(fs *flag.FlagSet) {
	fs.StringVar(&c.config, "config", config.DefaultPath, "agent configuration file")
	fs.StringVar(&c.root, "root", "", "directory to act on (default from config, else /)")
	fs.StringVar(&c.stateDir, "state-dir", "", "state directory (default from config, else /var/lib/twinlet)")
	fs.StringVar(&c.policyDir, "policy", "", "policy directory (default from config, else /etc/twinlet/policy.d)")
	fs.StringVar(&c.twinDesired, "twin-desired", "", "JSON file read as the twin's desired properties")
	fs.StringVar(&c.output, "output", "text", "output: text or json")
	fs.StringVar(&c.allowedRoots, "allowed-roots", "", "comma-separated device paths the files provider may manage")
	fs.StringVar(&c.logLevel, "log-level", "", "debug, info, warn or error")
	fs.StringVar(&c.logFormat, "log-format", "", "text or json")
	fs.StringVar(&c.providerDirs, "provider-dirs", "", "comma-separated directories of external provider manifests (default from config, else /usr/lib/twinlet/providers.d,/etc/twinlet/providers.d)")
}

// resolve merges the configuration file under the flags that were set.
func (c *common) resolve(fs *flag.FlagSet) (config.Config, error) {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	cfg, err := config.Load(c.config, set["config"])
	if err != nil {
		return cfg, err
	}
	if set["root"] {
		cfg.Root = c.root
	}
	if set["state-dir"] {
		cfg.StateDir = c.stateDir
	}
	if set["policy"] {
		cfg.PolicyDir = c.policyDir
	}
	if set["allowed-roots"] {
		cfg.AllowedRoots = nil
		for _, r := range strings.Split(c.allowedRoots, ",") {
			if r = strings.TrimSpace(r); r != "" {
				cfg.AllowedRoots = append(cfg.AllowedRoots, r)
			}
		}
	}
	if set["log-level"] {
		cfg.Log.Level = c.logLevel
	}
	if set["provider-dirs"] {
		cfg.ProviderDirs = splitDirs(c.providerDirs)
	}
	if set["log-format"] {
		cfg.Log.Format = c.logFormat
	}
	if set["resync"] {
		cfg.Resync = c.resync
	}
	if set["idle-trim"] {
		if c.idleTrim < 0 {
			return cfg, errors.New("--idle-trim: must not be negative")
		}
		cfg.IdleTrim = c.idleTrim
	}
	if set["metrics-addr"] {
		cfg.MetricsAddr = c.metricsAddr
	}
	if set["key-file"] {
		if err := config.CheckFile(c.keyFile, true); err != nil && !errors.Is(err, os.ErrNotExist) {
			return cfg, fmt.Errorf("--key-file: %w", err)
		}
		cfg.Connection = config.Connection{KeyFile: c.keyFile, CAFile: cfg.Connection.CAFile, Port: cfg.Connection.Port, KeepAlive: cfg.Connection.KeepAlive}
	}
	if set["ca-file"] {
		cfg.Connection.CAFile = c.caFile
	}
	if set["hub-port"] {
		cfg.Connection.Port = c.hubPort
	}
	if c.output != "text" && c.output != "json" {
		return cfg, fmt.Errorf("--output: %q is not text or json", c.output)
	}
	if set["allowed-roots"] {
		for _, r := range cfg.AllowedRoots {
			if err := config.CheckAllowedRoot("", r); err != nil {
				return cfg, fmt.Errorf("--allowed-roots: %w", err)
			}
		}
	}
	if err := cfg.Check(); err != nil {
		return cfg, err
	}
	for _, p := range []*string{&cfg.Root, &cfg.StateDir, &cfg.PolicyDir} {
		if *p != "" {
			abs, err := filepath.Abs(*p)
			if err != nil {
				return cfg, err
			}
			*p = abs
		}
	}
	if err := checkAllowedRoots(cfg, set["allowed-roots"]); err != nil {
		return cfg, err
	}
	return cfg, nil
}

// checkAllowedRoots checks the allowed roots against the root they are
// used under, now that flags have set both: a flag's values are located by
// the flag, the config's by its file:line.
func checkAllowedRoots(cfg config.Config, fromFlag bool) error {
	if !fromFlag {
		return cfg.CheckAllowedRoots()
	}
	for _, r := range cfg.AllowedRoots {
		if err := config.CheckAllowedRoot(cfg.Root, r); err != nil {
			return fmt.Errorf("--allowed-roots: %w", err)
		}
	}
	return nil
}

func logger(cfg config.Config, w io.Writer) *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(cfg.Log.Level))
	opts := &slog.HandlerOptions{Level: lvl}
	if cfg.Log.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func runAgent(ctx context.Context, cmd string, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("twinlet "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c common
	c.register(fs)
	if cmd == "run" {
		fs.DurationVar(&c.resync, "resync", 5*time.Minute, "re-reconcile everything this often to heal drift")
		fs.DurationVar(&c.idleTrim, "idle-trim", 30*time.Second, "hand back unused memory this long after the last work (0s: never)")
		fs.StringVar(&c.metricsAddr, "metrics-addr", "", "serve Prometheus metrics on this address (off when empty)")
		fs.StringVar(&c.keyFile, "key-file", "", "file (mode 0600) with the device or module connection string")
		fs.StringVar(&c.caFile, "ca-file", "", "extra CA (PEM) for the hub's certificate, e.g. twinhub's")
		fs.IntVar(&c.hubPort, "hub-port", 0, "the hub's MQTT port (default 8883)")
	}
	if cmd == "apply" {
		fs.BoolVar(&c.once, "once", true, "one full reconcile, then exit")
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "twinlet %s: unexpected argument %q\n", cmd, fs.Arg(0))
		return 2
	}
	cfg, err := c.resolve(fs)
	if err != nil {
		fmt.Fprintf(stderr, "twinlet %s: %v\n", cmd, err)
		return 1
	}
	if cmd == "apply" && !c.once {
		fmt.Fprintln(stderr, "twinlet apply: only --once is supported; use 'twinlet run' for the agent")
		return 2
	}
	logw := stderr
	log := logger(cfg, logw)
	if cmd != "run" && !set(fs, "log-level") && cfg.Log.Level == "info" {
		log = logger(withLevel(cfg, "warn"), logw)
	}
	// External providers join the built-in ones; they are described (and
	// their processes started) now and stopped when the command ends.
	ext := loadExternal(ctx, cfg.ProviderDirs, log)
	defer ext.Close()
	if err := cfg.CheckExternalCloud(ext.Infos()); err != nil {
		fmt.Fprintf(stderr, "twinlet %s: %v\n", cmd, err)
		return 1
	}
	infos := append(providers.All(), ext.Infos()...)
	for i := range infos {
		if d, ok := cfg.Timeouts[infos[i].ID]; ok {
			infos[i].Timeout = d
		}
	}
	opts := reconciler.Options{
		Providers: infos,
		Root:      cfg.Root, StateDir: cfg.StateDir, PolicyDir: cfg.PolicyDir, TwinDesiredFile: c.twinDesired,
		AllowedRoots: cfg.AllowedRoots, Logger: log, Workers: cfg.Workers,
		// The cloud scope comes from the local config alone; plan
		// --twin-desired shows the same Forbidden as run and apply.
		CloudSections: cfg.Cloud.Sections, CloudRules: cfg.Cloud.Rules,
	}
	// The cloud side (run only) hooks into the reconciler's reports.
	var ag agentRef
	var metrics *agent.Metrics
	var rr *reconciler.Reconciler
	var trim *memtrim.Trimmer
	if cmd == "run" {
		trim = memtrim.New(cfg.IdleTrim, log)
		defer trim.Stop()
	}
	if cmd == "run" {
		opts.Uploader = &ag
		opts.OnReport = func(doc []byte) {
			ag.Notify(doc)
			trim.Touch()
		}
		opts.OnBusy = trim.Busy
		if cfg.MetricsAddr != "" {
			metrics = agent.NewMetrics(func() int { return rr.QueueLen() })
			opts.OnSection = metrics.ObserveSection
		}
	}
	if cmd == "plan" {
		// A dry run must not create the state directory either.
		opts.StateDir = cfg.StateDir
	}
	r, err := reconciler.New(opts)
	if err != nil {
		fmt.Fprintf(stderr, "twinlet %s: %v\n", cmd, err)
		return 1
	}
	rr = r
	switch cmd {
	case "plan":
		rep := r.ReconcileAll(ctx, true)
		if c.output == "json" {
			writeJSON(stdout, reconciler.PlanDocument(rep))
		} else {
			reconciler.RenderPlan(stdout, rep)
		}
		switch {
		case hasInvalid(rep):
			return 1
		case rep.Pending() > 0:
			return 2
		}
		return 0
	case "apply":
		rep := r.ReconcileAll(ctx, false)
		if c.output == "json" {
			var v any
			_ = json.Unmarshal(rep.Document, &v)
			writeJSON(stdout, v)
		} else {
			reconciler.RenderSummary(stdout, rep)
		}
		if rep.AllReady() {
			return 0
		}
		return 1
	}
	// run
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	reload, hupDone := forwardHUP(ctx)
	defer func() { stop(); <-hupDone }()
	runCloud, err := cloud(cfg, r, &ag, metrics, trim.AfterWake, log)
	if err != nil {
		fmt.Fprintf(stderr, "twinlet run: %v\n", err)
		return 1
	}
	log.Info("twinlet running", "version", version.Version, "root", cfg.Root, "policy", cfg.PolicyDir, "state", cfg.StateDir)
	cloudDone := make(chan struct{})
	go func() { defer close(cloudDone); runCloud(ctx) }()
	lowerGC()
	err = r.Run(ctx, reconciler.RunOptions{Resync: cfg.Resync, Reload: reload})
	<-cloudDone
	if err != nil {
		fmt.Fprintf(stderr, "twinlet run: %v\n", err)
		return 1
	}
	log.Info("twinlet stopped")
	return 0
}

// idleGCPercent is the agent's GOGC unless the environment sets one: the
// agent idles far more than it works, so a smaller heap is worth a few
// more collections while it works.
const idleGCPercent = 50

// lowerGC lowers the GC target of the long-running agent. What start-up
// needed (schema compilation, the first full observation) goes back to
// the system with the trim that follows every burst of work (memtrim,
// the config's idleTrim).
func lowerGC() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(idleGCPercent)
	}
}

// forwardHUP turns SIGHUP into reload requests (coalesced) until ctx
// ends; done is closed when its goroutine has stopped.
func forwardHUP(ctx context.Context) (reload <-chan struct{}, done <-chan struct{}) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	out := make(chan struct{}, 1)
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		defer signal.Stop(hup)
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				select {
				case out <- struct{}{}:
				default:
				}
			}
		}
	}()
	return out, stopped
}

func set(fs *flag.FlagSet, name string) bool {
	found := false
	fs.Visit(func(f *flag.Flag) {
		if f.Name == name {
			found = true
		}
	})
	return found
}

func withLevel(cfg config.Config, lvl string) config.Config {
	cfg.Log.Level = lvl
	return cfg
}

func hasInvalid(rep *reconciler.Report) bool {
	if len(rep.PolicyProblems) > 0 {
		return true
	}
	for _, s := range rep.Sections {
		if len(s.Errors) > 0 || s.Status.State == reconciler.StateFailed {
			return true
		}
	}
	return false
}

func writeJSON(w io.Writer, v any) {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func status(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("twinlet status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", config.DefaultPath, "agent configuration file")
	stateDir := fs.String("state-dir", "", "state directory (default from config)")
	output := fs.String("output", "text", "text or json")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cfg, err := config.Load(*cfgPath, set(fs, "config"))
	if err != nil {
		fmt.Fprintf(stderr, "twinlet status: %v\n", err)
		return 1
	}
	if *stateDir != "" {
		cfg.StateDir = *stateDir
	}
	path := filepath.Join(cfg.StateDir, state.ReportedFile)
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			fmt.Fprintf(stderr, "twinlet status: no reported state at %s yet (has the agent run?)\n", path)
		} else {
			fmt.Fprintf(stderr, "twinlet status: %v\n", err)
		}
		return 1
	}
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(data, &doc); err != nil {
		fmt.Fprintf(stderr, "twinlet status: %s: %v\n", path, err)
		return 1
	}
	if *output == "json" {
		stdout.Write(data)
		return 0
	}
	statuses := sectionStatuses(doc)
	ids := slices.Sorted(maps.Keys(statuses))
	fmt.Fprintf(stdout, "%-14s %-11s %-18s %-22s %s\n", "SECTION", "STATE", "REASON", "SINCE", "MESSAGE")
	for _, id := range ids {
		st := statuses[id]
		fmt.Fprintf(stdout, "%-14s %-11s %-18s %-22s %s\n", id, st.State, st.Reason, st.LastTransitionTime, st.Message)
	}
	var sum reconciler.Summary
	_ = json.Unmarshal(doc["__summary"], &sum)
	fmt.Fprintf(stdout, "summary: %s, %d ready, %d failed", sum.State, sum.Ready, sum.Failed)
	if sum.FailedSections != "" {
		fmt.Fprintf(stdout, " (%s)", sum.FailedSections)
	}
	fmt.Fprintf(stdout, ", last change %s\n", sum.LastReconcile)
	if sum.State != reconciler.StateReady {
		return 1
	}
	return 0
}

func schema(args []string, stdout, stderr io.Writer) int {
	if len(args) > 1 {
		fmt.Fprintln(stderr, "usage: twinlet schema [SECTION]")
		return 2
	}
	if len(args) == 0 {
		fmt.Fprintln(stdout, "{")
		ids := schemas.IDs()
		for i, id := range ids {
			raw, _ := schemas.Raw(id)
			fmt.Fprintf(stdout, "%q: %s", id, strings.TrimSpace(string(raw)))
			if i < len(ids)-1 {
				fmt.Fprint(stdout, ",")
			}
			fmt.Fprintln(stdout)
		}
		fmt.Fprintln(stdout, "}")
		return 0
	}
	raw, ok := schemas.Raw(args[0])
	if !ok {
		fmt.Fprintf(stderr, "twinlet schema: no schema %q (have: %s)\n", args[0], strings.Join(schemas.IDs(), ", "))
		return 1
	}
	stdout.Write(raw)
	return 0
}
