package hub

import (
	"sort"
	"strings"
	"sync"
	"time"
)

// One evaluation step holds h.mu for at most admBatch twins and about
// admBatchWork query evaluations (targets and metrics, over all
// configurations); between steps MQTT and REST handlers get the lock.
const (
	admBatch     = 64
	admBatchWork = 2048
)

// admState is the configuration engine's state. Fields after crud are
// guarded by h.mu.
type admState struct {
	crud sync.Mutex // serialises configuration changes and their writes

	cfgs  map[string]*cfgState
	seq   int64
	dirty map[string]struct{} // twins to evaluate
	all   bool                // evaluate every twin
	idx   admIndex
	wake  chan struct{}
	// passes counts finished evaluation passes (tests and benchmarks
	// wait on it).
	passes uint64
	busy   bool
}

func (a *admState) init() {
	if a.cfgs == nil {
		a.cfgs = map[string]*cfgState{}
		a.dirty = map[string]struct{}{}
		a.wake = make(chan struct{}, 1)
	}
}

// admIndex says which twin changes can change a target condition's or a
// metric's result: which tags and reported properties (top-level names)
// any of them reads, and whether one reads desired properties.
type admIndex struct {
	tagsAll, reportedAll, desired bool
	tags, reported                map[string]bool
}

func (a *admState) rebuildIndex() {
	idx := admIndex{tags: map[string]bool{}, reported: map[string]bool{}}
	add := func(p []string) {
		switch p[0] {
		case "tags":
			if len(p) == 1 {
				idx.tagsAll = true
			} else {
				idx.tags[p[1]] = true
			}
		case "properties":
			switch {
			case len(p) == 1:
				idx.reportedAll, idx.desired = true, true
			case p[1] == "reported" && len(p) == 2:
				idx.reportedAll = true
			case p[1] == "reported":
				idx.reported[p[2]] = true
			case p[1] == "desired":
				idx.desired = true
			}
		}
	}
	for _, s := range a.cfgs {
		if s.target != nil {
			for _, p := range s.target.WherePaths() {
				add(p)
			}
		}
		for _, m := range s.metrics {
			for _, p := range m.WherePaths() {
				add(p)
			}
		}
	}
	a.idx = idx
}

func (a *admState) signal() {
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

// admChangedLocked schedules every twin after a configuration change: at
// once, or with Options.ADMInterval at the next period unless created (the
// service evaluates a new configuration shortly after its creation). Call
// with h.mu held.
func (h *Hub) admChangedLocked(created bool) {
	h.adm.all = true
	h.adm.rebuildIndex()
	if created || h.opts.ADMInterval <= 0 {
		h.adm.signal()
	}
}

// admTouchLocked schedules one twin (created, deleted, or changed where a
// condition looks). Call with h.mu held.
func (h *Hub) admTouchLocked(key string) {
	if len(h.adm.cfgs) == 0 && !h.admTracks(key) {
		return
	}
	h.adm.dirty[key] = struct{}{}
	if h.opts.ADMInterval <= 0 {
		h.adm.signal()
	}
}

// admTracks reports whether a twin still carries configuration state.
func (h *Hub) admTracks(key string) bool {
	r := h.records[key]
	return r != nil && (len(r.Twin.Configs) > 0 || len(r.Twin.CfgOwners) > 0)
}

// admTouchReportedLocked schedules a twin after a reported patch if a
// condition or metric reads one of the patched properties.
func (h *Hub) admTouchReportedLocked(key string, patch map[string]any) {
	idx := &h.adm.idx
	if idx.reportedAll {
		h.admTouchLocked(key)
		return
	}
	for k := range patch {
		if idx.reported[k] {
			h.admTouchLocked(key)
			return
		}
	}
}

// admTouchTwinLocked schedules a twin after a service-side twin update.
func (h *Hub) admTouchTwinLocked(key string, tags, desired map[string]any, replace bool) {
	idx := &h.adm.idx
	if desired != nil && idx.desired {
		h.admTouchLocked(key)
		return
	}
	if tags == nil {
		return
	}
	if idx.tagsAll || replace && len(idx.tags) > 0 {
		h.admTouchLocked(key)
		return
	}
	for k := range tags {
		if idx.tags[k] {
			h.admTouchLocked(key)
			return
		}
	}
}

// admLoop runs evaluation passes until the hub closes: at once on every
// change, or with Options.ADMInterval on a ticker (a configuration's
// creation still runs a pass at once, as the service does shortly after).
func (h *Hub) admLoop(stop <-chan struct{}) {
	var tick <-chan time.Time
	if h.opts.ADMInterval > 0 {
		t := time.NewTicker(h.opts.ADMInterval)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-stop:
			return
		case <-h.adm.wake:
		case <-tick:
		}
		h.admPass(stop)
	}
}

