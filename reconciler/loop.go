package reconciler

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/twinlet/twinlet/internal/policy"
	"github.com/twinlet/twinlet/providers"
)

// RunOptions configure the long-running loop.
type RunOptions struct {
	// Resync re-reconciles every section this often (±10% jitter) to heal
	// drift that no watch saw; 0 means 5 minutes.
	Resync time.Duration
	// PolicyPoll re-hashes the policy directory this often while it is
	// not watched (no inotify, the directory missing or removed); 0
	// means 10 seconds. While the watch is in place the directory is
	// re-hashed at each resync only, in the resync's own wake, so that an
	// idle agent does not wake up for it.
	PolicyPoll time.Duration
	// Backoff for transient failures; zero means DefaultBackoff.
	Backoff Backoff
	// Reload, when it receives, re-reads every source and reconciles
	// everything (SIGHUP).
	Reload <-chan struct{}
	// Enqueue, when it receives section ids, reconciles them (for
	// example from a twin patch); "*" means every section.
	Enqueue <-chan []string
}

// Enqueue adds sections to the running loop's queue (no-op before Run).
func (r *Reconciler) Enqueue(ids ...string) {
	r.mu.Lock()
	q := r.q
	r.mu.Unlock()
	if q != nil {
		q.Add(ids...)
	}
}

// QueueLen is the number of sections waiting, for metrics.
func (r *Reconciler) QueueLen() int {
	r.mu.Lock()
	q := r.q
	r.mu.Unlock()
	if q == nil {
		return 0
	}
	return q.Len()
}

// Run reconciles every section, then keeps reconciling on policy changes
// (fsnotify plus a periodic hash re-read), on drift (the resync timer and
// provider path watches), and on reloads, until ctx ends. Sources only
// enqueue section keys; Options.Workers workers reconcile them side by
// side, one section on one worker at a time, dependencies first. Run
// returns once every worker stopped: a provider call in progress is
// cancelled through its context.
func (r *Reconciler) Run(ctx context.Context, ro RunOptions) error {
	if ro.Resync <= 0 {
		ro.Resync = 5 * time.Minute
	}
	if ro.PolicyPoll <= 0 {
		ro.PolicyPoll = 10 * time.Second
	}
	if ro.Backoff == (Backoff{}) {
		ro.Backoff = DefaultBackoff
	}
	q := newQueue(r.opts.Now)
	r.mu.Lock()
	r.q = q
	r.mu.Unlock()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Direct methods end with the loop.
	stopMethods := context.AfterFunc(ctx, r.stop)
	defer stopMethods()
	w, err := fsnotify.NewWatcher()
	if err != nil {
		r.log.Warn("fsnotify unavailable; relying on polling", "err", err)
	}
	// watched: every source directory has its inotify watch in place,
	// so the periodic re-hash can wait for the resync.
	watched := false
	watchSources := func() {
		if w == nil {
			return
		}
		dirs := r.sourceDirs()
		ok := r.opts.PolicyDir == "" || len(dirs) > 0 && dirs[0] == r.opts.PolicyDir
		for _, d := range dirs {
			if err := w.Add(d); err != nil {
				r.log.Debug("watch", "dir", d, "err", err)
				ok = false
			}
		}
		watched = ok
	}
	if w != nil {
		defer w.Close()
	}
	watchSources()
	var events <-chan fsnotify.Event
	var werrs <-chan error
	if w != nil {
		events, werrs = w.Events, w.Errors
	}

	reload := func(all bool) {
		changed, err := r.Reload()
		if err != nil {
			r.log.Error("reload", "err", err)
			return
		}
		if all {
			q.Add(r.order...)
			return
		}
		if len(changed) > 0 {
			r.log.Info("desired state changed", "sections", changed)
			q.Add(changed...)
		}
	}

	// The workers: each takes a section that no other worker holds.
	var wg sync.WaitGroup
	r.watchMu.Lock()
	r.watched = map[string]bool{}
	r.watchMu.Unlock()
	for range r.opts.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.work(ctx, q, ro.Backoff, w)
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()

	q.Add(r.order...)
	r.mu.Lock()
	lastHash := ""
	if r.pol != nil {
		lastHash = r.pol.Hash
	}
	r.mu.Unlock()
	// poll runs only while the sources are not watched; with the watch
	// in place, the resync re-hashes them (a second timer on the same
	// period, out of phase with the resync's jitter, woke the idle agent
	// once more every period).
	poll := time.NewTimer(ro.PolicyPoll)
	defer poll.Stop()
	if watched {
		poll.Stop()
	}
	rehash := func() {
		r.rehashes.Add(1)
		if r.opts.PolicyDir != "" {
			if h := policy.HashDir(r.opts.PolicyDir); h != lastHash {
				lastHash = h
				reload(false)
			}
		}
	}
	resync := time.NewTimer(jitter(ro.Resync))
	defer resync.Stop()
	debounce := time.NewTimer(time.Hour)
	debounce.Stop()
	for {
		select {
		case <-ctx.Done():
			<-done
			return nil
		case ev := <-events:
			if r.isSourceDir(ev.Name) && ev.Has(fsnotify.Remove|fsnotify.Rename) {
				// The directory itself went away: its watch is gone with
				// it. Poll until it is back, then watch it again.
				r.log.Info("policy directory gone; polling for it", "dir", ev.Name)
				watched = false
				poll.Reset(ro.PolicyPoll)
				debounce.Reset(100 * time.Millisecond)
			} else if r.isSourceEvent(ev.Name) {
				debounce.Reset(100 * time.Millisecond)
			} else if ids := r.pathOwners(ev.Name); len(ids) > 0 {
				q.Add(ids...)
			}
		case err := <-werrs:
			// An overflow lost events of unknown paths: look again now,
			// and heal drift everywhere.
			r.log.Warn("fsnotify", "err", err)
			if errors.Is(err, fsnotify.ErrEventOverflow) {
				rehash()
				q.Add(r.order...)
			}
		case <-debounce.C:
			reload(false)
			lastHash = r.currentHash()
		case <-poll.C:
			r.timerWakes.Add(1)
			if !watched {
				watchSources()
			}
			rehash()
			if !watched {
				poll.Reset(ro.PolicyPoll)
			}
		case <-resync.C:
			r.timerWakes.Add(1)
			r.resyncs.Add(1)
			if watched {
				// What the watch may have missed (an event lost with no
				// overflow reported), healed with the drift.
				rehash()
			}
			q.Add(r.order...)
			resync.Reset(jitter(ro.Resync))
		case <-ro.Reload:
			r.log.Info("reload requested")
			reload(true)
		case ids := <-ro.Enqueue:
			for _, id := range ids {
				if id == "*" {
					q.Add(r.order...)
				} else if r.Known(id) {
					q.Add(id)
				}
			}
		}
	}
}

