package hub

// Automatic device management (ADM): IoT Hub configurations. A
// configuration has a target condition (a query condition over tags and
// reported properties, or "*"), content (desired-property paths, for
// devices or for modules) and metrics. twinhub evaluates every
// configuration against every twin when a configuration changes and
// against one twin when that twin's tags or reported properties change (as
// far as any condition or metric reads them), writes the winning content
// into the twins' desired properties and keeps each twin's
// configurations.{id}.status and each configuration's metrics current. The
// evaluation runs in its own goroutine, in batches that hold the hub lock
// for a bounded time; see configurations_adm.go.

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"time"
	"unicode"

	"github.com/twinlet/twinlet/internal/atomicfile"
	"github.com/twinlet/twinlet/internal/hub/query"
)

// Configuration limits of the service (standard tier).
const (
	maxConfigurations = 100
	maxCustomMetrics  = 5
	maxConfigIDLen    = 128
)

// Twin statuses of a configuration, in twins' configurations.{id}.status.
const (
	ConfigTargeted = "Targeted"
	ConfigApplied  = "Applied"
)

// Configuration is an automatic device (or module) configuration in the
// service's JSON shape.
type Configuration struct {
	ID                 string               `json:"id"`
	SchemaVersion      string               `json:"schemaVersion,omitempty"`
	Labels             map[string]string    `json:"labels,omitempty"`
	Content            ConfigurationContent `json:"content"`
	ContentType        string               `json:"contentType,omitempty"`
	TargetCondition    string               `json:"targetCondition"`
	CreatedTimeUtc     time.Time            `json:"createdTimeUtc"`
	LastUpdatedTimeUtc time.Time            `json:"lastUpdatedTimeUtc"`
	Priority           int                  `json:"priority"`
	SystemMetrics      ConfigurationMetrics `json:"systemMetrics"`
	Metrics            ConfigurationMetrics `json:"metrics"`
	Etag               string               `json:"etag"`
}

// ConfigurationContent is what a configuration writes: deviceContent and
// moduleContent map twin paths ("properties.desired.x.y") to values;
// modulesContent (IoT Edge deployments) maps module ids to
// {"properties.desired": {...}}.
type ConfigurationContent struct {
	DeviceContent  map[string]any            `json:"deviceContent,omitempty"`
	ModuleContent  map[string]any            `json:"moduleContent,omitempty"`
	ModulesContent map[string]map[string]any `json:"modulesContent,omitempty"`
}

// ConfigurationMetrics are named queries and their results (row counts).
type ConfigurationMetrics struct {
	Results map[string]int64  `json:"results"`
	Queries map[string]string `json:"queries"`
}

// ConfigStatus is one entry of a twin's "configurations".
type ConfigStatus struct {
	Status string `json:"status"`
}

// contentPath is one compiled content entry.
type contentPath struct {
	key   string   // "properties.desired.a.b"
	segs  []string // ["a", "b"], under properties.desired
	value any      // nil removes the property
}

// cfgState is a configuration as the hub keeps it: the stored document,
// its compiled queries and content, and the twins it counts. The compiled
// parts are immutable; an update replaces the cfgState. Sets are guarded
// by h.mu.
type cfgState struct {
	conf    Configuration
	seq     int64 // creation order: ties of priority go to the newest
	modules bool
	target  *query.Query // nil: "*"
	paths   []contentPath
	metrics map[string]*query.Query

	targeted map[string]struct{}
	applied  map[string]struct{}
	members  map[string]map[string]struct{} // metric name -> twin keys
}

// storedConfig is one entry of configurations.json.
type storedConfig struct {
	Configuration
	Seq int64 `json:"seq"`
}

// validConfigID is the service's rule: at most 128 characters, lowercase,
// no white space and none of & ^ [ ] { } \ | " < > /.
func validConfigID(id string) error {
	if id == "" || len(id) > maxConfigIDLen {
		return fmt.Errorf("configuration id %q must be 1 to %d characters: %w", id, maxConfigIDLen, ErrInvalid)
	}
	for _, r := range id {
		if unicode.IsUpper(r) || unicode.IsSpace(r) || unicode.IsControl(r) || strings.ContainsRune(`&^[]{}\|"<>/`, r) {
			return fmt.Errorf("configuration id %q: lowercase characters only, without white space or any of & ^ [ ] { } \\ | \" < > /: %w", id, ErrInvalid)
		}
	}
	return nil
}

