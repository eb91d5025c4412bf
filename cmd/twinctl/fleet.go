package main

// GitOps: the plan that turns a fleet repository into configurations and
// twin patches, shared by apply, apply --dry-run and diff.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"reflect"
	"sort"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/twinlet/twinlet/internal/fleet"
	"github.com/twinlet/twinlet/internal/iothub"
	"github.com/twinlet/twinlet/providers"
	_ "github.com/twinlet/twinlet/providers/standard" // the sections a fleet may set
)

// loadRepo reads and validates a fleet repository; nothing is sent when
// it has any problem.
func loadRepo(dir string) (*fleet.Repo, error) {
	repo, err := fleet.LoadDir(dir, func(id string) bool {
		info, ok := providers.Lookup(id)
		return ok && !info.ReadOnly
	})
	if ps, ok := err.(fleet.Problems); ok {
		return nil, fmt.Errorf("%s: %d problem(s), nothing sent:\n%w", dir, len(ps), ps)
	}
	return repo, err
}

// fleetPlan is what applying a repository changes.
type fleetPlan struct {
	creates []*createStep
	updates []*updateStep
	retires []*retireStep                      // old contents to delete once the new one covers their devices
	extra   []*iothub.Configuration            // managed, no longer in the repository (deleted with --prune)
	devices []*deviceStep                      // twins to patch
	current map[string]*iothub.Configuration   // by id, every configuration on the hub
	byName  map[string][]*iothub.Configuration // managed, by FleetConfig name
}

type createStep struct {
	cfg  *fleet.Config
	want *iothub.Configuration
	old  []*iothub.Configuration // same name, other content
}

type updateStep struct {
	have, want *iothub.Configuration
	changes    []string
}

type retireStep struct {
	newID string
	old   *iothub.Configuration
	// waitRollout: the new content is still being rolled out; the old one
	// stays until `rollout run` completes.
	waitRollout bool
}

type deviceStep struct {
	dev     *fleet.Device
	patch   iothub.TwinPatch
	changes []string
}

// empty reports whether the hub already matches the repository.
func (p *fleetPlan) empty() bool {
	return len(p.creates) == 0 && len(p.updates) == 0 && len(p.extra) == 0 && len(p.devices) == 0 && len(p.retiresNow()) == 0
}

func (p *fleetPlan) retiresNow() []*retireStep {
	var out []*retireStep
	for _, r := range p.retires {
		if !r.waitRollout {
			out = append(out, r)
		}
	}
	return out
}

// planFleet compares the repository with the hub.
func planFleet(ctx context.Context, sc *iothub.ServiceClient, repo *fleet.Repo) (*fleetPlan, error) {
	list, err := sc.ListConfigurations(ctx, 100)
	if err != nil {
		return nil, err
	}
	p := &fleetPlan{current: map[string]*iothub.Configuration{}, byName: map[string][]*iothub.Configuration{}}
	for i := range list {
		c := &list[i]
		p.current[c.ID] = c
		if fleet.Managed(c) {
			p.byName[fleet.Name(c)] = append(p.byName[fleet.Name(c)], c)
		}
	}
	inRepo := map[string]bool{}
	for _, c := range repo.Configs {
		inRepo[c.Name] = true
		id := c.ID()
		var others []*iothub.Configuration
		for _, o := range p.byName[c.Name] {
			if o.ID != id {
				others = append(others, o)
			}
		}
		have := p.current[id]
		if have == nil {
			want := c.Render(0)
			p.creates = append(p.creates, &createStep{cfg: c, want: want, old: others})
			for _, o := range others {
				p.retires = append(p.retires, &retireStep{newID: id, old: o, waitRollout: c.Rollout != nil})
			}
			continue
		}
		want := desiredUpdate(c, have)
		if ch := configChanges(have, want); len(ch) > 0 {
			p.updates = append(p.updates, &updateStep{have: have, want: want, changes: ch})
		}
		waiting := c.Rollout != nil && want.Labels[fleet.LabelRollout] != fleet.RolloutComplete
		for _, o := range others {
			p.retires = append(p.retires, &retireStep{newID: id, old: o, waitRollout: waiting})
		}
	}
	for name, cs := range p.byName {
		if !inRepo[name] {
			p.extra = append(p.extra, cs...)
		}
	}
	sort.Slice(p.extra, func(i, j int) bool { return p.extra[i].ID < p.extra[j].ID })
	for _, d := range repo.Devices {
		st, err := planDevice(ctx, sc, d)
		if err != nil {
			return nil, err
		}
		if st != nil {
			p.devices = append(p.devices, st)
		}
	}
	return p, nil
}

// desiredUpdate is the configuration have should become: the repository's
// priority, labels and metrics; the target of its rollout stage, kept
// from the hub (rollout run moves it).
func desiredUpdate(c *fleet.Config, have *iothub.Configuration) *iothub.Configuration {
	stage := 0
	if c.Rollout != nil {
		if _, s, err := fleet.RolloutPlan(have); err == nil {
			stage = s
		}
	}
	want := c.Render(stage)
	if c.Rollout != nil {
		for _, k := range []string{fleet.LabelRollout, fleet.LabelReason} {
			if v, ok := have.Labels[k]; ok {
				want.Labels[k] = v
			} else {
				delete(want.Labels, k)
			}
		}
	}
	want.ETag = have.ETag
	want.Content = have.Content
	return want
}