func (r *Reconciler) currentHash() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.pol == nil {
		return ""
	}
	return r.pol.Hash
}

// work is one worker of the pool.
func (r *Reconciler) work(ctx context.Context, q *queue, b Backoff, w *fsnotify.Watcher) {
	for {
		id, ok := q.Get(ctx, r.rank)
		if !ok {
			return
		}
		res := r.ReconcileSection(ctx, id, false)
		if ctx.Err() != nil {
			q.Done(id)
			return
		}
		if w != nil {
			r.watchPaths(w, id) // still holding the section: its provider is ours
		}
		q.Done(id)
		c := r.ctrls[id]
		if res.Retry {
			c.mu.Lock()
			n := c.failures
			c.mu.Unlock()
			d := max(b.Delay(n), res.retryAfter)
			r.log.Info("retry later", "section", id, "in", d.Round(time.Millisecond).String())
			q.AddAfter(id, d)
		}
		if res.Status.State == StateReady {
			// Sections that wait on this one may go on: those not Ready,
			// and those running now, which may have looked before this
			// result was in. When this one changed something, all of
			// them: they may act on what changed (services restart a
			// unit whose files item was rewritten).
			for _, other := range r.deps[id] {
				if or := r.ctrls[other].lastResult(); res.Status.Changes > 0 || q.Active(other) || or == nil || or.Status.State != StateReady {
					q.Add(other)
				}
			}
		}
		if res.Status.Changes > 0 && !c.info.ReadOnly {
			// Read-only sections (deviceInfo) inventory the system this
			// section just changed (its hostname): look again now rather
			// than report the old value until the next resync.
			for _, other := range r.order {
				if r.ctrls[other].info.ReadOnly {
					q.Add(other)
				}
			}
		}
		r.Publish()
	}
}