func invalidConfig(format string, a ...any) error {
	return apiErr(400, "ArgumentInvalid", 400004, format, a...)
}

// compileTarget parses a target condition; modules selects module twins
// ("from devices.modules where ..."). "*" compiles to nil.
func compileTarget(cond string, modules bool) (*query.Query, error) {
	cond = strings.TrimSpace(cond)
	if cond == "" {
		return nil, invalidConfig("targetCondition is required (a condition, or * for all devices)")
	}
	if !modules {
		if cond == "*" {
			return nil, nil
		}
		q, err := query.ParseAfter("SELECT * FROM devices WHERE ", cond)
		if err != nil {
			return nil, invalidConfig("targetCondition: %v", err)
		}
		return q, checkTargetPaths(q, false)
	}
	if cond == "*" || !strings.HasPrefix(strings.ToLower(cond), "from devices.modules where ") {
		return nil, invalidConfig("targetCondition of a module configuration must start with \"from devices.modules where\"")
	}
	q, err := query.ParseAfter("SELECT * ", cond)
	if err != nil {
		return nil, invalidConfig("targetCondition: %v", err)
	}
	return q, checkTargetPaths(q, true)
}

// checkTargetPaths keeps target conditions to what the service allows:
// the identity's ids, tags and reported properties.
func checkTargetPaths(q *query.Query, modules bool) error {
	for _, p := range q.WherePaths() {
		switch {
		case p[0] == "deviceId", p[0] == "tags", modules && p[0] == "moduleId":
		case p[0] == "properties" && len(p) > 1 && p[1] == "reported":
		default:
			return invalidConfig("targetCondition reads %s: only deviceId, tags and properties.reported may be used", strings.Join(p, "."))
		}
	}
	return nil
}

// compileContent checks deviceContent or moduleContent paths and values.
func compileContent(content map[string]any, what string) ([]contentPath, error) {
	var out []contentPath
	for k, v := range content {
		rest, ok := strings.CutPrefix(k, "properties.desired.")
		if !ok || rest == "" {
			return nil, invalidConfig("%s key %q must be a path under properties.desired. (properties.desired.name)", what, k)
		}
		segs := strings.Split(rest, ".")
		for _, s := range segs {
			if err := checkKey(s, what+"."+k); err != nil {
				return nil, invalidConfig("%s key %q: %v", what, k, err)
			}
		}
		if len(segs) > maxDepth {
			return nil, invalidConfig("%s key %q is nested more than %d levels deep", what, k, maxDepth)
		}
		if err := checkKeysAndValues(v, what+"."+k); err != nil {
			return nil, invalidConfig("%v", err)
		}
		if m, ok := v.(map[string]any); ok && len(segs)+depth(m) > maxDepth {
			return nil, invalidConfig("%s value of %q is nested more than %d levels deep", what, k, maxDepth)
		}
		out = append(out, contentPath{key: k, segs: segs, value: v})
	}
	if n := size(content); n > maxSectionBytes {
		return nil, invalidConfig("%s is %d bytes, more than %d", what, n, maxSectionBytes)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].key < out[j].key })
	return out, nil
}

// compileMetrics parses custom metric queries.
func compileMetrics(qs map[string]string) (map[string]*query.Query, error) {
	if len(qs) > maxCustomMetrics {
		return nil, invalidConfig("a configuration has at most %d custom metrics, this one has %d", maxCustomMetrics, len(qs))
	}
	out := make(map[string]*query.Query, len(qs))
	for name, qs := range qs {
		if name == "" {
			return nil, invalidConfig("a custom metric needs a name")
		}
		q, err := query.Parse(qs)
		if err != nil {
			return nil, invalidConfig("metric %q: %v", name, err)
		}
		out[name] = q
	}
	return out, nil
}

