package fleet

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/twinlet/twinlet/internal/iothub"
)

// Labels twinctl keeps on the configurations it manages. Everything a
// rollout needs is in them, so that `twinctl rollout run` resumes from any
// machine.
const (
	LabelManagedBy = "twinlet-managed-by" // "twinctl"
	LabelName      = "twinlet-name"       // the FleetConfig's name
	LabelHash      = "twinlet-hash"       // sha256 of the content, hex
	LabelStage     = "twinlet-stage"      // index of the current stage
	LabelStages    = "twinlet-stages"     // number of stages
	LabelStagePfx  = "twinlet-stage-"     // twinlet-stage-N: "minReady|name|target"
	LabelMaxFailed = "twinlet-max-failed" // "2" or "5%"
	LabelRollout   = "twinlet-rollout"    // Progressing, Halted or Complete
	LabelReason    = "twinlet-reason"     // why it halted
	ManagedBy      = "twinctl"
)

// Rollout states (LabelRollout).
const (
	RolloutProgressing = "Progressing"
	RolloutHalted      = "Halted"
	RolloutComplete    = "Complete"
)

// Metric names of the default metric queries.
const (
	MetricReady    = "ready"
	MetricFailed   = "failed"
	MetricPending  = "pending"
	MetricEligible = "eligible"
)

// IDSeparator joins a FleetConfig's name and its content hash in the
// configuration id. Names never contain it.
const IDSeparator = "--"

// Hash returns the hex SHA-256 of the configuration's content in canonical
// JSON (sorted keys, exact numbers).
func (c *Config) Hash() string {
	s := sha256.Sum256(contentJSON(c))
	return hex.EncodeToString(s[:])
}

// ID returns the configuration id: the name, "--" and the first 10 hex
// digits of the content hash. Content is immutable in the hub, so new
// content is a new configuration.
func (c *Config) ID() string { return c.Name + IDSeparator + c.Hash()[:10] }

// NameOf returns the FleetConfig name of a configuration id, or "".
func NameOf(id string) string {
	name, _, ok := strings.Cut(id, IDSeparator)
	if !ok {
		return ""
	}
	return name
}

// contentJSON is the canonical JSON of the sections, without the
// deploymentId that Render adds (it is derived from the hash).
func contentJSON(c *Config) []byte {
	m := make(map[string]any, len(c.Sections))
	for id, raw := range c.Sections {
		m[id] = canonical(raw)
	}
	b, _ := json.Marshal(m)
	return b
}

func canonical(raw json.RawMessage) any {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	_ = dec.Decode(&v)
	return v
}

