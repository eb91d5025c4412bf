// Package agent connects the reconciler to IoT Hub: the twin's desired
// properties become the reconciler's twin layer, the reported document is
// sent as change-only patches, and operators reach the agent through
// direct methods. The connection itself (reconnects, token renewal) is
// the device client's.
package agent

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/twinlet/twinlet/internal/backoff"
	"github.com/twinlet/twinlet/internal/iothub"
	"github.com/twinlet/twinlet/internal/jsonx"
	"github.com/twinlet/twinlet/reconciler"
)

// Options tune an Agent; the zero value is sensible.
type Options struct {
	// Coalesce is the reporter's window: the first new reported document
	// after a quiet period is sent at once, later ones at most once per
	// window, as one patch with the latest document (default 100ms).
	Coalesce time.Duration
	// MinBackoff and MaxBackoff bound the retry delay of reported patches
	// that were throttled or failed (defaults 1s, 2m).
	MinBackoff, MaxBackoff time.Duration
	// StateDir keeps the outbox (reported patches not yet acknowledged);
	// empty keeps it in memory only.
	StateDir string
	// Reboot, when set, hands a reboot request (the reboot direct method)
	// to the reboot provider, whose policy decides when it happens; it
	// must return once the request is accepted, not when the device
	// reboots. Nil answers the method 501 (not supported).
	Reboot func(ctx context.Context, reason string) error
	// Metrics, when set, is updated.
	Metrics *Metrics
	// FileUploadAddr overrides the hub address (host:port) of the file
	// upload requests (default HostName:443); see UploadFile.
	FileUploadAddr string
	// AfterPing, when set, becomes the device client's AfterPing (see
	// iothub.DeviceConfig), unless that is set already.
	AfterPing func()
	// Logger; nil discards.
	Logger *slog.Logger
}

// Agent is the cloud side of twinlet.
type Agent struct {
	r      *reconciler.Reconciler
	c      *iothub.DeviceClient
	up     *iothub.FileUploader // nil when the configuration cannot upload
	opts   Options
	log    *slog.Logger
	owned  map[string]bool
	wake   chan struct{}
	twinMu sync.Mutex
	// desired is the full desired document (sections only) as last
	// received, and desiredVersion its $version; twinDirty says the
	// reconciler has not been handed them yet (twinWake wakes the
	// goroutine that does, so no callback of the device client waits for
	// the state directory's fsync).
	desired        map[string]json.RawMessage
	desiredVersion int64
	twinDirty      bool
	twinWake       chan struct{}

	mu sync.Mutex
	// acked is what the hub holds of the keys twinlet owns; nil until a
	// connect has read it.
	acked map[string]json.RawMessage
	// out holds the reported patches not yet acknowledged.
	out *outbox
	// Attempts counts reported-patch attempts (for tests: no busy loop).
	attempts int
}

