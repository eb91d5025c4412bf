// Package diagnostics provides the "diagnostics" section: diagnostic
// bundles (a tar.gz of files, journal extracts and command output, with a
// manifest.json) collected on request and uploaded through the cloud
// connection's file upload (IoT Hub file upload to blob storage).
//
// Collectors are defined in local policy only; the twin may only request
// a run:
//
//	"diagnostics": {
//	  "collectors": {
//	    "syslog":  {"files": {"paths": ["/var/log/syslog*"]}},
//	    "agent":   {"journal": {"units": ["twinlet.service"], "lines": 2000, "since": "-1d"}},
//	    "network": {"command": {"argv": ["/usr/sbin/ip", "-j", "addr"], "timeout": "10s", "maxOutput": 65536}},
//	    "disk":    {"command": {"name": "disk-usage"}}
//	  },
//	  "maxBundleSize": 16777216,
//	  "requests": {"r42": {"uploadName": "support/case-42.tar.gz"}}
//	}
//
// A command collector either gives its argv or names a command of the
// commands section (its definitions, from local policy), run as that
// section defines it: user, working directory, environment (redacted from
// the output), timeout and output bound.
//
// Each request runs once (the runtime's Change.Once: never again, even
// after a crash in the middle). Its bundle is written to the state
// directory first and kept there until it is uploaded: a failed upload is
// a transient error, retried with the reconciler's backoff, and reported.
// The direct method diagnostics.collect {uploadName} collects and uploads
// at once.
package diagnostics

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/twinlet/twinlet/providers"
)

// ID is the section id.
const ID = "diagnostics"

// Defaults and limits.
const (
	DefaultMaxBundleSize  = 16 << 20
	MaxMaxBundleSize      = 256 << 20
	DefaultMaxPendingSize = 64 << 20
	DefaultCommandTimeout = 30 * time.Second
	DefaultMaxOutput      = 1 << 20
	DefaultJournalLines   = 5000
	maxFilesPerCollector  = 1000
	maxReportedOthers     = 5
)

// MethodSchema is the payload schema of diagnostics.collect.
var MethodSchema = json.RawMessage(`{
  "type": "object",
  "additionalProperties": false,
  "properties": {
    "uploadName": {"type": "string", "minLength": 1, "maxLength": 512, "pattern": "^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$"}
  }
}`)

func init() {
	providers.Register(providers.Info{
		ID: ID, Kind: providers.Object, New: New, Timeout: 15 * time.Minute,
		// Named command collectors run the commands section's definitions.
		ReadsDesired: []string{"commands"},
		Methods: map[string]providers.Method{
			"collect": {
				Description: "collect a diagnostic bundle with the collectors of local policy and upload it {uploadName}",
				Schema:      MethodSchema,
				Call:        collectMethod,
			},
		},
	})
}

// New returns the diagnostics provider.
func New() providers.Provider { return Provider{} }

// Provider implements the diagnostics section.
type Provider struct{}

// Collector is one source of a bundle: exactly one of Files, Journal and
// Command is set.
type Collector struct {
	Name    string
	Files   []string // device path globs (providers.MatchGlob)
	Journal *Journal
	Command *Command
}

// Journal selects journal entries.
type Journal struct {
	Units []string
	Lines int
	Since string
}

// Command is a command whose output goes into the bundle: Argv, or Name,
// a definition of the commands section.
type Command struct {
	Name      string
	Argv      []string
	Timeout   time.Duration
	MaxOutput int
}

// Request is a run asked for by the twin (or local policy).
type Request struct {
	ID         string
	UploadName string
}

// Spec is the decoded section.
type Spec struct {
	Collectors     []Collector // sorted by name
	MaxBundleSize  int64
	MaxPendingSize int64
	Requests       []Request // sorted by id
}

