package console

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/twinlet/twinlet/internal/fleet"
	"github.com/twinlet/twinlet/internal/iothub"
	"github.com/twinlet/twinlet/schemas"
)

// maxBody bounds a request body: a twin section holds at most 32 KB.
const maxBody = 256 << 10

var (
	sectionRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_]{0,127}$`)
	methodRE  = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_-]{0,63}(\.[A-Za-z][A-Za-z0-9_-]{0,63})?$`)
	configRE  = regexp.MustCompile(`^[a-z0-9_.:'+%@!,=;$-]{1,128}$`)
)

// apiError is the JSON body of every failed API call.
type apiError struct {
	Error    string    `json:"error"`
	Problems []problem `json:"problems,omitempty"`
	ETag     string    `json:"etag,omitempty"`
}

// problem is a validation problem located by a JSON pointer.
type problem struct {
	Pointer string `json:"pointer"`
	Message string `json:"message"`
}

func problems(ps []schemas.Problem) []problem {
	out := make([]problem, len(ps))
	for i, p := range ps {
		out[i] = problem{p.Pointer, p.Message}
	}
	return out
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func fail(w http.ResponseWriter, status int, format string, args ...any) {
	writeJSON(w, status, apiError{Error: fmt.Sprintf(format, args...)})
}

// hubError answers an error of the hub with its status (404, 412, 409…)
// and message.
func (s *Server) hubError(w http.ResponseWriter, err error) {
	var se *iothub.ServiceError
	if errors.As(err, &se) && se.StatusCode >= 400 && se.StatusCode < 500 {
		status := se.StatusCode
		if status == http.StatusUnauthorized || status == http.StatusForbidden {
			// the hub refused twinctl's credentials: not the page's token
			status = http.StatusBadGateway
		}
		fail(w, status, "%v", err)
		return
	}
	if errors.Is(err, context.Canceled) {
		return
	}
	s.log.Warn("console: hub call failed", "err", err)
	fail(w, http.StatusBadGateway, "%v", err)
}

func decodeBody(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("request body: %w", err)
	}
	return nil
}

func (s *Server) info(w http.ResponseWriter, r *http.Request) {
	secs := []Section{}
	for _, sec := range s.sections {
		secs = append(secs, sec.Section)
	}
	sort.Slice(secs, func(i, j int) bool { return secs[i].ID < secs[j].ID })
	writeJSON(w, 200, map[string]any{"hub": s.opts.Client.HostName(), "interval": s.opts.Interval.Milliseconds(),
		"sections": secs, "agentMethods": []string{"reconcile", "getPlan", "getStatus", "report", "reboot"}})
}

func (s *Server) schema(w http.ResponseWriter, r *http.Request) {
	sec, ok := s.sections[r.PathValue("id")]
	if !ok || len(sec.Schema) == 0 {
		fail(w, 404, "no schema for section %q", r.PathValue("id"))
		return
	}
	w.Header().Set("Content-Type", "application/schema+json")
	w.Write(sec.Schema)
}

// deviceRow is one line of the devices table.
type deviceRow struct {
	ID              string `json:"id"`
	Status          string `json:"status,omitempty"`
	Connection      string `json:"connection,omitempty"`
	State           string `json:"state,omitempty"`
	Failed          string `json:"failed,omitempty"`
	DesiredVersion  int64  `json:"desiredVersion"`
	ReportedVersion int64  `json:"reportedVersion"`
	SummaryVersion  int64  `json:"summaryVersion,omitempty"` // the desired version the agent last reconciled
	LastActivity    string `json:"lastActivity,omitempty"`
}

type devicePage struct {
	Rows []deviceRow `json:"rows"`
	Next string      `json:"next,omitempty"`
}

func str(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case nil:
		return ""
	}
	b, _ := json.Marshal(v)
	return string(b)
}

func num(v any) int64 {
	switch x := v.(type) {
	case float64:
		return int64(x)
	case json.Number:
		n, _ := x.Int64()
		return n
	}
	return 0
}