// New wires an agent to a reconciler and a device client configuration;
// it installs its own callbacks in cfg.
func New(r *reconciler.Reconciler, cfg iothub.DeviceConfig, opts Options) (*Agent, error) {
	if opts.Coalesce == 0 {
		opts.Coalesce = 100 * time.Millisecond
	}
	if opts.MinBackoff == 0 {
		opts.MinBackoff = time.Second
	}
	if opts.MaxBackoff == 0 {
		opts.MaxBackoff = 2 * time.Minute
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.AfterPing == nil {
		cfg.AfterPing = opts.AfterPing
	}
	if opts.Reboot == nil && slices.Contains(r.MethodNames(), "reboot.now") {
		// The built-in reboot method goes to the reboot provider's
		// reboot.now, under the same cloud scope.
		opts.Reboot = func(ctx context.Context, reason string) error {
			b, err := json.Marshal(map[string]string{"reason": reason})
			if err == nil {
				_, err = r.CallMethod(ctx, "reboot", "now", b)
			}
			return err
		}
	}
	a := &Agent{r: r, opts: opts, log: opts.Logger, wake: make(chan struct{}, 1), twinWake: make(chan struct{}, 1),
		owned: map[string]bool{"__summary": true}}
	out, err := loadOutbox(opts.StateDir)
	if err != nil {
		a.log.Error("reported patches of the previous run lost; the latest state will still be reported", "err", err)
	}
	if out.Base == nil {
		// The last document of the previous run, which the reconciler
		// keeps: what happens from here on is queued as patches from it.
		out.Base = normalize(r.Document())
	}
	a.out = out
	if len(out.Entries) > 0 {
		a.log.Info("reported patches of the previous run queued", "patches", len(out.Entries))
	}
	for _, id := range r.Sections() {
		a.owned[id] = true
	}
	cfg.OnTwin = a.onTwin
	cfg.OnDesired = a.onDesired
	cfg.OnMethod = a.onMethod
	cfg.OnConnection = a.onConnection
	if cfg.Logger == nil {
		cfg.Logger = opts.Logger
	}
	c, err := iothub.NewDeviceClient(cfg)
	if err != nil {
		return nil, err
	}
	a.c = c
	if a.up, err = iothub.NewFileUploader(iothub.FileUploadConfig{Device: cfg, HTTPSAddr: opts.FileUploadAddr}); err != nil {
		a.log.Warn("file upload unavailable", "err", err)
	}
	return a, nil
}

// Client returns the device client.
func (a *Agent) Client() *iothub.DeviceClient { return a.c }

// Notify tells the agent that the reconciler published a new reported
// document; use it as reconciler.Options.OnReport.
func (a *Agent) Notify([]byte) { a.signal() }

func (a *Agent) signal() {
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

// Attempts is the number of reported patches tried so far.
func (a *Agent) Attempts() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.attempts
}

// Run keeps the connection, the reporter and the twin layer going until
// ctx ends.
func (a *Agent) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		a.report(ctx)
	}()
	go func() {
		defer wg.Done()
		a.applyDesired(ctx)
	}()
	err := a.c.Run(ctx)
	wg.Wait()
	return err
}

// applyDesired hands the newest desired document to the reconciler
// whenever one arrived: a burst of patches costs one write of the state
// directory, not one per patch, and the twin layer's version only ever
// increases (one goroutine, the newest document). What arrived before a
// stop is still written.
func (a *Agent) applyDesired(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			a.flushDesired(false)
			return
		case <-a.twinWake:
			a.flushDesired(true)
		}
	}
}

func (a *Agent) flushDesired(enqueue bool) {
	a.twinMu.Lock()
	if !a.twinDirty {
		a.twinMu.Unlock()
		return
	}
	doc, version := a.desired, a.desiredVersion
	a.twinDirty = false
	a.twinMu.Unlock()
	changed, err := a.r.SetTwinDesired(doc, version)
	if err != nil {
		a.log.Error("persist twin desired", "err", err)
	}
	if len(changed) > 0 && enqueue {
		a.log.Info("twin desired changed", "version", version, "sections", changed)
		a.r.Enqueue(changed...)
	}
}

func (a *Agent) onConnection(up bool) {
	if a.opts.Metrics != nil {
		a.opts.Metrics.setConnected(up)
	}
	if !up {
		a.mu.Lock()
		a.acked = nil // re-read on the next connect
		a.mu.Unlock()
	}
}

// onTwin takes the full twin read after a connect: the desired document
// replaces the twin layer, and the reported one is what the hub holds.
func (a *Agent) onTwin(desired map[string]json.RawMessage, version int64, reported map[string]json.RawMessage) {
	sections, _, err := reconciler.SplitDesired(desired)
	switch {
	case err != nil && sections == nil:
		// The twin layer in force stays; the next twin read tries again.
		a.log.Error("twin desired document not used", "version", version, "err", err)
	default:
		if err != nil {
			// A bad $version says nothing about the sections: they still
			// replace the twin layer.
			a.log.Warn("twin desired", "err", err)
		}
		a.setDesired(sections, version)
	}
	acked := map[string]json.RawMessage{}
	for k, v := range reported {
		if a.owned[k] {
			acked[k] = stripMeta(v)
		}
	}
	a.mu.Lock()
	a.acked = acked
	if a.out.Base == nil {
		a.out.Base = acked
	}
	a.mu.Unlock()
	a.signal()
}

