// Package commands provides the "commands" section: named commands that
// only local policy defines, and runs of them by name, each at most once,
// asked for by the twin (the section's runs) or by the direct method
// commands.run.
//
//	commands:
//	  definitions:            # local policy only; from the twin: Forbidden
//	    disk-usage:
//	      argv: [df, -h]
//	      user: nobody
//	      timeout: 30s
//	  cloudAllow: ["disk-*"]  # names runs and commands.run may ask for
//	  runs:                   # usually from the twin
//	    req-0042: { name: disk-usage }
//
// A run is identified by its commandId (the key under runs, or the
// method's commandId): an id is run at most once, ever. Before its process
// starts the run is recorded in <state>/commands/results.json (atomic,
// fsync'd); a record that exists is never run again, and a Running record
// whose agent process is gone (a kill -9, a crash, a reboot) is reported
// Interrupted. Twin runs are also Once changes of the runtime, so a kill
// between the runtime's in-flight record and ours is Interrupted too.
//
// Processes never go through a shell: argv is executed directly, in a
// process group of its own, as the named user of <root>/etc/passwd, with
// a clean environment, and the group is killed on timeout.
package commands

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/twinlet/twinlet/providers"
)

// ID is the section id.
const ID = "commands"

// Defaults of the section's results settings.
const (
	DefaultReport       = 10
	DefaultReportOutput = 512
	// MaxWait is the longest timeout of a command that commands.run runs
	// with wait: true, IoT Hub's longest direct-method response timeout.
	MaxWait = 300 * time.Second
)

// callTimeout bounds a provider call: longer than any command may run.
const callTimeout = MaxTimeout + 5*time.Minute

func init() {
	providers.Register(providers.Info{ID: ID, Kind: providers.Object, New: New, Timeout: callTimeout,
		Methods: map[string]providers.Method{
			"run": {Description: "run a command defined in local policy by name, once per commandId", Schema: runSchema, Call: callRun},
			"get": {Description: "the full recorded result of a commandId", Schema: getSchema, Call: callGet},
		}})
}

var (
	runSchema = json.RawMessage(`{"type": "object", "additionalProperties": false, "required": ["name", "commandId"],
 "properties": {
  "name": {"description": "the name of a command defined in local policy", "type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"},
  "commandId": {"description": "identifies this run: an id already used is refused (409)", "type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"},
  "wait": {"description": "run now and answer with the result (for commands whose timeout is at most 300 s); without it the run is accepted and started by the agent's loop", "type": "boolean"}}}`)
	getSchema = json.RawMessage(`{"type": "object", "additionalProperties": false, "required": ["commandId"],
 "properties": {"commandId": {"type": "string", "minLength": 1, "maxLength": 128}}}`)
)

// New returns the commands provider.
func New() providers.Provider { return Provider{} }

// Provider implements the commands section.
type Provider struct{}

// Spec is the decoded section.
type Spec struct {
	Defs         map[string]Def
	Runs         map[string]string // commandId → name
	CloudAllow   []string          // nil: every defined name
	Keep         int
	Report       int
	ReportOutput int
}

// allowed reports whether the twin and commands.run may ask for name.
func (s *Spec) allowed(name string) bool {
	if s.CloudAllow == nil {
		return true
	}
	for _, g := range s.CloudAllow {
		if providers.MatchGlob(g, name, '/') {
			return true
		}
	}
	return false
}

type rawDef struct {
	Argv       []string          `json:"argv"`
	User       string            `json:"user"`
	WorkingDir string            `json:"workingDir"`
	Timeout    string            `json:"timeout"`
	Env        map[string]string `json:"env"`
	MaxOutput  int               `json:"maxOutput"`
	Chroot     bool              `json:"chroot"`
}

type rawSection struct {
	Definitions map[string]json.RawMessage `json:"definitions"`
	Runs        map[string]struct {
		Name string `json:"name"`
	} `json:"runs"`
	CloudAllow *[]string `json:"cloudAllow"`
	Results    struct {
		Keep         int  `json:"keep"`
		Report       *int `json:"report"`
		ReportOutput *int `json:"reportOutput"`
	} `json:"results"`
}

var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

func ptr(parts ...string) string {
	r := strings.NewReplacer("~", "~0", "/", "~1")
	var b strings.Builder
	for _, p := range parts {
		b.WriteString("/" + r.Replace(p))
	}
	return b.String()
}