func sub(m map[string]any, k string) map[string]any {
	v, _ := m[k].(map[string]any)
	return v
}

func rowOf(t *iothub.Twin) deviceRow {
	sum := sub(t.Properties.Reported, "__summary")
	return deviceRow{ID: t.DeviceID, Status: t.Status, Connection: t.ConnectionState, State: str(sum["state"]),
		Failed: str(sum["failedSections"]), DesiredVersion: num(t.Properties.Desired["$version"]),
		ReportedVersion: num(t.Properties.Reported["$version"]), SummaryVersion: num(sum["desiredVersion"]),
		LastActivity: t.LastActivityTime}
}

// devicesQuery is the query of one page of the devices table: a WHERE
// condition in the hub's query language (the hub parses it; it can only
// read twins).
func devicesQuery(filter string) (string, error) {
	filter = strings.TrimSpace(filter)
	if len(filter) > 2048 {
		return "", errors.New("filter: longer than 2048 characters")
	}
	q := "SELECT * FROM devices"
	if filter != "" && filter != "*" {
		q += " WHERE " + filter
	}
	return q, nil
}

func pageArgs(r *http.Request) (filter, cont string, size int, err error) {
	q := r.URL.Query()
	size = 50
	if v := q.Get("size"); v != "" {
		size, err = strconv.Atoi(v)
		if err != nil || size < 1 || size > 1000 {
			return "", "", 0, fmt.Errorf("size: want 1 to 1000, got %q", v)
		}
	}
	return q.Get("filter"), q.Get("page"), size, nil
}

func (s *Server) devicePage(ctx context.Context, filter, cont string, size int) (*devicePage, error) {
	q, err := devicesQuery(filter)
	if err != nil {
		return nil, err
	}
	page, err := s.opts.Client.QueryPage(ctx, q, size, cont)
	if err != nil {
		return nil, err
	}
	out := &devicePage{Rows: []deviceRow{}, Next: page.Continuation}
	for _, raw := range page.Items {
		var t iothub.Twin
		if err := json.Unmarshal(raw, &t); err != nil || t.DeviceID == "" {
			continue
		}
		out.Rows = append(out.Rows, rowOf(&t))
	}
	return out, nil
}

func (s *Server) devices(w http.ResponseWriter, r *http.Request) {
	filter, cont, size, err := pageArgs(r)
	if err != nil {
		fail(w, 400, "%v", err)
		return
	}
	p, err := s.devicePage(r.Context(), filter, cont, size)
	if err != nil {
		s.hubError(w, err)
		return
	}
	writeJSON(w, 200, p)
}

// deviceView is one device: desired and reported side by side per section.
type deviceView struct {
	deviceRow
	ETag     string          `json:"etag"`
	Summary  map[string]any  `json:"summary,omitempty"`
	Tags     map[string]any  `json:"tags,omitempty"`
	Sections []sectionView   `json:"sections"`
	Configs  map[string]any  `json:"configurations,omitempty"`
	Other    json.RawMessage `json:"-"`
}

type sectionView struct {
	ID       string `json:"id"`
	Known    bool   `json:"known"`
	Writable bool   `json:"writable"`
	Desired  any    `json:"desired,omitempty"`
	Reported any    `json:"reported,omitempty"`
	Status   any    `json:"status,omitempty"`
	Errors   any    `json:"errors,omitempty"`
}