// admPass evaluates the scheduled twins in batches.
func (h *Hub) admPass(stop <-chan struct{}) {
	h.mu.Lock()
	var keys []string
	if h.adm.all {
		keys = make([]string, 0, len(h.records)+len(h.adm.dirty))
		for k := range h.records {
			keys = append(keys, k)
		}
		for k := range h.adm.dirty {
			if h.records[k] == nil {
				keys = append(keys, k)
			}
		}
	} else {
		keys = make([]string, 0, len(h.adm.dirty))
		for k := range h.adm.dirty {
			keys = append(keys, k)
		}
	}
	h.adm.all = false
	clear(h.adm.dirty)
	if len(keys) == 0 {
		h.adm.passes++
		h.mu.Unlock()
		return
	}
	h.adm.busy = true
	h.mu.Unlock()
	sort.Strings(keys)
	for i := 0; i < len(keys); {
		select {
		case <-stop:
			return
		default:
		}
		h.mu.Lock()
		cfgs := h.admOrderLocked()
		perTwin := 1
		for _, s := range cfgs {
			perTwin += 1 + len(s.metrics)
		}
		n := max(1, min(admBatch, admBatchWork/perTwin))
		now := time.Now()
		for _, k := range keys[i:min(i+n, len(keys))] {
			h.admEvalLocked(k, cfgs, now)
		}
		h.mu.Unlock()
		i += n
	}
	h.mu.Lock()
	h.adm.passes++
	h.adm.busy = false
	h.mu.Unlock()
}

// admOrderLocked lists configurations by precedence: highest priority
// first, ties to the most recently created.
func (h *Hub) admOrderLocked() []*cfgState {
	out := make([]*cfgState, 0, len(h.adm.cfgs))
	for _, s := range h.adm.cfgs {
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].conf.Priority != out[j].conf.Priority {
			return out[i].conf.Priority > out[j].conf.Priority
		}
		return out[i].seq > out[j].seq
	})
	return out
}

// admDoc is the query document of a twin for target conditions and
// metrics, decoded from the twin (a tree of its own).
func admDoc(r *record) map[string]any {
	id := &r.Identity
	doc := map[string]any{
		"deviceId":        id.DeviceID,
		"status":          id.Status,
		"connectionState": id.ConnectionState,
		"tags":            r.Twin.Tags.obj(),
		"properties":      map[string]any{"desired": r.Twin.Desired.obj(), "reported": r.Twin.Reported.obj()},
	}
	if id.ModuleID != "" {
		doc["moduleId"] = id.ModuleID
	}
	if id.Capabilities != nil {
		doc["capabilities"] = map[string]any{"iotEdge": id.Capabilities.IotEdge}
	}
	doc["configurations"] = statusDoc(r.Twin.Configs)
	return doc
}

func statusDoc(st pairs) map[string]any {
	out := make(map[string]any, len(st)/2)
	for i := 0; i < len(st); i += 2 {
		out[st[i]] = map[string]any{"status": st[i+1]}
	}
	return out
}