// compileConfig validates a configuration and compiles it.
func compileConfig(c Configuration) (*cfgState, error) {
	if err := validConfigID(c.ID); err != nil {
		return nil, err
	}
	ct := c.Content
	if len(ct.ModulesContent) > 0 {
		return nil, invalidConfig("modulesContent (IoT Edge deployments) is not supported by twinhub; use deviceContent or moduleContent")
	}
	if len(ct.DeviceContent) > 0 && len(ct.ModuleContent) > 0 {
		return nil, invalidConfig("a configuration has either deviceContent or moduleContent, not both")
	}
	if ct.DeviceContent == nil && ct.ModuleContent == nil {
		return nil, apiErr(400, "InvalidConfigurationContent", 400004, "content needs deviceContent or moduleContent")
	}
	s := &cfgState{conf: c, modules: ct.ModuleContent != nil && ct.DeviceContent == nil}
	var err error
	if s.modules {
		s.paths, err = compileContent(ct.ModuleContent, "moduleContent")
	} else {
		s.paths, err = compileContent(ct.DeviceContent, "deviceContent")
	}
	if err != nil {
		return nil, err
	}
	if s.target, err = compileTarget(c.TargetCondition, s.modules); err != nil {
		return nil, err
	}
	if s.metrics, err = compileMetrics(c.Metrics.Queries); err != nil {
		return nil, err
	}
	for k, v := range c.Labels {
		if k == "" || len(k) > maxKeyBytes || len(v) > maxStringBytes {
			return nil, invalidConfig("label %q: names of 1 to %d bytes, values up to %d", k, maxKeyBytes, maxStringBytes)
		}
	}
	s.targeted, s.applied = map[string]struct{}{}, map[string]struct{}{}
	s.members = make(map[string]map[string]struct{}, len(s.metrics))
	for name := range s.metrics {
		s.members[name] = map[string]struct{}{}
	}
	return s, nil
}

// view is the configuration as the REST API shows it, with current
// metrics. Call with h.mu held.
func (s *cfgState) view() Configuration {
	c := s.conf
	c.Labels = copyStrings(c.Labels)
	c.Content = ConfigurationContent{
		DeviceContent: copyContent(c.Content.DeviceContent),
		ModuleContent: copyContent(c.Content.ModuleContent),
	}
	from := "devices"
	if s.modules {
		from = "devices.modules"
	}
	where := ""
	if s.target != nil {
		cond := c.TargetCondition
		if s.modules {
			cond = strings.TrimSpace(cond)[len("from devices.modules where "):]
		}
		where = " where " + cond
	}
	c.SystemMetrics = ConfigurationMetrics{
		Results: map[string]int64{"targetedCount": int64(len(s.targeted)), "appliedCount": int64(len(s.applied))},
		Queries: map[string]string{
			"targetedCount": "select deviceId from " + from + where,
			"appliedCount":  "select deviceId from " + from + " where configurations.[[" + c.ID + "]].status = 'Applied'",
		},
	}
	c.Metrics = ConfigurationMetrics{Results: map[string]int64{}, Queries: copyStrings(s.conf.Metrics.Queries)}
	if c.Metrics.Queries == nil {
		c.Metrics.Queries = map[string]string{}
	}
	for name, m := range s.members {
		c.Metrics.Results[name] = int64(len(m))
	}
	return c
}