// Decode implements providers.Provider. It checks what the schema cannot:
// timeouts in range, a working directory that is a clean absolute path,
// globs that compile, environment names.
func (Provider) Decode(env *providers.Env, raw json.RawMessage) (providers.Spec, error) {
	return decode(raw)
}

func decode(raw json.RawMessage) (*Spec, error) {
	var rs rawSection
	if err := json.Unmarshal(raw, &rs); err != nil {
		return nil, providers.Invalid("", "%v", err)
	}
	errs := &providers.InvalidError{}
	spec := &Spec{Defs: map[string]Def{}, Runs: map[string]string{}, Keep: rs.Results.Keep,
		Report: DefaultReport, ReportOutput: DefaultReportOutput}
	if rs.Results.Report != nil {
		spec.Report = *rs.Results.Report
	}
	if rs.Results.ReportOutput != nil {
		spec.ReportOutput = *rs.Results.ReportOutput
	}
	names := sortedKeys(rs.Definitions)
	for _, name := range names {
		var rd rawDef
		if err := json.Unmarshal(rs.Definitions[name], &rd); err != nil {
			errs.Add(ptr("definitions", name), "%v", err)
			continue
		}
		d := Def{Name: name, Argv: rd.Argv, User: rd.User, WorkingDir: rd.WorkingDir, Env: rd.Env, MaxOutput: rd.MaxOutput, Chroot: rd.Chroot}
		if rd.Timeout != "" {
			t, err := time.ParseDuration(rd.Timeout)
			switch {
			case err != nil:
				errs.Add(ptr("definitions", name, "timeout"), "not a duration: %v", err)
			case t < time.Second || t > MaxTimeout:
				errs.Add(ptr("definitions", name, "timeout"), "%v is outside 1s…%v", t, MaxTimeout)
			}
			d.Timeout = t
		}
		if d.WorkingDir != "" && (!strings.HasPrefix(d.WorkingDir, "/") || cleanPath(d.WorkingDir) != d.WorkingDir) {
			errs.Add(ptr("definitions", name, "workingDir"), "%q is not a clean absolute path", d.WorkingDir)
		}
		if p := d.Argv; len(p) > 0 && strings.Contains(p[0], "/") && !strings.HasPrefix(p[0], "/") {
			errs.Add(ptr("definitions", name, "argv", "0"), "%q: the program is an absolute path or a bare name searched in PATH", p[0])
		}
		for _, k := range sortedKeys(d.Env) {
			if !envName.MatchString(k) {
				errs.Add(ptr("definitions", name, "env", k), "%q is not an environment variable name", k)
			}
		}
		spec.Defs[name] = d
	}
	if rs.CloudAllow != nil {
		spec.CloudAllow = append([]string{}, *rs.CloudAllow...)
		for i, g := range spec.CloudAllow {
			if err := providers.CheckGlob(g); err != nil {
				errs.Add(fmt.Sprintf("/cloudAllow/%d", i), "%v", err)
			}
		}
	}
	for id, r := range rs.Runs {
		spec.Runs[id] = r.Name
	}
	return spec, errs.OrNil()
}