// configChanges lists what differs in the mutable parts.
func configChanges(have, want *iothub.Configuration) []string {
	var out []string
	if have.Priority != want.Priority {
		out = append(out, fmt.Sprintf("priority: %d -> %d", have.Priority, want.Priority))
	}
	if strings.TrimSpace(have.TargetCondition) != strings.TrimSpace(want.TargetCondition) {
		out = append(out, fmt.Sprintf("targetCondition: %q -> %q", have.TargetCondition, want.TargetCondition))
	}
	out = append(out, mapChanges("labels", have.Labels, want.Labels)...)
	out = append(out, mapChanges("metrics", have.Metrics.Queries, want.Metrics.Queries)...)
	return out
}

func mapChanges(what string, have, want map[string]string) []string {
	var out []string
	keys := map[string]bool{}
	for k := range have {
		keys[k] = true
	}
	for k := range want {
		keys[k] = true
	}
	for _, k := range sortedKeys(keys) {
		h, hok := have[k]
		w, wok := want[k]
		switch {
		case hok && !wok:
			out = append(out, fmt.Sprintf("%s.%s: removed (was %q)", what, k, h))
		case !hok && wok:
			out = append(out, fmt.Sprintf("%s.%s: %q", what, k, w))
		case h != w:
			out = append(out, fmt.Sprintf("%s.%s: %q -> %q", what, k, h, w))
		}
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// planDevice compares a DeviceConfig with the device's twin: only the tags
// and sections it names.
func planDevice(ctx context.Context, sc *iothub.ServiceClient, d *fleet.Device) (*deviceStep, error) {
	tags, desired := d.DevicePatch()
	t, err := sc.GetTwin(ctx, d.ID)
	if err != nil {
		return nil, fmt.Errorf("%s: device %s: %w", d.Pos, d.ID, err)
	}
	st := &deviceStep{dev: d}
	for _, k := range sortedKeys(tags) {
		if !jsonEqual(t.Tags[k], tags[k]) {
			if st.patch.Tags == nil {
				st.patch.Tags = map[string]any{}
			}
			st.patch.Tags[k] = tags[k]
			st.changes = append(st.changes, fmt.Sprintf("tags.%s: %s -> %s", k, compact(t.Tags[k]), compact(tags[k])))
		}
	}
	for _, k := range sortedKeys(desired) {
		if !jsonEqual(t.Properties.Desired[k], desired[k]) {
			if st.patch.Desired == nil {
				st.patch.Desired = map[string]any{}
			}
			st.patch.Desired[k] = replaceWhole(t.Properties.Desired[k], desired[k])
			st.changes = append(st.changes, fmt.Sprintf("desired.%s: %s -> %s", k, compact(stripMetadata(t.Properties.Desired[k])), compact(desired[k])))
		}
	}
	if len(st.changes) == 0 {
		return nil, nil
	}
	return st, nil
}

// replaceWhole turns a desired section into a patch that replaces the
// twin's section: a twin patch merges objects, so keys the repository no
// longer has are sent as null.
func replaceWhole(have, want any) any {
	h, ok1 := have.(map[string]any)
	w, ok2 := want.(map[string]any)
	if !ok1 || !ok2 {
		return want
	}
	out := map[string]any{}
	for k, v := range w {
		out[k] = replaceWhole(h[k], v)
	}
	for k := range h {
		if _, keep := w[k]; !keep && !strings.HasPrefix(k, "$") {
			out[k] = nil
		}
	}
	return out
}

// jsonEqual compares two JSON values, ignoring $metadata and $version.
func jsonEqual(a, b any) bool {
	return reflect.DeepEqual(normalize(stripMetadata(a)), normalize(b))
}

func normalize(v any) any {
	b, err := json.Marshal(v)
	if err != nil {
		return v
	}
	var out any
	_ = json.Unmarshal(b, &out)
	return out
}

func stripMetadata(v any) any {
	m, ok := v.(map[string]any)
	if !ok {
		return v
	}
	out := make(map[string]any, len(m))
	for k, x := range m {
		if strings.HasPrefix(k, "$") {
			continue
		}
		out[k] = stripMetadata(x)
	}
	return out
}

func compact(v any) string {
	if v == nil {
		return "(none)"
	}
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}

// render prints the plan as a readable diff.
func (p *fleetPlan) render(w io.Writer, prune bool) {
	for _, c := range p.creates {
		fmt.Fprintf(w, "+ configuration %s (%s, priority %d, target %s)\n", c.want.ID, c.cfg.Pos, c.want.Priority, c.want.TargetCondition)
		var oldContent map[string]any
		for _, o := range c.old {
			fmt.Fprintf(w, "  replaces %s once the new content is applied to its devices\n", o.ID)
			oldContent = o.Content.DeviceContent
		}
		writeLineDiff(w, contentYAML(oldContent), contentYAML(c.want.Content.DeviceContent))
	}
	for _, u := range p.updates {
		fmt.Fprintf(w, "~ configuration %s\n", u.have.ID)
		for _, ch := range u.changes {
			fmt.Fprintf(w, "    %s\n", ch)
		}
	}
	for _, r := range p.retires {
		if r.waitRollout {
			fmt.Fprintf(w, "  configuration %s stays until the rollout of %s completes\n", r.old.ID, r.newID)
		} else if p.current[r.newID] != nil {
			fmt.Fprintf(w, "- configuration %s (replaced by %s)\n", r.old.ID, r.newID)
		}
	}
	for _, e := range p.extra {
		if prune {
			fmt.Fprintf(w, "- configuration %s (not in the repository)\n", e.ID)
		} else {
			fmt.Fprintf(w, "- configuration %s (not in the repository; apply --prune deletes it)\n", e.ID)
		}
	}
	for _, d := range p.devices {
		fmt.Fprintf(w, "~ device %s (%s)\n", d.dev.ID, d.dev.Pos)
		for _, ch := range d.changes {
			fmt.Fprintf(w, "    %s\n", ch)
		}
	}
}

// contentYAML renders configuration content as YAML lines, sections in
// order, without the deploymentId that twinctl adds.
func contentYAML(content map[string]any) []string {
	if content == nil {
		return nil
	}
	m := map[string]any{}
	for k, v := range content {
		v = normalize(v)
		if sec, ok := v.(map[string]any); ok {
			if meta, ok := sec["__meta"].(map[string]any); ok {
				delete(meta, "deploymentId")
				if len(meta) == 0 {
					delete(sec, "__meta")
				}
			}
		}
		m[strings.TrimPrefix(k, "properties.desired.")] = v
	}
	b, err := json.Marshal(m)
	if err != nil {
		return nil
	}
	y, err := yaml.JSONToYAML(b)
	if err != nil {
		return nil
	}
	return strings.Split(strings.TrimRight(string(y), "\n"), "\n")
}

// writeLineDiff prints b against a, line by line ("+", "-", " "), by the
// longest common subsequence. Without a, every line is "+".
func writeLineDiff(w io.Writer, a, b []string) {
	n, m := len(a), len(b)
	lcs := make([][]int, n+1)
	for i := range lcs {
		lcs[i] = make([]int, m+1)
	}
	for i := n - 1; i >= 0; i-- {
		for j := m - 1; j >= 0; j-- {
			if a[i] == b[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	i, j := 0, 0
	for i < n || j < m {
		switch {
		case i < n && j < m && a[i] == b[j]:
			fmt.Fprintf(w, "      %s\n", a[i])
			i, j = i+1, j+1
		case j < m && (i == n || lcs[i][j+1] >= lcs[i+1][j]):
			fmt.Fprintf(w, "    + %s\n", b[j])
			j++
		default:
			fmt.Fprintf(w, "    - %s\n", a[i])
			i++
		}
	}
}

// count runs SELECT COUNT() over devices matching cond.
func count(ctx context.Context, sc *iothub.ServiceClient, cond string) (int, error) {
	return fleet.Count(ctx, sc, cond)
}

// covered reports whether every device that the new configuration's
// target selects and that the old one reaches has the new one Applied, and
// the hub has evaluated the new one for every device of its target: then
// deleting the old one takes no setting away from any device.
func covered(ctx context.Context, sc *iothub.ServiceClient, newCfg *iothub.Configuration, oldID string) (bool, error) {
	st := "configurations.[[" + newCfg.ID + "]].status"
	want, err := count(ctx, sc, newCfg.TargetCondition)
	if err != nil {
		return false, err
	}
	targeted, err := count(ctx, sc, "IS_DEFINED("+st+")")
	if err != nil {
		return false, err
	}
	if targeted < want {
		return false, nil
	}
	cond := "IS_DEFINED(configurations.[[" + oldID + "]].status) AND NOT (IS_DEFINED(" + st + ") AND " + st + " = 'Applied')"
	if t := strings.TrimSpace(newCfg.TargetCondition); t != "*" {
		cond += " AND (" + t + ")"
	}
	left, err := count(ctx, sc, cond)
	return left == 0, err
}

// retire deletes old once newCfg covers its devices, polling until
// deadline.
func retire(ctx context.Context, sc *iothub.ServiceClient, newCfg *iothub.Configuration, old *iothub.Configuration, every time.Duration, deadline time.Time) error {
	for {
		ok, err := covered(ctx, sc, newCfg, old.ID)
		if err != nil {
			return err
		}
		if ok {
			if err := sc.DeleteConfiguration(ctx, old.ID, ""); err != nil && !iothub.IsNotFound(err) {
				return err
			}
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("configuration %s is not yet applied to every device of %s; %s kept (run apply again to finish)", newCfg.ID, old.ID, old.ID)
		}
		if err := pause(ctx, every); err != nil {
			return err
		}
	}
}

// pause waits d or until ctx ends.
func pause(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