func (s *Server) viewOf(t *iothub.Twin) *deviceView {
	v := &deviceView{deviceRow: rowOf(t), ETag: t.ETag, Summary: sub(t.Properties.Reported, "__summary"), Tags: t.Tags, Configs: t.Configurations}
	ids := map[string]bool{}
	for k := range t.Properties.Desired {
		ids[k] = true
	}
	for k := range t.Properties.Reported {
		ids[k] = true
	}
	for id := range ids {
		if strings.HasPrefix(id, "$") || strings.HasPrefix(id, "__") {
			continue
		}
		sv := sectionView{ID: id, Desired: t.Properties.Desired[id]}
		if sec, ok := s.sections[id]; ok {
			sv.Known, sv.Writable = true, sec.Writable
		}
		if rep, ok := t.Properties.Reported[id].(map[string]any); ok {
			sv.Status, sv.Errors = rep["__status"], rep["__errors"]
			obs := map[string]any{}
			for k, x := range rep {
				if k != "__status" && k != "__errors" {
					obs[k] = x
				}
			}
			sv.Reported = obs
		} else {
			sv.Reported = t.Properties.Reported[id]
		}
		v.Sections = append(v.Sections, sv)
	}
	// What is desired first, what only reports (deviceInfo) after.
	sort.Slice(v.Sections, func(i, j int) bool {
		a, b := v.Sections[i], v.Sections[j]
		if (a.Desired == nil) != (b.Desired == nil) {
			return a.Desired != nil
		}
		return a.ID < b.ID
	})
	if v.Sections == nil {
		v.Sections = []sectionView{}
	}
	return v
}

func (s *Server) device(w http.ResponseWriter, r *http.Request) {
	t, err := s.opts.Client.GetTwin(r.Context(), r.PathValue("id"))
	if err != nil {
		s.hubError(w, err)
		return
	}
	writeJSON(w, 200, s.viewOf(t))
}

// validate checks a section's value against the agent's schema.
func (s *Server) validate(id string, value json.RawMessage) ([]schemas.Problem, error) {
	sec, ok := s.sections[id]
	if !ok {
		return nil, fmt.Errorf("unknown section %q: no provider owns it", id)
	}
	if !sec.Writable {
		return nil, fmt.Errorf("section %q only reports: it has no desired state", id)
	}
	if sec.schema == nil {
		return nil, fmt.Errorf("section %q has no schema", id)
	}
	return sec.schema.Validate(value)
}

// putSection replaces one section of a device's desired properties, if
// the twin is still at the etag the page showed.
func (s *Server) putSection(w http.ResponseWriter, r *http.Request) {
	id, name := r.PathValue("id"), r.PathValue("section")
	if !sectionRE.MatchString(name) {
		fail(w, 400, "section %q: not a section name", name)
		return
	}
	var body struct {
		Value json.RawMessage `json:"value"`
		// ETag and DesiredVersion are those of the twin the edit started
		// from.
		ETag           string `json:"etag"`
		DesiredVersion int64  `json:"desiredVersion"`
	}
	if err := decodeBody(r, &body); err != nil {
		fail(w, 400, "%v", err)
		return
	}
	if body.DesiredVersion <= 0 {
		fail(w, 400, "desiredVersion: required (that of the twin the edit started from)")
		return
	}
	ps, err := s.validate(name, body.Value)
	if err != nil {
		fail(w, 400, "%v", err)
		return
	}
	if len(ps) > 0 {
		writeJSON(w, 422, apiError{Error: fmt.Sprintf("%s: %d problem(s), nothing sent", name, len(ps)), Problems: problems(ps)})
		return
	}
	var value any
	if err := json.Unmarshal(body.Value, &value); err != nil {
		fail(w, 400, "value: %v", err)
		return
	}
	ctx := r.Context()
	t, err := s.opts.Client.GetTwin(ctx, id)
	if err != nil {
		s.hubError(w, err)
		return
	}
	// The twin's etag changes with every reported property too; what must
	// not have changed since the page read the twin is its desired
	// properties. The write then carries the etag just read, so that the
	// hub refuses it if anything changed in between.
	if num(t.Properties.Desired["$version"]) != body.DesiredVersion {
		writeJSON(w, 412, apiError{Error: fmt.Sprintf("the twin's desired properties changed since the page read them (version %d, now %d); reload and edit again",
			body.DesiredVersion, num(t.Properties.Desired["$version"])), ETag: t.ETag})
		return
	}
	// A twin patch merges: keys the new value no longer has are set to
	// null so that the section becomes exactly the value.
	patch := replacement(t.Properties.Desired[name], value)
	if s.beforePatch != nil {
		s.beforePatch() // a test's change of the twin in between
	}
	nt, err := s.opts.Client.PatchTwin(ctx, id, iothub.TwinPatch{Desired: map[string]any{name: patch}}, t.ETag)
	if err != nil {
		var se *iothub.ServiceError
		if errors.As(err, &se) && se.StatusCode == http.StatusPreconditionFailed {
			writeJSON(w, 412, apiError{Error: "the twin changed since the page read it; reload and edit again"})
			return
		}
		s.hubError(w, err)
		return
	}
	writeJSON(w, 200, s.viewOf(nt))
}