func copyStrings(m map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func copyContent(m map[string]any) map[string]any {
	if m == nil {
		return nil
	}
	return deepCopy(m).(map[string]any)
}

// ErrConfigurationLimit is a create beyond the service's 100
// configurations.
var ErrConfigurationLimit = errors.New("configuration limit reached")

func configNotFound(id string) error {
	return apiErr(404, "ConfigurationNotFound", 404001, "configuration %s not found", id)
}

// PutConfiguration creates or updates a configuration as PUT
// /configurations/{id} does. ifMatch empty creates (an existing id is a
// conflict), "*" creates or updates, an etag updates that version. Only
// the target condition, priority, labels and metrics of an existing
// configuration change: like the service, a changed content is ignored.
func (h *Hub) PutConfiguration(c Configuration, ifMatch string) (Configuration, error) {
	ifMatch = normalizeIfMatch(ifMatch)
	if c.SchemaVersion == "" {
		c.SchemaVersion = "1.0"
	}
	h.adm.crud.Lock()
	defer h.adm.crud.Unlock()
	h.mu.Lock()
	old := h.adm.cfgs[c.ID]
	n := len(h.adm.cfgs)
	h.mu.Unlock()
	now := time.Now().UTC()
	if old == nil {
		if ifMatch != "" && ifMatch != "*" {
			return Configuration{}, configNotFound(c.ID)
		}
		if n >= maxConfigurations {
			return Configuration{}, apiErr(403, "IotHubQuotaExceeded", 403002, "a hub has at most %d configurations: %v", maxConfigurations, ErrConfigurationLimit)
		}
		c.CreatedTimeUtc, c.LastUpdatedTimeUtc = now, now
	} else {
		if ifMatch == "" {
			return Configuration{}, apiErr(409, "ConfigurationAlreadyExists", 409001, "configuration %s already exists", c.ID)
		}
		if !etagMatches(ifMatch, old.conf.Etag) {
			return Configuration{}, fmt.Errorf("configuration %s etag: %w", c.ID, ErrPreconditionFailed)
		}
		if c.Content.DeviceContent == nil && c.Content.ModuleContent == nil && c.Content.ModulesContent == nil {
			return Configuration{}, apiErr(400, "InvalidConfigurationContent", 400004, "an update carries the configuration's content")
		}
		if !reflect.DeepEqual(normalizeJSON(c.Content), normalizeJSON(old.conf.Content)) {
			h.log.Info("configuration content is immutable; the update keeps the old content", "id", c.ID)
		}
		c.Content = old.conf.Content
		c.CreatedTimeUtc, c.LastUpdatedTimeUtc = old.conf.CreatedTimeUtc, now
	}
	c.SystemMetrics, c.Metrics.Results = ConfigurationMetrics{}, nil
	s, err := compileConfig(c)
	if err != nil {
		return Configuration{}, err
	}
	s.conf.Etag = newEtag()
	h.mu.Lock()
	if old != nil {
		s.seq = old.seq
		s.targeted, s.applied = old.targeted, old.applied
		for name, q := range s.conf.Metrics.Queries {
			if old.conf.Metrics.Queries[name] == q {
				s.members[name] = old.members[name]
			}
		}
	} else {
		h.adm.seq++
		s.seq = h.adm.seq
	}
	h.adm.cfgs[c.ID] = s
	if old == nil || old.conf.TargetCondition != s.conf.TargetCondition || old.conf.Priority != s.conf.Priority ||
		!sameOwners(old.conf.Metrics.Queries, s.conf.Metrics.Queries) {
		h.admChangedLocked(old == nil) // a labels-only update changes no twin
	}
	out := s.view()
	list := h.storedConfigsLocked()
	h.mu.Unlock()
	if err := h.saveConfigs(list); err != nil {
		return Configuration{}, err
	}
	return out, nil
}

// normalizeJSON round-trips a value through JSON so that equal documents
// compare equal whatever their Go types.
func normalizeJSON(v any) any {
	b, err := json.Marshal(v)
	if err != nil {
		return v
	}
	var out any
	_ = json.Unmarshal(b, &out)
	return out
}

// GetConfiguration returns a configuration with its current metrics.
func (h *Hub) GetConfiguration(id string) (Configuration, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := h.adm.cfgs[id]
	if s == nil {
		return Configuration{}, configNotFound(id)
	}
	return s.view(), nil
}

// ListConfigurations returns up to top configurations (all when top <= 0),
// by id.
func (h *Hub) ListConfigurations(top int) []Configuration {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]Configuration, 0, len(h.adm.cfgs))
	for _, s := range h.adm.cfgs {
		out = append(out, s.view())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	if top > 0 && top < len(out) {
		out = out[:top]
	}
	return out
}

// DeleteConfiguration removes a configuration; the twins it applied to
// fall back to the next configuration or lose its settings. ifMatch is
// empty, "*" or the configuration's etag.
func (h *Hub) DeleteConfiguration(id, ifMatch string) error {
	h.adm.crud.Lock()
	defer h.adm.crud.Unlock()
	h.mu.Lock()
	s := h.adm.cfgs[id]
	if s == nil {
		h.mu.Unlock()
		return configNotFound(id)
	}
	if !etagMatches(ifMatch, s.conf.Etag) {
		h.mu.Unlock()
		return fmt.Errorf("configuration %s etag: %w", id, ErrPreconditionFailed)
	}
	delete(h.adm.cfgs, id)
	h.admChangedLocked(false)
	list := h.storedConfigsLocked()
	h.mu.Unlock()
	return h.saveConfigs(list)
}

// QueryTestResult is the answer of POST /configurations/testQueries:
// errors are in the body, not the status.
type QueryTestResult struct {
	TargetConditionError    string            `json:"targetConditionError"`
	CustomMetricQueryErrors map[string]string `json:"customMetricQueryErrors"`
}

// TestConfigurationQueries checks a target condition and custom metric
// queries without creating anything.
func (h *Hub) TestConfigurationQueries(targetCondition string, metrics map[string]string) QueryTestResult {
	res := QueryTestResult{CustomMetricQueryErrors: map[string]string{}}
	modules := strings.HasPrefix(strings.ToLower(strings.TrimSpace(targetCondition)), "from ")
	if _, err := compileTarget(targetCondition, modules); err != nil {
		res.TargetConditionError = apiMessage(err)
	}
	for name, q := range metrics {
		if _, err := query.Parse(q); err != nil {
			res.CustomMetricQueryErrors[name] = err.Error()
		}
	}
	return res
}