// The shapes of names, units and times. Counted repetitions ({1,128})
// would compile to programs of hundreds of kilobytes at start-up, so the
// lengths are checked apart.
var (
	nameRE       = charsRE{regexp.MustCompile(`^[A-Za-z0-9_-]+$`), 128}
	uploadNameRE = regexp.MustCompile(`^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$`)
	unitRE       = charsRE{regexp.MustCompile(`^[A-Za-z0-9:_.@\\-]+$`), 256}
	commandRE    = charsRE{regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`), 64} // the commands section's names
	sinceRE      = charsRE{regexp.MustCompile(`^[A-Za-z0-9 :+-]+$`), 64}
)

// charsRE matches a pattern of at most max bytes.
type charsRE struct {
	re  *regexp.Regexp
	max int
}

// MatchString reports whether s is at most max bytes and matches.
func (c charsRE) MatchString(s string) bool { return len(s) <= c.max && c.re.MatchString(s) }

type rawSection struct {
	Collectors     map[string]json.RawMessage `json:"collectors"`
	MaxBundleSize  *int64                     `json:"maxBundleSize"`
	MaxPendingSize *int64                     `json:"maxPendingSize"`
	Requests       map[string]json.RawMessage `json:"requests"`
}

func decodeStrict(raw json.RawMessage, v any) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

// Decode implements providers.Provider.
func (Provider) Decode(_ *providers.Env, raw json.RawMessage) (providers.Spec, error) {
	errs := &providers.InvalidError{}
	var in rawSection
	if err := decodeStrict(raw, &in); err != nil {
		return nil, providers.Invalid("", "%v", err)
	}
	spec := Spec{MaxBundleSize: DefaultMaxBundleSize, MaxPendingSize: DefaultMaxPendingSize}
	if in.MaxBundleSize != nil {
		if *in.MaxBundleSize < 1024 || *in.MaxBundleSize > MaxMaxBundleSize {
			errs.Add("/maxBundleSize", "must be 1024 to %d bytes", MaxMaxBundleSize)
		}
		spec.MaxBundleSize = *in.MaxBundleSize
	}
	if in.MaxPendingSize != nil {
		if *in.MaxPendingSize < 0 {
			errs.Add("/maxPendingSize", "must not be negative")
		}
		spec.MaxPendingSize = *in.MaxPendingSize
	}
	for _, name := range sortedKeys(in.Collectors) {
		c, ok := decodeCollector(name, in.Collectors[name], errs)
		if ok {
			spec.Collectors = append(spec.Collectors, c)
		}
	}
	for _, id := range sortedKeys(in.Requests) {
		ptr := providers.Pointer("requests", id)
		if !nameRE.MatchString(id) {
			errs.Add(ptr, "request ids are 1 to 128 letters, digits, '_' or '-'")
			continue
		}
		var r struct {
			UploadName string `json:"uploadName"`
		}
		if err := decodeStrict(in.Requests[id], &r); err != nil {
			errs.Add(ptr, "%v", err)
			continue
		}
		if r.UploadName != "" {
			if msg := checkUploadName(r.UploadName); msg != "" {
				errs.Add(ptr+"/uploadName", "%s", msg)
			}
		}
		spec.Requests = append(spec.Requests, Request{ID: id, UploadName: r.UploadName})
	}
	if len(spec.Requests) > 0 && len(spec.Collectors) == 0 {
		errs.Add("/collectors", "a request needs at least one collector (defined in local policy)")
	}
	if err := errs.OrNil(); err != nil {
		return nil, err
	}
	return spec, nil
}

func checkUploadName(n string) string {
	if len(n) > 512 || !uploadNameRE.MatchString(n) {
		return "1 to 512 characters: letters, digits, '.', '_', '-', segments separated by '/'"
	}
	for _, seg := range strings.Split(n, "/") {
		if seg == "." || seg == ".." {
			return "no '.' or '..' segments"
		}
	}
	return ""
}

func decodeCollector(name string, raw json.RawMessage, errs *providers.InvalidError) (Collector, bool) {
	ptr := providers.Pointer("collectors", name)
	c := Collector{Name: name}
	if !nameRE.MatchString(name) {
		errs.Add(ptr, "collector names are 1 to 128 letters, digits, '_' or '-'")
		return c, false
	}
	var in struct {
		Files *struct {
			Paths []string `json:"paths"`
		} `json:"files"`
		Journal *struct {
			Units []string `json:"units"`
			Lines *int     `json:"lines"`
			Since string   `json:"since"`
		} `json:"journal"`
		Command *struct {
			Name      string   `json:"name"`
			Argv      []string `json:"argv"`
			Timeout   string   `json:"timeout"`
			MaxOutput *int     `json:"maxOutput"`
		} `json:"command"`
	}
	if err := decodeStrict(raw, &in); err != nil {
		errs.Add(ptr, "%v", err)
		return c, false
	}
	n := 0
	before := len(errs.Errors)
	if in.Files != nil {
		n++
		if len(in.Files.Paths) == 0 {
			errs.Add(ptr+"/files/paths", "at least one path glob")
		}
		for i, p := range in.Files.Paths {
			pp := fmt.Sprintf("%s/files/paths/%d", ptr, i)
			if err := providers.CheckGlob(p); err != nil {
				errs.Add(pp, "%v", err)
			} else if !path.IsAbs(p) || path.Clean(p) != p || strings.Contains(p, "/../") {
				errs.Add(pp, "%q: an absolute, clean device path glob (like /var/log/*.log)", p)
			}
		}
		c.Files = in.Files.Paths
	}
	if in.Journal != nil {
		n++
		j := &Journal{Units: in.Journal.Units, Lines: DefaultJournalLines, Since: in.Journal.Since}
		for i, u := range j.Units {
			if !unitRE.MatchString(u) || strings.HasPrefix(u, "-") {
				errs.Add(fmt.Sprintf("%s/journal/units/%d", ptr, i), "%q is not a unit name", u)
			}
		}
		if in.Journal.Lines != nil {
			if *in.Journal.Lines < 1 || *in.Journal.Lines > 1000000 {
				errs.Add(ptr+"/journal/lines", "must be 1 to 1000000")
			}
			j.Lines = *in.Journal.Lines
		}
		if j.Since != "" && (!sinceRE.MatchString(j.Since) || strings.HasPrefix(j.Since, "--")) {
			errs.Add(ptr+"/journal/since", "%q: a journalctl time (\"-1h\", \"2026-01-02 03:04:05\", \"yesterday\")", j.Since)
		}
		c.Journal = j
	}
	if in.Command != nil {
		n++
		cmd := &Command{Name: in.Command.Name, Argv: in.Command.Argv, Timeout: DefaultCommandTimeout, MaxOutput: DefaultMaxOutput}
		switch {
		case cmd.Name != "" && len(cmd.Argv) > 0:
			errs.Add(ptr+"/command", "either argv or the name of a command of the commands section, not both")
		case cmd.Name != "":
			if !commandRE.MatchString(cmd.Name) {
				errs.Add(ptr+"/command/name", "%q is not a command name of the commands section", cmd.Name)
			}
			if in.Command.Timeout != "" {
				errs.Add(ptr+"/command/timeout", "a named command has the timeout of its definition in the commands section")
			}
			if in.Command.MaxOutput != nil {
				errs.Add(ptr+"/command/maxOutput", "a named command has the output bound of its definition in the commands section")
			}
		case len(cmd.Argv) == 0:
			errs.Add(ptr+"/command/argv", "the program and its arguments (argv, never a shell line)")
		case !path.IsAbs(cmd.Argv[0]):
			errs.Add(ptr+"/command/argv/0", "%q: an absolute program path", cmd.Argv[0])
		}
		for i, a := range cmd.Argv {
			if strings.IndexByte(a, 0) >= 0 {
				errs.Add(fmt.Sprintf("%s/command/argv/%d", ptr, i), "holds a NUL byte")
			}
		}
		if in.Command.Timeout != "" {
			d, err := time.ParseDuration(in.Command.Timeout)
			if err != nil || d <= 0 || d > time.Hour {
				errs.Add(ptr+"/command/timeout", "%q: a duration up to 1h (\"30s\")", in.Command.Timeout)
			}
			cmd.Timeout = d
		}
		if in.Command.MaxOutput != nil {
			if *in.Command.MaxOutput < 1 || *in.Command.MaxOutput > 64<<20 {
				errs.Add(ptr+"/command/maxOutput", "must be 1 to %d bytes", 64<<20)
			}
			cmd.MaxOutput = *in.Command.MaxOutput
		}
		c.Command = cmd
	}
	if n != 1 {
		errs.Add(ptr, "exactly one of files, journal and command")
	}
	return c, len(errs.Errors) == before
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// CloudScope implements providers.CloudScoper: the twin may only request
// runs. Collectors (what is read and run on the device) and the size caps
// come from local policy alone.
func (Provider) CloudScope(_ providers.ScopeRules, twin json.RawMessage) []providers.FieldError {
	var section map[string]json.RawMessage
	if json.Unmarshal(twin, &section) != nil {
		return nil
	}
	var out []providers.FieldError
	for _, k := range sortedKeys(section) {
		if k != "requests" {
			out = append(out, providers.FieldError{Pointer: providers.Pointer(k), Message: "only local policy sets " + k + "; the twin may only add requests"})
		}
	}
	return out
}

// Observed is what the provider reports.
type Observed struct {
	// Collectors are the names of the collectors in force.
	Collectors []string `json:"collectors"`
	// Requests are the requests of the section and the runs of the direct
	// method, by id.
	Requests map[string]*RunState `json:"requests,omitempty"`
	// LastUpload is the outcome of the last upload attempt.
	LastUpload *LastUpload `json:"lastUpload,omitempty"`
	// Pending counts the bundles kept in the state directory for upload.
	Pending Pending `json:"pending"`

	spec Spec
}

// Pending counts kept bundles.
type Pending struct {
	Count int   `json:"count"`
	Bytes int64 `json:"bytes"`
}

// The states of a run.
const (
	StateCollected    = "Collected"    // bundle kept, upload not yet tried
	StateUploaded     = "Uploaded"     // done
	StateUploadFailed = "UploadFailed" // bundle kept, retried with backoff
	StateDropped      = "Dropped"      // bundle removed to keep the pending cap
	StateInterrupted  = "Interrupted"  // the agent stopped while it ran; not run again
)

// Observe implements providers.Provider. It reads the provider's state
// file; it remembers the collectors in force for the direct method.
func (Provider) Observe(_ context.Context, env *providers.Env, spec providers.Spec) (providers.Observed, error) {
	s := spec.(Spec)
	remember(env, s)
	st, err := loadState(env)
	if err != nil {
		return nil, fmt.Errorf("observe diagnostics: %w", err)
	}
	o := &Observed{Collectors: []string{}, Requests: map[string]*RunState{}, LastUpload: st.LastUpload, spec: s}
	for _, c := range s.Collectors {
		o.Collectors = append(o.Collectors, c.Name)
	}
	desired := map[string]bool{}
	for _, r := range s.Requests {
		desired[r.ID] = true
	}
	// Reported: the desired requests, the kept bundles and the latest
	// few other runs (method calls, withdrawn requests), so that the
	// twin stays small.
	var others []string
	for id, r := range st.Runs {
		if r.pending() {
			o.Pending.Count++
			o.Pending.Bytes += r.Size
		}
		if desired[id] || r.pending() {
			o.Requests[id] = r
		} else {
			others = append(others, id)
		}
	}
	sort.Slice(others, func(i, j int) bool { return st.Runs[others[i]].CollectedAt.After(st.Runs[others[j]].CollectedAt) })
	for _, id := range others[:min(len(others), maxReportedOthers)] {
		o.Requests[id] = st.Runs[id]
	}
	for _, r := range s.Requests {
		if _, ok := o.Requests[r.ID]; !ok && env.Interrupted[onceKey(r.ID)] {
			o.Requests[r.ID] = &RunState{State: StateInterrupted, Source: "twin"}
		}
	}
	return o, nil
}

func onceKey(id string) string { return "requests/" + id }

// collectOp and uploadOp are the Data of the changes.
type collectOp struct{ req Request }
type uploadOp struct{ id string }

// Plan implements providers.Provider: a request never seen is collected
// and uploaded (once); a kept bundle is uploaded again.
func (Provider) Plan(spec providers.Spec, observed providers.Observed) ([]providers.Change, error) {
	s := spec.(Spec)
	o := observed.(*Observed)
	var out []providers.Change
	for _, r := range s.Requests {
		if _, seen := o.Requests[r.ID]; seen {
			continue
		}
		out = append(out, providers.Change{Action: providers.Create, Item: onceKey(r.ID), Once: true,
			After: fmt.Sprintf("collect %s, upload as %s", plural(len(s.Collectors), "collector"), uploadName(r)), Data: collectOp{r}})
	}
	for _, id := range sortedKeys(o.Requests) {
		r := o.Requests[id]
		if !r.pending() {
			continue
		}
		before := "kept " + r.State
		if r.Attempts > 0 {
			before = fmt.Sprintf("kept, %s after %s", r.State, plural(r.Attempts, "attempt"))
		}
		out = append(out, providers.Change{Action: providers.Update, Item: "uploads/" + id,
			Before: before, After: fmt.Sprintf("upload %s (%d B)", r.UploadName, r.Size), Data: uploadOp{id}})
	}
	return out, nil
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

func uploadName(r Request) string {
	if r.UploadName != "" {
		return r.UploadName
	}
	return "diagnostics-" + r.ID + ".tar.gz"
}

// Apply implements providers.Provider.
func (Provider) Apply(ctx context.Context, env *providers.Env, c providers.Change) error {
	switch op := c.Data.(type) {
	case collectOp:
		spec, ok := recalled(env)
		if !ok {
			return errors.New("diagnostics: no observed spec (a provider bug)")
		}
		// Idempotent: a request already collected is only uploaded.
		stateMu.Lock()
		st, err := loadState(env)
		stateMu.Unlock()
		if err != nil {
			return err
		}
		if _, done := st.Runs[op.req.ID]; done {
			_, err := upload(ctx, env, op.req.ID)
			return err
		}
		_, err = run(ctx, env, spec, op.req.ID, uploadName(op.req), "twin")
		return err
	case uploadOp:
		_, err := upload(ctx, env, op.id)
		return err
	}
	return fmt.Errorf("diagnostics: unknown change %T", c.Data)
}

// The spec in force per state directory, for the direct method (a method
// call gets no spec). Set by Observe, which runs before every plan.
var (
	specMu sync.Mutex
	specs  = map[string]Spec{}
)

func specKey(env *providers.Env) string { return env.StateDir + "\x00" + env.Root }

func remember(env *providers.Env, s Spec) {
	specMu.Lock()
	specs[specKey(env)] = s
	specMu.Unlock()
}

func recalled(env *providers.Env) (Spec, bool) {
	specMu.Lock()
	defer specMu.Unlock()
	s, ok := specs[specKey(env)]
	return s, ok
}

// MethodResult is the answer of diagnostics.collect.
type MethodResult struct {
	RequestID string `json:"requestId"`
	*RunState
}

func collectMethod(ctx context.Context, env *providers.Env, payload json.RawMessage) (any, error) {
	var in struct {
		UploadName string `json:"uploadName"`
	}
	if len(payload) > 0 && string(payload) != "null" {
		if err := decodeStrict(payload, &in); err != nil {
			return nil, providers.Invalid("", "%v", err)
		}
	}
	if in.UploadName != "" {
		if msg := checkUploadName(in.UploadName); msg != "" {
			return nil, providers.Invalid("/uploadName", "%s", msg)
		}
	}
	spec, ok := recalled(env)
	if !ok {
		return nil, &providers.MethodError{Status: 503, Message: "the diagnostics section has not been reconciled yet"}
	}
	if len(spec.Collectors) == 0 {
		return nil, &providers.MethodError{Status: 409, Message: "no collectors: local policy defines none in diagnostics.collectors"}
	}
	now := time.Now
	if env.Now != nil {
		now = env.Now
	}
	var rnd [3]byte
	_, _ = randRead(rnd[:])
	id := fmt.Sprintf("m%s-%x", now().UTC().Format("20060102T150405Z"), rnd)
	name := in.UploadName
	if name == "" {
		name = "diagnostics-" + id + ".tar.gz"
	}
	st, err := run(ctx, env, spec, id, name, "method")
	if err != nil {
		if st != nil && st.pending() {
			return nil, &providers.MethodError{Status: 503, Message: fmt.Sprintf("request %s: %v; the bundle is kept and its upload retried", id, err)}
		}
		return nil, err
	}
	return MethodResult{RequestID: id, RunState: st}, nil
}

// stateDirOf is where the provider keeps its state and bundles.
func stateDirOf(env *providers.Env) (string, error) {
	if env.StateDir == "" {
		return "", errors.New("diagnostics: no state directory")
	}
	d := path.Join(env.StateDir, ID)
	if err := os.MkdirAll(path.Join(d, "pending"), 0o700); err != nil {
		return "", err
	}
	return d, nil
}