// replacement is the merge patch that turns have into want.
func replacement(have, want any) any {
	hm, ok1 := have.(map[string]any)
	wm, ok2 := want.(map[string]any)
	if !ok1 || !ok2 {
		return want
	}
	out := map[string]any{}
	for k, v := range wm {
		out[k] = replacement(hm[k], v)
	}
	for k := range hm {
		if _, ok := wm[k]; !ok && !strings.HasPrefix(k, "$") {
			out[k] = nil
		}
	}
	return out
}

// invoke calls one named direct method on a device.
func (s *Server) invoke(w http.ResponseWriter, r *http.Request) {
	id, name := r.PathValue("id"), r.PathValue("method")
	if !methodRE.MatchString(name) {
		fail(w, 400, "method %q: not a method name", name)
		return
	}
	var body struct {
		Payload json.RawMessage `json:"payload"`
		Timeout int             `json:"timeout"`
	}
	if err := decodeBody(r, &body); err != nil {
		fail(w, 400, "%v", err)
		return
	}
	if body.Timeout <= 0 {
		body.Timeout = 30
	}
	if body.Timeout > 300 {
		fail(w, 400, "timeout: at most 300 seconds, got %d", body.Timeout)
		return
	}
	if sec, m, ok := strings.Cut(name, "."); ok {
		if x, ok := s.sections[sec]; ok {
			if sch, ok := x.methods[m]; ok {
				p := body.Payload
				if len(p) == 0 {
					p = json.RawMessage("null")
				}
				ps, err := sch.Validate(p)
				if err != nil {
					fail(w, 400, "%v", err)
					return
				}
				if len(ps) > 0 {
					writeJSON(w, 422, apiError{Error: fmt.Sprintf("%s payload: %d problem(s), nothing sent", name, len(ps)), Problems: problems(ps)})
					return
				}
			}
		}
	}
	resp, err := s.opts.Client.InvokeMethod(r.Context(), id, iothub.MethodRequest{MethodName: name, Payload: body.Payload,
		ResponseTimeout: time.Duration(body.Timeout) * time.Second})
	if err != nil {
		s.hubError(w, err)
		return
	}
	writeJSON(w, 200, resp)
}

// configView is one configuration with its rollout's progress.
type configView struct {
	ID              string            `json:"id"`
	Name            string            `json:"name"`
	Managed         bool              `json:"managed"`
	ETag            string            `json:"etag"`
	Priority        int               `json:"priority"`
	TargetCondition string            `json:"targetCondition"`
	Labels          map[string]string `json:"labels,omitempty"`
	Sections        []string          `json:"sections"`
	Content         map[string]any    `json:"content,omitempty"`
	Created         *time.Time        `json:"created,omitempty"`
	Progress        *fleet.Progress   `json:"progress,omitempty"`
	Stages          []stageView       `json:"stages,omitempty"`
	MaxFailed       string            `json:"maxFailed,omitempty"`
	// OverMaxFailed: failures cross the rollout's maxFailed (twinctl
	// rollout run halts it).
	OverMaxFailed bool   `json:"overMaxFailed,omitempty"`
	Error         string `json:"error,omitempty"`
}

type stageView struct {
	Name     string  `json:"name"`
	Target   string  `json:"target"`
	MinReady float64 `json:"minReady"`
	State    string  `json:"state"` // done, current, waiting
}