// Render returns the configuration for c at rollout stage (ignored
// without a rollout). Each section carries __meta.deploymentId = the
// configuration id, which the agent echoes in the section's reported
// status; the metric queries count on it.
func (c *Config) Render(stage int) *iothub.Configuration {
	id := c.ID()
	content := make(map[string]any, len(c.Sections))
	for sec, raw := range c.Sections {
		var m map[string]any
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.UseNumber()
		_ = dec.Decode(&m)
		meta, _ := m["__meta"].(map[string]any)
		if meta == nil {
			meta = map[string]any{}
		}
		meta["deploymentId"] = id
		m["__meta"] = meta
		b, _ := json.Marshal(m)
		content["properties.desired."+sec] = json.RawMessage(b)
	}
	labels := map[string]string{}
	for k, v := range c.Labels {
		labels[k] = v
	}
	labels[LabelManagedBy] = ManagedBy
	labels[LabelName] = c.Name
	labels[LabelHash] = c.Hash()
	target := c.TargetCondition
	if r := c.Rollout; r != nil {
		stage = max(0, min(stage, len(r.Stages)-1))
		labels[LabelStage] = strconv.Itoa(stage)
		labels[LabelStages] = strconv.Itoa(len(r.Stages))
		for i, s := range r.Stages {
			labels[LabelStagePfx+strconv.Itoa(i)] = strconv.FormatFloat(s.MinReady, 'f', -1, 64) + "|" + s.Name + "|" + s.Target
		}
		labels[LabelMaxFailed] = r.MaxFailed.String()
		labels[LabelRollout] = RolloutProgressing
		target = StageTarget(c.TargetCondition, r.Stages, stage)
	}
	queries := DefaultMetrics(id, sortedKeys(c.Sections), c.TargetCondition)
	for k, v := range c.Metrics {
		queries[k] = v
	}
	return &iothub.Configuration{
		ID:              id,
		SchemaVersion:   "1.0",
		Labels:          labels,
		Content:         iothub.ConfigurationContent{DeviceContent: content},
		TargetCondition: target,
		Priority:        c.Priority,
		Metrics:         iothub.ConfigurationMetrics{Queries: queries},
	}
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// StageTarget is the target condition at a stage: the devices of stages
// 0..stage within base.
func StageTarget(base string, stages []Stage, stage int) string {
	var ors []string
	for i := 0; i <= stage && i < len(stages); i++ {
		t := strings.TrimSpace(stages[i].Target)
		if t == "*" {
			ors = nil
			break
		}
		ors = append(ors, "("+t+")")
	}
	base = strings.TrimSpace(base)
	switch {
	case len(ors) == 0:
		return base
	case base == "*":
		return strings.Join(ors, " OR ")
	}
	return "(" + base + ") AND (" + strings.Join(ors, " OR ") + ")"
}

// Sections returns the section ids of a configuration's content.
func Sections(c *iothub.Configuration) []string {
	var out []string
	for k := range c.Content.DeviceContent {
		if s, ok := strings.CutPrefix(k, "properties.desired."); ok && !strings.Contains(s, ".") {
			out = append(out, s)
		}
	}
	sort.Strings(out)
	return out
}

// Managed reports whether twinctl manages the configuration.
func Managed(c *iothub.Configuration) bool { return c.Labels[LabelManagedBy] == ManagedBy }

// Name returns the FleetConfig name of a managed configuration.
func Name(c *iothub.Configuration) string {
	if n := c.Labels[LabelName]; n != "" {
		return n
	}
	return NameOf(c.ID)
}

// Conditions are the WHERE clauses of a configuration's default metrics.
type Conditions struct {
	Targeted, Applied, Ready, Failed, Pending string
}

// ConditionsFor returns the conditions that count the devices of
// configuration id over its sections.
//
// A section of a device belongs to this configuration when its desired
// __meta.deploymentId is the id (the hub wrote this configuration's
// content there); a section another configuration won on that device does
// not hold this one back. A section that belongs to it is Ready (or
// Failed) when the agent reports that state for the same deploymentId in
// the section's __status, so an older content still reported never counts.
// A device is Ready when the configuration is Applied and every section
// that belongs to it is Ready, Failed when one failed, pending otherwise.
// Every clause is true or false, never undefined, so NOT is safe.
func ConditionsFor(id string, sections []string) Conditions {
	status := "configurations.[[" + id + "]].status"
	var ready, failed []string
	for _, s := range sections {
		mine := fmt.Sprintf("IS_DEFINED(properties.desired.%s.__meta.deploymentId) AND properties.desired.%s.__meta.deploymentId = %s", s, s, quote(id))
		p := "properties.reported." + s + ".__status"
		rep := fmt.Sprintf("IS_DEFINED(%s.deploymentId) AND %s.deploymentId = %s", p, p, quote(id))
		ready = append(ready, fmt.Sprintf("(NOT (%s) OR (%s AND %s.state = 'Ready'))", mine, rep, p))
		failed = append(failed, fmt.Sprintf("(%s AND %s AND %s.state = 'Failed')", mine, rep, p))
	}
	applied := status + " = 'Applied'"
	allReady, anyFailed := "IS_DEFINED(deviceId)", "NOT IS_DEFINED(deviceId)"
	if len(sections) > 0 {
		allReady = strings.Join(ready, " AND ")
		anyFailed = "(" + strings.Join(failed, " OR ") + ")"
	}
	return Conditions{
		Targeted: "IS_DEFINED(" + status + ")",
		Applied:  applied,
		Ready:    applied + " AND " + allReady,
		Failed:   applied + " AND " + anyFailed,
		Pending:  applied + " AND NOT (" + allReady + ") AND NOT " + anyFailed,
	}
}

// DefaultMetrics are the metric queries of a managed configuration: ready,
// failed and pending devices, and eligible (every device of the target
// condition, whatever the rollout stage).
func DefaultMetrics(id string, sections []string, target string) map[string]string {
	c := ConditionsFor(id, sections)
	eligible := "SELECT deviceId FROM devices"
	if t := strings.TrimSpace(target); t != "*" {
		eligible += " WHERE " + t
	}
	return map[string]string{
		MetricReady:    "SELECT deviceId FROM devices WHERE " + c.Ready,
		MetricFailed:   "SELECT deviceId FROM devices WHERE " + c.Failed,
		MetricPending:  "SELECT deviceId FROM devices WHERE " + c.Pending,
		MetricEligible: eligible,
	}
}

// BaseTarget returns the target condition of the whole FleetConfig, kept in
// the eligible metric (it outlives rollout stages and is longer than a
// label may be).
func BaseTarget(c *iothub.Configuration) string {
	q, ok := c.Metrics.Queries[MetricEligible]
	if !ok {
		return c.TargetCondition
	}
	if t, ok := strings.CutPrefix(q, "SELECT deviceId FROM devices WHERE "); ok {
		return t
	}
	if q == "SELECT deviceId FROM devices" {
		return "*"
	}
	return c.TargetCondition
}

// RolloutPlan reads the rollout plan and state from a configuration's
// labels; nil when it has no rollout.
func RolloutPlan(c *iothub.Configuration) (*Rollout, int, error) {
	n, err := strconv.Atoi(c.Labels[LabelStages])
	if c.Labels[LabelStages] == "" {
		return nil, 0, nil
	}
	if err != nil || n < 1 {
		return nil, 0, fmt.Errorf("configuration %s: label %s=%q: not a stage count", c.ID, LabelStages, c.Labels[LabelStages])
	}
	r := &Rollout{}
	for i := 0; i < n; i++ {
		v := c.Labels[LabelStagePfx+strconv.Itoa(i)]
		parts := strings.SplitN(v, "|", 3)
		if len(parts) != 3 {
			return nil, 0, fmt.Errorf("configuration %s: label %s%d=%q: want minReady|name|target", c.ID, LabelStagePfx, i, v)
		}
		mr, err := strconv.ParseFloat(parts[0], 64)
		if err != nil {
			return nil, 0, fmt.Errorf("configuration %s: label %s%d: minReady %q: %w", c.ID, LabelStagePfx, i, parts[0], err)
		}
		r.Stages = append(r.Stages, Stage{MinReady: mr, Name: parts[1], Target: parts[2]})
	}
	if v := c.Labels[LabelMaxFailed]; v != "" {
		t, err := ParseThreshold(v)
		if err != nil {
			return nil, 0, fmt.Errorf("configuration %s: label %s: %w", c.ID, LabelMaxFailed, err)
		}
		r.MaxFailed = t
	}
	stage, err := strconv.Atoi(c.Labels[LabelStage])
	if err != nil || stage < 0 || stage >= n {
		return nil, 0, fmt.Errorf("configuration %s: label %s=%q: not a stage of %d", c.ID, LabelStage, c.Labels[LabelStage], n)
	}
	return r, stage, nil
}

// quote renders s as a query string literal.
func quote(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, "'", `\'`).Replace(s) + "'"
}

// DevicePatch returns the twin patch of a DeviceConfig: its tags and its
// desired sections, each marked with deploymentId "device--<id>" so that
// metrics know the section is the device's own.
func (d *Device) DevicePatch() (tags map[string]any, desired map[string]any) {
	if len(d.Desired) > 0 {
		desired = map[string]any{}
		for sec, raw := range d.Desired {
			m, _ := canonical(raw).(map[string]any)
			meta, _ := m["__meta"].(map[string]any)
			if meta == nil {
				meta = map[string]any{}
			}
			if _, set := meta["deploymentId"]; !set {
				meta["deploymentId"] = "device" + IDSeparator + d.ID
			}
			m["__meta"] = meta
			desired[sec] = m
		}
	}
	return d.Tags, desired
}