func (a *Agent) onDesired(patch map[string]json.RawMessage, version int64) {
	for k := range patch {
		if strings.HasPrefix(k, "$") { // $version, $metadata: not sections
			delete(patch, k)
		}
	}
	a.twinMu.Lock()
	doc := jsonx.MergePatch(a.desired, patch)
	a.twinMu.Unlock()
	a.setDesired(doc, version)
}

// setDesired records the newest desired document for applyDesired.
func (a *Agent) setDesired(sections map[string]json.RawMessage, version int64) {
	a.twinMu.Lock()
	a.desired, a.desiredVersion, a.twinDirty = sections, version, true
	a.twinMu.Unlock()
	select {
	case a.twinWake <- struct{}{}:
	default:
	}
}

// stripMeta removes "$metadata" and "$version" members at every level.
func stripMeta(v json.RawMessage) json.RawMessage {
	var m map[string]json.RawMessage
	if json.Unmarshal(v, &m) != nil || m == nil {
		return v
	}
	for k, x := range m {
		if strings.HasPrefix(k, "$") {
			delete(m, k)
			continue
		}
		m[k] = stripMeta(x)
	}
	b, _ := json.Marshal(m)
	return b
}

// report turns every new reported document into a patch (the difference
// from the one before, one patch per burst) queued in the outbox, and
// sends the outbox in order whenever the hub is reachable: a throttled
// (429) or failed (5xx, timeout) patch is retried with backoff, a refused
// one (400) is dropped with an error and never retried as is. After the
// outbox, the difference between what the hub holds (read on every
// connect) and the latest document is sent too, so the hub converges on
// the latest document whatever happened meanwhile. The outbox is written
// to the state directory while patches wait; a restart sends them first.
// Nothing here re-runs a provider: restarts re-send reports, not changes.
func (a *Agent) report(ctx context.Context) {
	failures := 0
	var retry <-chan time.Time
	var rejected []byte // a patch against the hub's copy that the hub refused (400)
	var lastSend time.Time
	for {
		// While backing off, new documents wait for the retry: a hub that
		// throttles must not see more attempts because we had more news.
		if retry != nil {
			select {
			case <-ctx.Done():
				return
			case <-retry:
			}
		} else {
			select {
			case <-ctx.Done():
				return
			case <-a.wake:
			}
		}
		retry = nil
		// Leading edge, then coalescing: the first document of a quiet
		// period goes out at once; within Coalesce of the last send the
		// rest of the window is waited out and the latest document read
		// then, so a burst costs one patch per window.
		if d := a.opts.Coalesce - time.Since(lastSend); d > 0 {
			if !backoff.Sleep(ctx, d) {
				return
			}
		}
		select {
		case <-a.wake:
		default:
		}
		flushStart, attemptsBefore := time.Now(), a.Attempts()
		latest := normalize(a.r.Document())
		a.mu.Lock()
		if latest != nil {
			a.out.add(latest)
		}
		a.mu.Unlock()
		res, err := a.flush(ctx, latest, &rejected)
		if a.Attempts() != attemptsBefore {
			// Only a patch sent opens a window; a document that changed
			// nothing the hub holds must not delay the next change.
			lastSend = flushStart
		}
		a.mu.Lock()
		if serr := a.out.save(); serr != nil {
			a.log.Error("reported patches not saved", "err", serr)
		}
		n := len(a.out.Entries)
		a.mu.Unlock()
		if a.opts.Metrics != nil {
			a.opts.Metrics.outbox.Set(float64(n))
		}
		switch res {
		case sent:
			failures = 0
		case retryLater:
			failures++
			d := backoff.Delay(a.opts.MinBackoff, a.opts.MaxBackoff, failures)
			a.log.Warn("reported patch failed; retrying", "err", err, "in", d.Round(time.Millisecond).String(), "queued", n)
			retry = time.After(d)
		case offline:
			// The next connect wakes us.
		}
	}
}