func cleanPath(p string) string {
	parts := []string{}
	for _, c := range strings.Split(p, "/") {
		switch c {
		case "", ".":
		case "..":
			return ""
		default:
			parts = append(parts, c)
		}
	}
	return "/" + strings.Join(parts, "/")
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Observed is what the section reports: the defined names, and the most
// recent runs (and every run the section asks for) by commandId.
type Observed struct {
	Definitions []string             `json:"definitions"`
	Runs        map[string]RunReport `json:"runs"`

	known   map[string]bool // every commandId ever used or interrupted
	pending []*Record       // commands.run requests to start
}

// RunReport is one run as reported to the twin: the tails are cut to the
// section's reportOutput, and shown only for its report most recent runs
// (commands.get returns the whole kept tails).
type RunReport struct {
	Name       string `json:"name,omitempty"`
	Origin     string `json:"origin,omitempty"`
	State      string `json:"state"`
	ExitCode   *int   `json:"exitCode,omitempty"`
	Signal     string `json:"signal,omitempty"`
	Stdout     string `json:"stdout,omitempty"`
	Stderr     string `json:"stderr,omitempty"`
	StartTime  string `json:"startTime,omitempty"`
	DurationMs *int64 `json:"durationMs,omitempty"`
	Error      string `json:"error,omitempty"`
}

// Observe implements providers.Provider: it reads the results file (never
// writes it), and reports interrupted runs as such.
func (Provider) Observe(ctx context.Context, env *providers.Env, spec providers.Spec) (providers.Observed, error) {
	s := spec.(*Spec)
	doc, err := newStore(env.StateDir, s.Keep).load()
	if err != nil {
		return nil, err
	}
	o := &Observed{Definitions: sortedKeys(s.Defs), Runs: map[string]RunReport{}, known: map[string]bool{}}
	for _, sid := range doc.Seen {
		o.known[sid.CommandID] = true
		if _, asked := s.Runs[sid.CommandID]; asked {
			o.Runs[sid.CommandID] = RunReport{State: sid.State, Error: "the result is no longer kept (results.keep)"}
		}
	}
	now := time.Now().UTC()
	recent := map[string]bool{}
	for i := len(doc.Results) - 1; i >= 0 && len(recent) < s.Report; i-- {
		recent[doc.Results[i].CommandID] = true
	}
	for _, r := range doc.Results {
		o.known[r.CommandID] = true
		r := *r
		if r.State == Running && !r.Owner.alive() || r.State == Pending && env.Interrupted[r.CommandID] {
			markInterrupted(&r, now)
		}
		if r.State == Pending {
			o.pending = append(o.pending, &r)
		}
		if _, asked := s.Runs[r.CommandID]; asked || recent[r.CommandID] || r.State == Running || r.State == Pending {
			// Tails only for the most recent: the twin's document is small.
			n := 0
			if recent[r.CommandID] {
				n = s.ReportOutput
			}
			o.Runs[r.CommandID] = report(&r, n)
		}
	}
	for id := range env.Interrupted {
		o.known[id] = true
		if _, ok := o.Runs[id]; !ok {
			o.Runs[id] = RunReport{Name: s.Runs[id], State: Interrupted, Error: "the agent stopped before or while the command started; it is not run again"}
		}
	}
	return o, nil
}

func report(r *Record, n int) RunReport {
	rr := RunReport{Name: r.Name, Origin: r.Origin, State: r.State, ExitCode: r.ExitCode, Signal: r.Signal,
		Stdout: cut(r.Stdout, n), Stderr: cut(r.Stderr, n), DurationMs: r.DurationMs, Error: r.Error}
	if !r.StartTime.IsZero() {
		rr.StartTime = r.StartTime.Format(time.RFC3339Nano)
	}
	return rr
}

// cut keeps the last n bytes of s, from a rune start.
func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[len(s)-n:]
	for len(s) > 0 && s[0]&0xC0 == 0x80 {
		s = s[1:]
	}
	return s
}

// runData is what Apply needs for a run.
type runData struct {
	id, origin string
	def        Def
	keep       int
	missing    string // the name, when no definition has it any more
}

// Plan implements providers.Provider: a run of each commandId of runs
// that was never used, and of each commands.run request still Pending. A
// run whose name is not defined, or that cloudAllow does not allow, is
// invalid input located at its name.
func (Provider) Plan(spec providers.Spec, observed providers.Observed) ([]providers.Change, error) {
	s, o := spec.(*Spec), observed.(*Observed)
	var out []providers.Change
	errs := &providers.InvalidError{}
	for _, id := range sortedKeys(s.Runs) {
		if o.known[id] {
			continue
		}
		name := s.Runs[id]
		def, ok := s.Defs[name]
		switch {
		case !ok:
			errs.Add(ptr("runs", id, "name"), "no command named %q is defined in local policy (defined: %s)", name, strings.Join(o.Definitions, ", "))
			continue
		case !s.allowed(name):
			errs.Add(ptr("runs", id, "name"), "command %q is not allowed by cloudAllow %q", name, s.CloudAllow)
			continue
		}
		out = append(out, change(id, "twin", def, "", s.Keep))
	}
	if err := errs.OrNil(); err != nil {
		return nil, err
	}
	for _, r := range o.pending {
		def, ok := s.Defs[r.Name]
		missing := ""
		if !ok {
			missing = r.Name
		}
		def.Name = r.Name
		out = append(out, change(r.CommandID, "method", def, missing, s.Keep))
	}
	return out, nil
}