func apiMessage(err error) string {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae.msg
	}
	return err.Error()
}

// ApplyConfigurationContent writes configuration content into one
// device's twins at once, without a configuration: deviceContent paths
// into the device twin's desired properties, and each modulesContent
// entry's "properties.desired" as the whole desired section of that module
// twin (the module must exist).
func (h *Hub) ApplyConfigurationContent(deviceID string, ct ConfigurationContent) error {
	if len(ct.DeviceContent) == 0 && len(ct.ModulesContent) == 0 {
		return apiErr(400, "InvalidConfigurationContent", 400004, "content needs deviceContent or modulesContent")
	}
	if len(ct.ModuleContent) > 0 {
		return invalidConfig("moduleContent does not apply to one device; use modulesContent")
	}
	paths, err := compileContent(ct.DeviceContent, "deviceContent")
	if err != nil {
		return err
	}
	modules := map[string]map[string]any{}
	for mid, mc := range ct.ModulesContent {
		for k := range mc {
			if k != "properties.desired" {
				return invalidConfig("modulesContent.%s key %q: only properties.desired is supported", mid, k)
			}
		}
		d, ok := mc["properties.desired"].(map[string]any)
		if !ok {
			return invalidConfig("modulesContent.%s.properties.desired must be an object", mid)
		}
		if err := checkKeysAndValues(d, "modulesContent."+mid); err != nil {
			return invalidConfig("%v", err)
		}
		if err := checkSection("modulesContent."+mid, d, maxSectionBytes); err != nil {
			return invalidConfig("%v", err)
		}
		modules[mid] = d
	}
	now := time.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	r := h.records[deviceID]
	if r == nil {
		return notFound(deviceID, "")
	}
	for mid := range modules {
		if h.records[idKey(deviceID, mid)] == nil {
			return notFound(deviceID, mid)
		}
	}
	if len(paths) > 0 {
		sets := make([][]string, len(paths))
		vals := make([]any, len(paths))
		for i, p := range paths {
			sets[i], vals[i] = p.segs, p.value
		}
		h.writeDesiredPathsLocked(r, nil, sets, vals, now)
	}
	for mid, d := range modules {
		key := idKey(deviceID, mid)
		mr := h.records[key]
		t := &mr.Twin
		t.DesiredVersion++
		md := map[string]any{"$lastUpdated": stamp(now), "$lastUpdatedVersion": t.DesiredVersion}
		val, meta := replaceSection(d, md)
		t.Desired, t.DesiredMeta = mustPack(val), packMeta(val, meta)
		t.Version++
		delta := val
		delta["$version"] = t.DesiredVersion
		h.notifyDesiredLocked(key, delta, t.DesiredVersion)
		h.markDirty(key)
	}
	return nil
}

// writeDesiredPathsLocked removes the desired properties at dels, then
// sets those at sets (a nil value removes), as one desired version, and
// notifies the device with the changed subtrees. Segments are under
// properties.desired. It returns the new desired section, decoded, which
// the twin does not share. Call with h.mu held.
func (h *Hub) writeDesiredPathsLocked(r *record, dels, sets [][]string, vals []any, now time.Time) map[string]any {
	t := &r.Twin
	t.DesiredVersion++
	md := map[string]any{"$lastUpdated": stamp(now), "$lastUpdatedVersion": t.DesiredVersion}
	desired := t.Desired.obj()
	meta := t.DesiredMeta.tree(desired)
	for _, p := range dels {
		delPath(desired, meta, p, md)
	}
	for i, p := range sets {
		if vals[i] == nil {
			delPath(desired, meta, p, md)
		} else {
			setPath(desired, meta, p, vals[i], md)
		}
	}
	for k, v := range md {
		meta[k] = v
	}
	// Configuration content was decoded from JSON: it encodes.
	t.Desired, t.DesiredMeta = mustPack(desired), packMeta(desired, meta)
	t.Version++
	// The delta holds each changed path's new value (null when gone),
	// leaving out paths inside another changed path.
	changed := append(append([][]string(nil), dels...), sets...)
	delta := map[string]any{}
	for i, p := range changed {
		inside := false
		for j, q := range changed {
			if i != j && isPrefix(q, p) && (len(q) < len(p) || j < i) {
				inside = true
				break
			}
		}
		if inside {
			continue
		}
		v, ok := getPath(desired, p)
		if ok {
			v = deepCopy(v)
		}
		putPath(delta, p, v)
	}
	delta["$version"] = t.DesiredVersion
	key := r.key()
	h.notifyDesiredLocked(key, delta, t.DesiredVersion)
	h.markDirty(key)
	return desired
}