func jitter(d time.Duration) time.Duration {
	return time.Duration(float64(d) * (0.9 + 0.2*rand.Float64()))
}

// sourceDirs are the directories whose changes are desired-state changes.
func (r *Reconciler) sourceDirs() []string {
	var out []string
	if r.opts.PolicyDir != "" {
		if _, err := os.Stat(r.opts.PolicyDir); err == nil {
			out = append(out, r.opts.PolicyDir)
		}
	}
	if r.opts.TwinDesiredFile != "" {
		out = append(out, filepath.Dir(r.opts.TwinDesiredFile))
	}
	return out
}

// isSourceDir reports whether name is a source directory itself.
func (r *Reconciler) isSourceDir(name string) bool {
	name = filepath.Clean(name)
	if r.opts.PolicyDir != "" && name == filepath.Clean(r.opts.PolicyDir) {
		return true
	}
	return r.opts.TwinDesiredFile != "" && name == filepath.Dir(filepath.Clean(r.opts.TwinDesiredFile))
}

func (r *Reconciler) isSourceEvent(name string) bool {
	dir := filepath.Clean(filepath.Dir(name))
	if r.opts.PolicyDir != "" && dir == filepath.Clean(r.opts.PolicyDir) {
		return true
	}
	return r.opts.TwinDesiredFile != "" && filepath.Clean(name) == filepath.Clean(r.opts.TwinDesiredFile)
}

// watchPaths adds the host paths a PathWatcher provider names for its
// current spec. Watches are only added: a stale watch at most enqueues a
// harmless reconcile.
func (r *Reconciler) watchPaths(w *fsnotify.Watcher, id string) {
	c := r.ctrls[id]
	pw, ok := c.p.(providers.PathWatcher)
	if !ok {
		return
	}
	r.stMu.Lock()
	sec := r.st.Sections[id]
	var lastGood []byte
	if sec != nil {
		lastGood = sec.LastGood
	}
	r.stMu.Unlock()
	if lastGood == nil {
		return
	}
	var lg map[string]json.RawMessage
	if json.Unmarshal(lastGood, &lg) != nil {
		return
	}
	env := r.env(id, nil, nil, r.log)
	c.mu.Lock()
	v := c.valid
	c.mu.Unlock()
	var paths []string
	err := c.guard(context.Background(), "watch paths", func(context.Context) error {
		var spec providers.Spec
		if v != nil && bytes.Equal(v.raw, lastGood) {
			spec = v.spec // what the reconcile just decoded
		} else {
			var err error
			if spec, err = c.p.Decode(env, stripReserved(lg)); err != nil {
				return err
			}
		}
		paths = pw.WatchPaths(env, spec)
		return nil
	})
	if err != nil {
		r.log.Warn("watch paths", "section", id, "err", err)
		return
	}
	for _, p := range paths {
		// Watch the directory: files are replaced by rename, which would
		// end a watch on the file itself, and may not exist yet.
		p = filepath.Dir(p)
		key := id + "\x00" + p
		r.watchMu.Lock()
		seen := r.watched[key]
		r.watchMu.Unlock()
		if seen {
			continue
		}
		if err := w.Add(p); err == nil {
			r.watchMu.Lock()
			r.watched[key] = true
			r.watchMu.Unlock()
		}
	}
}

// pathOwners finds every section that watches the path or its
// directory, in dependency order.
func (r *Reconciler) pathOwners(name string) []string {
	r.watchMu.Lock()
	defer r.watchMu.Unlock()
	return r.pathOwnersLocked(name)
}

func (r *Reconciler) pathOwnersLocked(name string) []string {
	seen := map[string]bool{}
	for _, cand := range []string{name, filepath.Dir(name)} {
		for key := range r.watched {
			id, p, _ := cutNul(key)
			if p == cand {
				seen[id] = true
			}
		}
	}
	var out []string
	for _, id := range r.order {
		if seen[id] {
			out = append(out, id)
		}
	}
	return out
}

func cutNul(s string) (string, string, bool) {
	for i := 0; i < len(s); i++ {
		if s[i] == 0 {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}
