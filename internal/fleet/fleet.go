// Package fleet reads a fleet repository: YAML documents of kind
// FleetConfig (desired sections for every device matching a target
// condition) and DeviceConfig (the tags and a desired patch of one
// device). Every document is validated against schemas/fleetconfig.json or
// schemas/deviceconfig.json and every section against its provider's
// schema, with problems located as file:line:col, before anything is sent
// to a hub. Render turns a FleetConfig into an IoT Hub automatic device
// management configuration.
package fleet

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/twinlet/twinlet/internal/policy"
	"github.com/twinlet/twinlet/schemas"
)

// The document kinds of a fleet repository.
const (
	KindFleetConfig  = "FleetConfig"
	KindDeviceConfig = "DeviceConfig"
)

// Schema ids of the two kinds (schemas/<id>.json).
const (
	FleetConfigSchema  = "fleetconfig"
	DeviceConfigSchema = "deviceconfig"
)

// MaxFileSize bounds one repository file.
const MaxFileSize = 4 << 20

// MaxContentSize bounds the desired content of one configuration or one
// device: the hub keeps at most 32 KB of desired properties per twin.
const MaxContentSize = 32 << 10

// Repo is a parsed, valid fleet repository.
type Repo struct {
	Configs []*Config
	Devices []*Device
}

// Config is one FleetConfig.
type Config struct {
	Name            string
	Pos             string // file:line:col of the document
	TargetCondition string
	Priority        int
	Labels          map[string]string
	// Sections maps section ids to their JSON, as written.
	Sections map[string]json.RawMessage
	// Metrics are the extra metric queries (name: query).
	Metrics map[string]string
	Rollout *Rollout // nil: no staged rollout
}

// Rollout is a staged rollout plan.
type Rollout struct {
	Stages    []Stage
	MaxFailed Threshold
}

// Stage is one stage of a rollout.
type Stage struct {
	Name string
	// Target is the condition of the devices the stage adds.
	Target string
	// MinReady is the share of Ready devices, in percent of those
	// targeted so far, required before the next stage.
	MinReady float64
}

// Threshold is a number of devices or a share of the targeted ones.
type Threshold struct {
	Count   int
	Percent float64
	IsShare bool
}

// Exceeded reports whether failed devices out of targeted cross the
// threshold.
func (t Threshold) Exceeded(failed, targeted int) bool {
	if t.IsShare {
		return targeted > 0 && float64(failed)*100 > t.Percent*float64(targeted)
	}
	return failed > t.Count
}

// String renders the threshold as written: "2" or "5%".
func (t Threshold) String() string {
	if t.IsShare {
		return strconv.FormatFloat(t.Percent, 'f', -1, 64) + "%"
	}
	return strconv.Itoa(t.Count)
}

// ParseThreshold parses "2" or "5%".
func ParseThreshold(s string) (Threshold, error) {
	if p, ok := strings.CutSuffix(s, "%"); ok {
		f, err := strconv.ParseFloat(p, 64)
		if err != nil || f < 0 || f > 100 {
			return Threshold{}, fmt.Errorf("threshold %q: want a count or a share such as 5%%", s)
		}
		return Threshold{Percent: f, IsShare: true}, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return Threshold{}, fmt.Errorf("threshold %q: want a count or a share such as 5%%", s)
	}
	return Threshold{Count: n}, nil
}

// Device is one DeviceConfig.
type Device struct {
	ID  string
	Pos string
	// Tags are set on the twin; tags not named are left alone.
	Tags map[string]any
	// Desired maps section ids to their JSON.
	Desired map[string]json.RawMessage
}

// Problem is one located problem in a repository file.
type Problem struct {
	Pos     string // file:line:col
	Pointer string // JSON pointer into the document, when known
	Message string
}

func (p Problem) String() string {
	if p.Pointer == "" {
		return p.Pos + ": " + p.Message
	}
	return p.Pos + ": " + p.Pointer + ": " + p.Message
}

// Problems is the error of a repository that cannot be used: every
// problem found, in file order.
type Problems []Problem