// admEvalLocked evaluates one twin against the configurations (in
// precedence order): which target it, which wins each content path, what
// its desired properties must change, its statuses and metric
// memberships. Call with h.mu held.
func (h *Hub) admEvalLocked(key string, cfgs []*cfgState, now time.Time) {
	r := h.records[key]
	if r == nil {
		for _, s := range h.adm.cfgs {
			s.forget(key)
		}
		return
	}
	t := &r.Twin
	isModule := r.Identity.ModuleID != ""
	doc := admDoc(r)

	type claim struct {
		cfg  *cfgState
		path *contentPath
	}
	var claims []claim
	var status map[string]string
	for _, s := range cfgs {
		if s.modules != isModule || s.target != nil && !s.target.Match(doc) {
			continue
		}
		st := ConfigTargeted
		if len(s.paths) == 0 {
			st = ConfigApplied
		}
	paths:
		for i := range s.paths {
			p := &s.paths[i]
			for _, c := range claims {
				if isPrefix(c.path.segs, p.segs) || isPrefix(p.segs, c.path.segs) {
					continue paths
				}
			}
			claims = append(claims, claim{s, p})
			st = ConfigApplied
		}
		if status == nil {
			status = map[string]string{}
		}
		status[s.conf.ID] = st
	}

	// Content: write the paths whose winner changed, remove the paths no
	// configuration claims any more. A path that keeps its winner is left
	// alone, so a direct desired patch on it stays until the winner
	// changes.
	var owners map[string]string
	var sets [][]string
	var vals []any
	for _, c := range claims {
		if owners == nil {
			owners = make(map[string]string, len(claims))
		}
		owners[c.path.key] = c.cfg.conf.ID
		if owner, _ := t.CfgOwners.get(c.path.key); owner != c.cfg.conf.ID {
			sets = append(sets, c.path.segs)
			vals = append(vals, c.path.value)
		}
	}
	var dels [][]string
	for i := 0; i < len(t.CfgOwners); i += 2 {
		k := t.CfgOwners[i]
		if _, ok := owners[k]; !ok {
			dels = append(dels, strings.Split(strings.TrimPrefix(k, "properties.desired."), "."))
		}
	}
	sort.Slice(dels, func(i, j int) bool { return strings.Join(dels[i], ".") < strings.Join(dels[j], ".") })
	changed := false
	if len(sets) > 0 || len(dels) > 0 {
		desired := h.writeDesiredPathsLocked(r, dels, sets, vals, now)
		doc["properties"].(map[string]any)["desired"] = desired
		changed = true
		if n := size(desired); n > maxSectionBytes {
			// Each content fits; their sum on one twin may not. The
			// twin keeps it (a device patch would be refused instead).
			h.log.Warn("configurations make desired properties larger than the service allows", "twin", key, "bytes", n, "limit", maxSectionBytes)
		}
	}
	if !t.CfgOwners.equal(owners) {
		t.CfgOwners = pairsOf(owners)
		changed = true
	}
	if !t.Configs.equal(status) {
		t.Configs = pairsOf(status)
		t.Version++
		changed = true
		doc["configurations"] = statusDoc(t.Configs)
	}
	if changed {
		h.markDirty(key)
	}

	for _, s := range h.adm.cfgs {
		st, targeted := status[s.conf.ID]
		setMember(s.targeted, key, targeted)
		setMember(s.applied, key, st == ConfigApplied)
		for name, q := range s.metrics {
			in := (q.From == "devices.modules") == isModule && q.Match(doc)
			setMember(s.members[name], key, in)
		}
	}
}

func (s *cfgState) forget(key string) {
	delete(s.targeted, key)
	delete(s.applied, key)
	for _, m := range s.members {
		delete(m, key)
	}
}

func setMember(set map[string]struct{}, key string, in bool) {
	_, was := set[key]
	switch {
	case in && !was:
		set[key] = struct{}{}
	case !in && was:
		delete(set, key)
	}
}

func sameOwners(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// ADMPasses is the number of finished configuration evaluation passes
// and whether one is running or scheduled; tests wait for a pass to end
// after a change.
func (h *Hub) ADMPasses() (passes uint64, pending bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.adm.passes, h.adm.busy || h.adm.all || len(h.adm.dirty) > 0
}