func change(id, origin string, def Def, missing string, keep int) providers.Change {
	after := "run " + def.Name
	if def.User != "" {
		after += " as " + def.User
	}
	if missing == "" {
		after += fmt.Sprintf(": %s, timeout %v", def.Argv[0], or(def.Timeout, DefaultTimeout))
	} else {
		after += ": no longer defined, recorded Failed"
	}
	if origin == "method" {
		after += " (commands.run)"
	}
	return providers.Change{Action: providers.Create, Item: "runs/" + id, Key: id, Once: true, After: after,
		Data: runData{id: id, origin: origin, def: def, missing: missing, keep: keep}}
}

func or[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// Apply implements providers.Provider: it records the run as Running
// (before the process exists), runs it, and records its result. A
// commandId with a record already is not run. A command's own failure is
// its result, not an error of Apply.
func (Provider) Apply(ctx context.Context, env *providers.Env, c providers.Change) error {
	d := c.Data.(runData)
	_, err := execute(ctx, env, newStore(env.StateDir, d.keep), d)
	if errors.Is(err, errSeen) {
		return nil
	}
	return err
}

// execute records, runs and records the result of one run.
func execute(ctx context.Context, env *providers.Env, st *store, d runData) (*Record, error) {
	now := time.Now
	if env.Now != nil {
		now = env.Now
	}
	rec := &Record{CommandID: d.id, Name: d.def.Name, Origin: d.origin, Result: Result{State: Running, StartTime: now().UTC()}}
	if err := st.start(rec); err != nil {
		return nil, err
	}
	var res Result
	if d.missing != "" {
		res = Result{State: Failed, StartTime: rec.StartTime, Error: fmt.Sprintf("no command named %q is defined in local policy any more", d.missing)}
	} else {
		if env.Logger != nil {
			env.Logger.Info("run command", "commandId", d.id, "name", d.def.Name, "origin", d.origin)
		}
		res = Run(ctx, env, d.def, nil)
	}
	// The result is written even when ctx ended (a shutdown): it is short.
	if err := st.finish(d.id, res); err != nil {
		return nil, err
	}
	if env.Logger != nil {
		env.Logger.Info("command ended", "commandId", d.id, "name", d.def.Name, "state", res.State, "durationMs", res.Duration.Milliseconds())
	}
	rec.Result = res
	dur := res.Duration.Milliseconds()
	rec.DurationMs, rec.Owner = &dur, nil
	return rec, nil
}

// CloudScope implements providers.CloudScoper: the twin may not define or
// change definitions, cloudAllow or results (local policy only); its runs
// may ask only for names the agent config's cloud scope allows (globs on
// the name; cloudAllow of local policy is checked when planning).
func (Provider) CloudScope(rules providers.ScopeRules, twin json.RawMessage) []providers.FieldError {
	var sec map[string]json.RawMessage
	if json.Unmarshal(twin, &sec) != nil {
		return nil
	}
	var out []providers.FieldError
	for _, k := range []string{"definitions", "cloudAllow", "results"} {
		v, ok := sec[k]
		if !ok {
			continue
		}
		var items map[string]json.RawMessage
		if k == "definitions" && json.Unmarshal(v, &items) == nil && len(items) > 0 {
			for _, name := range sortedKeys(items) {
				out = append(out, providers.FieldError{Pointer: ptr(k, name),
					Message: "only local policy defines commands; the twin may run them by name under runs"})
			}
			continue
		}
		out = append(out, providers.FieldError{Pointer: ptr(k), Message: "only local policy sets " + k})
	}
	var runs map[string]struct {
		Name string `json:"name"`
	}
	if json.Unmarshal(sec["runs"], &runs) == nil {
		for _, id := range sortedKeys(runs) {
			if why, no := rules.Forbids(runs[id].Name, '/'); no {
				out = append(out, providers.FieldError{Pointer: ptr("runs", id, "name"), Message: why})
			}
		}
	}
	return out
}

// methodSpec decodes the section's last good desired for a method.
func methodSpec(env *providers.Env) (*Spec, error) {
	if env.Desired == nil {
		return nil, &providers.MethodError{Status: 404, Message: "no commands are defined: local policy has no commands section"}
	}
	spec, err := decode(env.Desired)
	if err != nil {
		return nil, fmt.Errorf("commands: the last good section does not decode: %w", err)
	}
	return spec, nil
}

// RunResponse is the answer of commands.run without wait.
type RunResponse struct {
	CommandID string `json:"commandId"`
	Name      string `json:"name"`
	State     string `json:"state"`
	Accepted  bool   `json:"accepted"`
	Message   string `json:"message"`
}

func callRun(ctx context.Context, env *providers.Env, payload json.RawMessage) (any, error) {
	var arg struct {
		Name      string `json:"name"`
		CommandID string `json:"commandId"`
		Wait      bool   `json:"wait"`
	}
	if err := json.Unmarshal(payload, &arg); err != nil {
		return nil, providers.Invalid("", "%v", err)
	}
	spec, err := methodSpec(env)
	if err != nil {
		return nil, err
	}
	def, ok := spec.Defs[arg.Name]
	if !ok {
		return nil, &providers.MethodError{Status: 404, Message: fmt.Sprintf("no command named %q is defined in local policy (defined: %s)", arg.Name, strings.Join(sortedKeys(spec.Defs), ", "))}
	}
	if !spec.allowed(arg.Name) {
		return nil, &providers.MethodError{Status: 403, Message: fmt.Sprintf("command %q is not allowed by cloudAllow %q", arg.Name, spec.CloudAllow)}
	}
	if arg.Wait && or(def.Timeout, DefaultTimeout) > MaxWait {
		return nil, providers.Invalid("/wait", "command %q may run %v, longer than a direct method can wait (%v): call without wait and read the result from the twin or commands.get", arg.Name, or(def.Timeout, DefaultTimeout), MaxWait)
	}
	st := newStore(env.StateDir, spec.Keep)
	if arg.Wait {
		rec, err := execute(ctx, env, st, runData{id: arg.CommandID, origin: "method", def: def})
		if errors.Is(err, errSeen) {
			return nil, seen(arg.CommandID)
		}
		if err != nil {
			return nil, err
		}
		return rec, nil
	}
	now := time.Now
	if env.Now != nil {
		now = env.Now
	}
	t := now().UTC()
	err = st.claim(&Record{CommandID: arg.CommandID, Name: arg.Name, Origin: "method", Result: Result{State: Pending}, RequestTime: &t})
	if errors.Is(err, errSeen) {
		return nil, seen(arg.CommandID)
	}
	if err != nil {
		return nil, err
	}
	return RunResponse{CommandID: arg.CommandID, Name: arg.Name, State: Pending, Accepted: true,
		Message: "accepted: the agent runs it next and reports it under commands.runs; commands.get returns the result"}, nil
}

func seen(id string) error {
	return &providers.MethodError{Status: 409, Message: fmt.Sprintf("commandId %q was used already; it is never run again (commands.get shows its result)", id)}
}

func callGet(ctx context.Context, env *providers.Env, payload json.RawMessage) (any, error) {
	var arg struct {
		CommandID string `json:"commandId"`
	}
	if err := json.Unmarshal(payload, &arg); err != nil {
		return nil, providers.Invalid("", "%v", err)
	}
	doc, err := newStore(env.StateDir, 0).load()
	if err != nil {
		return nil, err
	}
	r, used := doc.find(arg.CommandID)
	if r == nil {
		if used || env.Interrupted[arg.CommandID] {
			return nil, &providers.MethodError{Status: 410, Message: fmt.Sprintf("commandId %q was used, its result is no longer kept", arg.CommandID)}
		}
		return nil, &providers.MethodError{Status: 404, Message: fmt.Sprintf("no run with commandId %q", arg.CommandID)}
	}
	c := *r
	if c.State == Running && !c.Owner.alive() {
		markInterrupted(&c, time.Now().UTC())
	}
	c.Owner = nil
	return &c, nil
}

// Definition returns the command called name of a commands section given
// as its JSON value: the section's last good desired, as
// Env.SectionDesired hands it to the providers that read it (diagnostics
// collects the output of named commands). Definitions come from local
// policy only (the cloud scope forbids them from the twin). Run it with
// Run; no record is kept of such a run.
func Definition(section json.RawMessage, name string) (Def, error) {
	spec, err := decode(section)
	if err != nil {
		return Def{}, fmt.Errorf("the commands section does not decode: %w", err)
	}
	d, ok := spec.Defs[name]
	if !ok {
		defined := "none"
		if len(spec.Defs) > 0 {
			defined = strings.Join(sortedKeys(spec.Defs), ", ")
		}
		return Def{}, fmt.Errorf("no command %q in the commands section (defined: %s)", name, defined)
	}
	return d, nil
}