func (ps Problems) Error() string {
	lines := make([]string, len(ps))
	for i, p := range ps {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

// Known reports whether a section id belongs to a provider the fleet may
// configure.
type Known func(section string) bool

// LoadDir reads every *.yaml and *.yml file under dir (recursively, in
// lexical order, skipping dot files and directories). Any problem anywhere
// makes the whole repository unusable: the error is Problems.
func LoadDir(dir string, known Known) (*Repo, error) {
	var files []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if p != dir && strings.HasPrefix(name, ".") {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if !d.IsDir() && (strings.HasSuffix(name, ".yaml") || strings.HasSuffix(name, ".yml")) {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("fleet repository: %w", err)
	}
	sort.Strings(files)
	if len(files) == 0 {
		return nil, Problems{{Pos: dir, Message: "no *.yaml files: not a fleet repository"}}
	}
	l := &loader{known: known, names: map[string]string{}, devices: map[string]string{}, repo: &Repo{}}
	for _, f := range files {
		data, err := readFile(f)
		if err != nil {
			l.probs = append(l.probs, Problem{Pos: f, Message: err.Error()})
			continue
		}
		l.parse(f, data)
	}
	if len(l.probs) > 0 {
		return nil, l.probs
	}
	return l.repo, nil
}

// Parse reads the documents of one file (for tests and fuzzing).
func Parse(file string, data []byte, known Known) (*Repo, error) {
	l := &loader{known: known, names: map[string]string{}, devices: map[string]string{}, repo: &Repo{}}
	l.parse(file, data)
	if len(l.probs) > 0 {
		return nil, l.probs
	}
	return l.repo, nil
}

func readFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, errors.New("not a regular file")
	}
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > MaxFileSize {
		return nil, fmt.Errorf("larger than %d bytes", MaxFileSize)
	}
	return data, nil
}

type loader struct {
	known   Known
	names   map[string]string // FleetConfig name → position
	devices map[string]string // device id → position
	repo    *Repo
	probs   Problems
}

func (l *loader) parse(file string, data []byte) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var node yaml.Node
		err := dec.Decode(&node)
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			pos, msg := policy.YAMLSyntaxError(file, err)
			l.probs = append(l.probs, Problem{Pos: pos, Message: msg})
			return
		}
		if node.Kind == 0 || len(node.Content) == 0 || node.Content[0].Tag == "!!null" {
			continue
		}
		l.doc(file, &node)
	}
}

func (l *loader) doc(file string, node *yaml.Node) {
	at := func(ptr string) string { return policy.Locate(file, node, ptr) }
	v, err := policy.YAMLToJSON(node)
	if err != nil {
		var le *policy.YAMLError
		if errors.As(err, &le) {
			l.probs = append(l.probs, Problem{Pos: fmt.Sprintf("%s:%d:%d", file, le.Line, le.Col), Message: le.Msg})
		} else {
			l.probs = append(l.probs, Problem{Pos: at(""), Message: err.Error()})
		}
		return
	}
	m, ok := v.(map[string]any)
	if !ok {
		l.probs = append(l.probs, Problem{Pos: at(""), Message: "expected a mapping with apiVersion, kind, metadata and spec"})
		return
	}
	kind, _ := m["kind"].(string)
	var schema string
	switch kind {
	case KindFleetConfig:
		schema = FleetConfigSchema
	case KindDeviceConfig:
		schema = DeviceConfigSchema
	default:
		l.probs = append(l.probs, Problem{Pos: at("/kind"), Pointer: "/kind",
			Message: fmt.Sprintf("unknown kind %q (want FleetConfig or DeviceConfig)", kind)})
		return
	}
	raw, err := json.Marshal(v)
	if err != nil {
		l.probs = append(l.probs, Problem{Pos: at(""), Message: err.Error()})
		return
	}
	sp, err := schemas.Validate(schema, raw)
	if err != nil {
		l.probs = append(l.probs, Problem{Pos: at(""), Message: err.Error()})
		return
	}
	if len(sp) > 0 {
		for _, p := range sp {
			l.probs = append(l.probs, Problem{Pos: at(p.Pointer), Pointer: p.Pointer, Message: p.Message})
		}
		return
	}
	if kind == KindFleetConfig {
		l.fleetConfig(at, raw)
	} else {
		l.deviceConfig(at, raw)
	}
}

// sections validates each section of a FleetConfig's spec.sections or a
// DeviceConfig's spec.desired against its provider's schema.
func (l *loader) sections(at func(string) string, base string, secs map[string]json.RawMessage) bool {
	ok := true
	ids := make([]string, 0, len(secs))
	for id := range secs {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		ptr := base + "/" + id
		if l.known != nil && !l.known(id) {
			l.probs = append(l.probs, Problem{Pos: at(ptr), Pointer: ptr, Message: fmt.Sprintf("unknown section %q", id)})
			ok = false
			continue
		}
		var meta struct {
			Meta struct {
				DeploymentID *string `json:"deploymentId"`
			} `json:"__meta"`
		}
		_ = json.Unmarshal(secs[id], &meta)
		if base == "/spec/sections" && meta.Meta.DeploymentID != nil {
			p := ptr + "/__meta/deploymentId"
			l.probs = append(l.probs, Problem{Pos: at(p), Pointer: p, Message: "set by twinctl (the configuration's id), not in the repository"})
			ok = false
			continue
		}
		sp, err := schemas.Validate(id, secs[id])
		if err != nil {
			l.probs = append(l.probs, Problem{Pos: at(ptr), Pointer: ptr, Message: err.Error()})
			ok = false
			continue
		}
		for _, p := range sp {
			l.probs = append(l.probs, Problem{Pos: at(ptr + p.Pointer), Pointer: ptr + p.Pointer, Message: p.Message})
			ok = false
		}
	}
	return ok
}