func isPrefix(p, of []string) bool {
	if len(p) > len(of) {
		return false
	}
	for i := range p {
		if p[i] != of[i] {
			return false
		}
	}
	return true
}

func getPath(m map[string]any, p []string) (any, bool) {
	var cur any = m
	for _, s := range p {
		cm, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = cm[s]; !ok {
			return nil, false
		}
	}
	return cur, true
}

// putPath sets v at p in a plain nested map, creating objects on the way.
func putPath(m map[string]any, p []string, v any) {
	for _, s := range p[:len(p)-1] {
		c, ok := m[s].(map[string]any)
		if !ok {
			c = map[string]any{}
			m[s] = c
		}
		m = c
	}
	m[p[len(p)-1]] = v
}

// setPath replaces the value at p (creating objects on the way) and
// stamps the metadata of p and its ancestors with md.
func setPath(dst, meta map[string]any, p []string, v any, md map[string]any) {
	for _, s := range p[:len(p)-1] {
		c, ok := dst[s].(map[string]any)
		cm, _ := meta[s].(map[string]any)
		if !ok {
			c, cm = map[string]any{}, nil
			dst[s] = c
		}
		if cm == nil {
			cm = map[string]any{}
			meta[s] = cm
		}
		for k, x := range md {
			cm[k] = x
		}
		dst, meta = c, cm
	}
	leaf := p[len(p)-1]
	delete(dst, leaf)
	delete(meta, leaf)
	mergeSection(dst, meta, map[string]any{leaf: v}, md)
}

// delPath removes the value at p if it is there.
func delPath(dst, meta map[string]any, p []string, md map[string]any) {
	for _, s := range p[:len(p)-1] {
		c, ok := dst[s].(map[string]any)
		if !ok {
			return
		}
		cm, _ := meta[s].(map[string]any)
		if cm == nil {
			cm = map[string]any{}
			meta[s] = cm
		}
		for k, x := range md {
			cm[k] = x
		}
		dst, meta = c, cm
	}
	leaf := p[len(p)-1]
	delete(dst, leaf)
	delete(meta, leaf)
}

// storedConfigsLocked is the configurations.json content, by creation.
func (h *Hub) storedConfigsLocked() []storedConfig {
	out := make([]storedConfig, 0, len(h.adm.cfgs))
	for _, s := range h.adm.cfgs {
		c := s.conf
		c.SystemMetrics, c.Metrics.Results = ConfigurationMetrics{}, nil
		out = append(out, storedConfig{Configuration: c, Seq: s.seq})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Seq < out[j].Seq })
	return out
}

func (h *Hub) configsPath() string { return filepath.Join(h.opts.Dir, "configurations.json") }

// saveConfigs writes configurations.json atomically. Call with
// h.adm.crud held, so that writes happen in order.
func (h *Hub) saveConfigs(list []storedConfig) error {
	if h.store == nil {
		return nil
	}
	data, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		return fmt.Errorf("persist configurations: %w", err)
	}
	if err := atomicfile.Write(h.configsPath(), data, 0o600); err != nil {
		return fmt.Errorf("persist configurations: %w", err)
	}
	return nil
}

// loadConfigs reads configurations.json at New.
func (h *Hub) loadConfigs() error {
	h.adm.init()
	if h.store == nil {
		return nil
	}
	path := h.configsPath()
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("load configurations: %w", err)
	}
	var list []storedConfig
	if err := json.Unmarshal(b, &list); err != nil {
		return fmt.Errorf("load configurations %s: %w", path, err)
	}
	for i, sc := range list {
		s, err := compileConfig(sc.Configuration)
		if err != nil {
			return fmt.Errorf("load configurations %s: entry %d (%s): %w", path, i, sc.ID, err)
		}
		s.seq = sc.Seq
		h.adm.seq = max(h.adm.seq, sc.Seq)
		h.adm.cfgs[sc.ID] = s
	}
	// Counts and metric sets are not stored: the first pass rebuilds them.
	h.adm.all = len(h.adm.cfgs) > 0
	h.adm.rebuildIndex()
	return nil
}
