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
	// Coalesce waits this long after a new reported document for more
	// before sending one patch (default 100ms).
	Coalesce time.Duration
	// MinBackoff and MaxBackoff bound the retry delay of reported patches
	// that were throttled or failed (defaults 1s, 2m).
	MinBackoff, MaxBackoff time.Duration
	// Metrics, when set, is updated.
	Metrics *Metrics
	// Logger; nil discards.
	Logger *slog.Logger
}

// Agent is the cloud side of twinlet.
type Agent struct {
	r      *reconciler.Reconciler
	c      *iothub.DeviceClient
	opts   Options
	log    *slog.Logger
	owned  map[string]bool
	wake   chan struct{}
	twinMu sync.Mutex
	// desired is the full desired document (sections only) as last
	// handed to the reconciler.
	desired map[string]json.RawMessage

	mu sync.Mutex
	// acked is what the hub holds of the keys twinlet owns; nil until a
	// connect has read it.
	acked map[string]json.RawMessage
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
	a := &Agent{r: r, opts: opts, log: opts.Logger, wake: make(chan struct{}, 1), owned: map[string]bool{"__summary": true}}
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

// Run keeps the connection and the reporter going until ctx ends.
func (a *Agent) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		a.report(ctx)
	}()
	err := a.c.Run(ctx)
	wg.Wait()
	return err
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
	sections, _, _ := reconciler.SplitDesired(desired)
	a.twinMu.Lock()
	a.desired = sections
	a.twinMu.Unlock()
	a.setDesired(sections, version)
	acked := map[string]json.RawMessage{}
	for k, v := range reported {
		if a.owned[k] {
			acked[k] = stripMeta(v)
		}
	}
	a.mu.Lock()
	a.acked = acked
	a.mu.Unlock()
	a.signal()
}

func (a *Agent) onDesired(patch map[string]json.RawMessage, version int64) {
	delete(patch, "$version")
	a.twinMu.Lock()
	a.desired = jsonx.MergePatch(a.desired, patch)
	doc := a.desired
	a.twinMu.Unlock()
	a.setDesired(doc, version)
}

func (a *Agent) setDesired(sections map[string]json.RawMessage, version int64) {
	changed, err := a.r.SetTwinDesired(sections, version)
	if err != nil {
		a.log.Error("persist twin desired", "err", err)
	}
	if len(changed) > 0 {
		a.log.Info("twin desired changed", "version", version, "sections", changed)
		a.r.Enqueue(changed...)
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

// report sends the difference between what the hub holds and the latest
// reported document: one patch per burst, retried with backoff on 429 and
// 5xx, never retried as is on 400. Because the difference is computed
// against what the hub acknowledged (re-read on every connect), nothing
// is lost while offline or across restarts, and nothing is sent twice.
func (a *Agent) report(ctx context.Context) {
	failures := 0
	var retry <-chan time.Time
	var rejected []byte // a document the hub refused (400): wait for a new one
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
		// Coalesce a burst into one patch: the latest document is read
		// after the pause, and the signals meanwhile are spent.
		if !backoff.Sleep(ctx, a.opts.Coalesce) {
			return
		}
		select {
		case <-a.wake:
		default:
		}
		doc := a.r.Document()
		a.mu.Lock()
		acked := a.acked
		a.mu.Unlock()
		if acked == nil || len(doc) == 0 || !a.c.Connected() {
			continue // the next connect wakes us
		}
		if rejected != nil && string(rejected) == string(doc) {
			continue
		}
		var latest map[string]json.RawMessage
		if json.Unmarshal(doc, &latest) != nil {
			continue
		}
		// A twin holds no nulls (null deletes), so "__errors": null means
		// absent; without this every pass would send it again.
		latest = jsonx.MergePatch(nil, latest)
		patch := jsonx.Diff(acked, latest)
		if len(patch) == 0 {
			failures = 0
			continue
		}
		body, _ := json.Marshal(patch)
		a.mu.Lock()
		a.attempts++
		a.mu.Unlock()
		start := time.Now()
		_, err := a.c.PatchReported(ctx, body)
		var se *iothub.StatusError
		switch {
		case err == nil:
			failures, rejected = 0, nil
			a.mu.Lock()
			if a.acked != nil {
				a.acked = jsonx.MergePatch(a.acked, patch)
			}
			a.mu.Unlock()
			if a.opts.Metrics != nil {
				a.opts.Metrics.reportLatency.Observe(time.Since(start).Seconds())
			}
			a.log.Debug("reported", "bytes", len(body))
			a.signal() // a document may have arrived meanwhile
		case errors.As(err, &se) && !se.Retryable():
			rejected = doc
			a.log.Error("reported patch refused; waiting for a new document", "err", err)
			if a.opts.Metrics != nil {
				a.opts.Metrics.reportFailures.Inc()
			}
		case errors.Is(err, iothub.ErrNotConnected):
			// The next connect wakes us.
		default:
			failures++
			d := backoff.Delay(a.opts.MinBackoff, a.opts.MaxBackoff, failures)
			a.log.Warn("reported patch failed; retrying", "err", err, "in", d.Round(time.Millisecond).String())
			if a.opts.Metrics != nil {
				a.opts.Metrics.reportFailures.Inc()
			}
			retry = time.After(d)
		}
	}
}