func (l *loader) fleetConfig(at func(string) string, raw []byte) {
	var d struct {
		Metadata struct{ Name string }
		Spec     struct {
			TargetCondition string                     `json:"targetCondition"`
			Priority        int                        `json:"priority"`
			Labels          map[string]string          `json:"labels"`
			Sections        map[string]json.RawMessage `json:"sections"`
			Metrics         map[string]string          `json:"metrics"`
			Rollout         *struct {
				Stages []struct {
					Name     string   `json:"name"`
					Target   string   `json:"target"`
					MinReady *float64 `json:"minReady"`
				} `json:"stages"`
				MaxFailed json.RawMessage `json:"maxFailed"`
			} `json:"rollout"`
		}
	}
	if err := json.Unmarshal(raw, &d); err != nil {
		l.probs = append(l.probs, Problem{Pos: at(""), Message: err.Error()})
		return
	}
	pos := at("")
	if prev, dup := l.names[d.Metadata.Name]; dup {
		l.probs = append(l.probs, Problem{Pos: at("/metadata/name"), Pointer: "/metadata/name",
			Message: fmt.Sprintf("FleetConfig %q defined twice (also at %s)", d.Metadata.Name, prev)})
		return
	}
	l.names[d.Metadata.Name] = pos
	if !l.sections(at, "/spec/sections", d.Spec.Sections) {
		return
	}
	c := &Config{Name: d.Metadata.Name, Pos: pos, TargetCondition: d.Spec.TargetCondition,
		Priority: d.Spec.Priority, Labels: d.Spec.Labels, Sections: d.Spec.Sections, Metrics: d.Spec.Metrics}
	if r := d.Spec.Rollout; r != nil {
		ro := &Rollout{}
		seen := map[string]bool{}
		for i, s := range r.Stages {
			if seen[s.Name] {
				p := fmt.Sprintf("/spec/rollout/stages/%d/name", i)
				l.probs = append(l.probs, Problem{Pos: at(p), Pointer: p, Message: fmt.Sprintf("stage %q named twice", s.Name)})
				return
			}
			seen[s.Name] = true
			st := Stage{Name: s.Name, Target: s.Target, MinReady: 100}
			if s.MinReady != nil {
				st.MinReady = *s.MinReady
			}
			ro.Stages = append(ro.Stages, st)
		}
		if len(r.MaxFailed) > 0 {
			var s string
			if json.Unmarshal(r.MaxFailed, &s) != nil {
				s = string(r.MaxFailed)
			}
			t, err := ParseThreshold(s)
			if err != nil {
				l.probs = append(l.probs, Problem{Pos: at("/spec/rollout/maxFailed"), Pointer: "/spec/rollout/maxFailed", Message: err.Error()})
				return
			}
			ro.MaxFailed = t
		}
		c.Rollout = ro
	}
	if n := len(contentJSON(c)); n > MaxContentSize {
		l.probs = append(l.probs, Problem{Pos: at("/spec/sections"), Pointer: "/spec/sections",
			Message: fmt.Sprintf("content is %d bytes; a twin holds at most %d bytes of desired properties (large content belongs in a referenced artifact)", n, MaxContentSize)})
		return
	}
	l.repo.Configs = append(l.repo.Configs, c)
}

func (l *loader) deviceConfig(at func(string) string, raw []byte) {
	var d struct {
		Metadata struct{ Name string }
		Spec     struct {
			Tags    map[string]any             `json:"tags"`
			Desired map[string]json.RawMessage `json:"desired"`
		}
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&d); err != nil {
		l.probs = append(l.probs, Problem{Pos: at(""), Message: err.Error()})
		return
	}
	pos := at("")
	if prev, dup := l.devices[d.Metadata.Name]; dup {
		l.probs = append(l.probs, Problem{Pos: at("/metadata/name"), Pointer: "/metadata/name",
			Message: fmt.Sprintf("DeviceConfig for %q given twice (also at %s)", d.Metadata.Name, prev)})
		return
	}
	l.devices[d.Metadata.Name] = pos
	if !l.sections(at, "/spec/desired", d.Spec.Desired) {
		return
	}
	if err := checkTwinKeys(d.Spec.Tags); err != "" {
		l.probs = append(l.probs, Problem{Pos: at("/spec/tags"), Pointer: "/spec/tags", Message: err})
		return
	}
	b, _ := json.Marshal(d.Spec.Desired)
	if len(b) > MaxContentSize {
		l.probs = append(l.probs, Problem{Pos: at("/spec/desired"), Pointer: "/spec/desired",
			Message: fmt.Sprintf("desired is %d bytes; a twin holds at most %d bytes", len(b), MaxContentSize)})
		return
	}
	l.repo.Devices = append(l.repo.Devices, &Device{ID: d.Metadata.Name, Pos: pos, Tags: d.Spec.Tags, Desired: d.Spec.Desired})
}

// checkTwinKeys checks nested tag keys: twin keys may not contain '.',
// '$' or spaces.
func checkTwinKeys(m map[string]any) string {
	for k, v := range m {
		if k == "" || strings.ContainsAny(k, ".$ ") {
			return fmt.Sprintf("key %q: twin keys may not be empty or contain '.', '$' or spaces", k)
		}
		if sub, ok := v.(map[string]any); ok {
			if e := checkTwinKeys(sub); e != "" {
				return e
			}
		}
	}
	return ""
}