type sendResult int

const (
	sent sendResult = iota
	offline
	retryLater
	refused
)

// flush sends the outbox, oldest first, then the difference between the
// hub's copy and latest.
func (a *Agent) flush(ctx context.Context, latest map[string]json.RawMessage, rejected *[]byte) (sendResult, error) {
	for {
		a.mu.Lock()
		if a.acked == nil || !a.c.Connected() {
			a.mu.Unlock()
			return offline, nil
		}
		if len(a.out.Entries) == 0 {
			a.mu.Unlock()
			break
		}
		e := a.out.Entries[0]
		a.mu.Unlock()
		switch res, err := a.send(ctx, e.Patch); res {
		case sent:
			a.mu.Lock()
			a.out.pop()
			a.mu.Unlock()
		case refused:
			a.log.Error("reported patch refused by the hub; dropped", "seq", e.Seq, "err", err)
			a.mu.Lock()
			a.out.pop()
			a.mu.Unlock()
		default:
			return res, err
		}
	}
	if latest == nil {
		return sent, nil
	}
	a.mu.Lock()
	if a.acked == nil {
		a.mu.Unlock()
		return offline, nil
	}
	patch := jsonx.Diff(a.acked, latest)
	a.mu.Unlock()
	if len(patch) == 0 {
		return sent, nil
	}
	body, _ := json.Marshal(patch)
	if *rejected != nil && string(*rejected) == string(body) {
		return sent, nil // refused as is: wait for a new document
	}
	res, err := a.send(ctx, body)
	if res == refused {
		*rejected = body
		a.log.Error("reported patch refused by the hub; waiting for a new document", "err", err)
		return sent, nil
	}
	if res == sent {
		*rejected = nil
	}
	return res, err
}

// send sends one patch and, once the hub acknowledged it, applies it to
// the agent's copy of the hub's reported properties.
func (a *Agent) send(ctx context.Context, body []byte) (sendResult, error) {
	a.mu.Lock()
	a.attempts++
	a.mu.Unlock()
	start := time.Now()
	_, err := a.c.PatchReported(ctx, body)
	var se *iothub.StatusError
	switch {
	case err == nil:
		var patch map[string]json.RawMessage
		_ = json.Unmarshal(body, &patch)
		a.mu.Lock()
		if a.acked != nil {
			a.acked = jsonx.MergePatch(a.acked, patch)
		}
		a.mu.Unlock()
		if a.opts.Metrics != nil {
			a.opts.Metrics.reportLatency.Observe(time.Since(start).Seconds())
		}
		a.log.Debug("reported", "bytes", len(body))
		return sent, nil
	case errors.As(err, &se) && !se.Retryable():
		if a.opts.Metrics != nil {
			a.opts.Metrics.reportFailures.Inc()
		}
		return refused, err
	case errors.Is(err, iothub.ErrNotConnected):
		return offline, err
	default:
		if a.opts.Metrics != nil {
			a.opts.Metrics.reportFailures.Inc()
		}
		return retryLater, err
	}
}

// normalize decodes a reported document. A twin holds no nulls (null
// deletes), so "__errors": null means absent; without this every pass
// would send it again.
func normalize(doc []byte) map[string]json.RawMessage {
	var m map[string]json.RawMessage
	if len(doc) == 0 || json.Unmarshal(doc, &m) != nil || m == nil {
		return nil
	}
	return jsonx.MergePatch(nil, m)
}