func (s *Server) configList(ctx context.Context) ([]configView, error) {
	list, err := s.opts.Client.ListConfigurations(ctx, 100)
	if err != nil {
		return nil, err
	}
	out := []configView{}
	for i := range list {
		c := &list[i]
		v := configView{ID: c.ID, Name: fleet.Name(c), Managed: fleet.Managed(c), ETag: c.ETag, Priority: c.Priority,
			TargetCondition: c.TargetCondition, Labels: c.Labels, Sections: fleet.Sections(c), Content: c.Content.DeviceContent, Created: c.CreatedTimeUTC}
		if plan, stage, err := fleet.RolloutPlan(c); err != nil {
			v.Error = err.Error()
		} else if plan != nil {
			v.MaxFailed = plan.MaxFailed.String()
			for j, st := range plan.Stages {
				state := "waiting"
				switch {
				case j < stage || j == stage && c.Labels[fleet.LabelRollout] == fleet.RolloutComplete:
					state = "done"
				case j == stage:
					state = "current"
				}
				v.Stages = append(v.Stages, stageView{Name: st.Name, Target: st.Target, MinReady: st.MinReady, State: state})
			}
		}
		p, err := fleet.Status(ctx, s.opts.Client, c)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			v.Error = err.Error()
		} else {
			v.Progress = p
			if plan, _, _ := fleet.RolloutPlan(c); plan != nil {
				v.OverMaxFailed = plan.MaxFailed.Exceeded(int(p.Failed), int(p.Applied))
			}
		}
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

func (s *Server) configs(w http.ResponseWriter, r *http.Request) {
	l, err := s.configList(r.Context())
	if err != nil {
		s.hubError(w, err)
		return
	}
	writeJSON(w, 200, map[string]any{"configs": l})
}

// configInput is what the page may set on a configuration.
type configInput struct {
	ID              string                     `json:"id"`
	ETag            string                     `json:"etag"`
	TargetCondition string                     `json:"targetCondition"`
	Priority        int                        `json:"priority"`
	Labels          map[string]string          `json:"labels"`
	Sections        map[string]json.RawMessage `json:"sections"`
}

func checkLabels(labels map[string]string) error {
	for k, v := range labels {
		if strings.HasPrefix(k, "twinlet-") {
			return fmt.Errorf("labels/%s: twinlet- labels belong to twinctl apply and rollout", k)
		}
		if k == "" || len(k) > 128 || len(v) > 128 {
			return fmt.Errorf("labels/%s: keys and values hold 1 to 128 characters", k)
		}
	}
	return nil
}

func (s *Server) createConfig(w http.ResponseWriter, r *http.Request) {
	var in configInput
	if err := decodeBody(r, &in); err != nil {
		fail(w, 400, "%v", err)
		return
	}
	if !configRE.MatchString(in.ID) {
		fail(w, 400, "id: lowercase letters, digits and -:+%%_#*?!(),=@;$' up to 128 characters, got %q", in.ID)
		return
	}
	if strings.TrimSpace(in.TargetCondition) == "" {
		fail(w, 400, "targetCondition: required")
		return
	}
	if err := checkLabels(in.Labels); err != nil {
		fail(w, 400, "%v", err)
		return
	}
	if len(in.Sections) == 0 {
		fail(w, 400, "sections: at least one section")
		return
	}
	content := map[string]any{}
	var all []problem
	var names []string
	for name, raw := range in.Sections {
		if !sectionRE.MatchString(name) {
			fail(w, 400, "sections/%s: not a section name", name)
			return
		}
		found, err := s.validate(name, raw)
		if err != nil {
			fail(w, 400, "sections/%s: %v", name, err)
			return
		}
		for _, p := range found {
			all = append(all, problem{Pointer: "/sections/" + name + p.Pointer, Message: p.Message})
		}
		var v any
		json.Unmarshal(raw, &v)
		// As twinctl apply does: the section carries the configuration's
		// id, which the agent echoes in its __status and the default
		// metrics count Ready and Failed by.
		if m, ok := v.(map[string]any); ok {
			meta, _ := m["__meta"].(map[string]any)
			if meta == nil {
				meta = map[string]any{}
			}
			meta["deploymentId"] = in.ID
			m["__meta"] = meta
		}
		content["properties.desired."+name] = v
		names = append(names, name)
	}
	if len(all) > 0 {
		writeJSON(w, 422, apiError{Error: fmt.Sprintf("%d problem(s), nothing sent", len(all)), Problems: all})
		return
	}
	sort.Strings(names)
	ctx := r.Context()
	if res, err := s.opts.Client.TestQueries(ctx, in.TargetCondition, nil); err != nil {
		s.hubError(w, err)
		return
	} else if !res.OK() {
		writeJSON(w, 422, apiError{Error: "targetCondition: " + res.TargetConditionError, Problems: []problem{{Pointer: "/targetCondition", Message: res.TargetConditionError}}})
		return
	}
	cfg := iothub.Configuration{ID: in.ID, Labels: in.Labels, TargetCondition: in.TargetCondition, Priority: in.Priority,
		Content: iothub.ConfigurationContent{DeviceContent: content},
		Metrics: iothub.ConfigurationMetrics{Queries: fleet.DefaultMetrics(in.ID, names, in.TargetCondition)}}
	out, err := s.opts.Client.CreateConfiguration(ctx, cfg)
	if err != nil {
		s.hubError(w, err)
		return
	}
	writeJSON(w, 201, map[string]string{"id": out.ID, "etag": out.ETag})
}

// updateConfig changes what the service lets change: the target
// condition, the priority and the labels (twinctl's own labels kept).
func (s *Server) updateConfig(w http.ResponseWriter, r *http.Request) {
	var in configInput
	if err := decodeBody(r, &in); err != nil {
		fail(w, 400, "%v", err)
		return
	}
	if len(in.Sections) > 0 {
		fail(w, 400, "sections: a configuration's content cannot change; create a new configuration")
		return
	}
	if in.ETag == "" {
		fail(w, 400, "etag: required")
		return
	}
	if err := checkLabels(in.Labels); err != nil {
		fail(w, 400, "%v", err)
		return
	}
	ctx := r.Context()
	cfg, err := s.opts.Client.GetConfiguration(ctx, r.PathValue("id"))
	if err != nil {
		s.hubError(w, err)
		return
	}
	if cfg.ETag != in.ETag {
		writeJSON(w, 412, apiError{Error: "the configuration changed since the page read it; reload and edit again", ETag: cfg.ETag})
		return
	}
	if strings.TrimSpace(in.TargetCondition) != "" && in.TargetCondition != cfg.TargetCondition {
		if res, err := s.opts.Client.TestQueries(ctx, in.TargetCondition, nil); err != nil {
			s.hubError(w, err)
			return
		} else if !res.OK() {
			writeJSON(w, 422, apiError{Error: "targetCondition: " + res.TargetConditionError, Problems: []problem{{Pointer: "/targetCondition", Message: res.TargetConditionError}}})
			return
		}
		cfg.TargetCondition = in.TargetCondition
	}
	labels := map[string]string{}
	for k, v := range cfg.Labels {
		if strings.HasPrefix(k, "twinlet-") {
			labels[k] = v
		}
	}
	for k, v := range in.Labels {
		labels[k] = v
	}
	cfg.Labels = labels
	cfg.Priority = in.Priority
	out, err := s.opts.Client.UpdateConfiguration(ctx, *cfg)
	if err != nil {
		s.hubError(w, err)
		return
	}
	writeJSON(w, 200, map[string]string{"id": out.ID, "etag": out.ETag})
}

func (s *Server) deleteConfig(w http.ResponseWriter, r *http.Request) {
	etag := r.URL.Query().Get("etag")
	if etag == "" {
		fail(w, 400, "etag: required")
		return
	}
	if err := s.opts.Client.DeleteConfiguration(r.Context(), r.PathValue("id"), etag); err != nil {
		s.hubError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
