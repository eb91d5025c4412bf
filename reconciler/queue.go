package reconciler

import (
	"context"
	"sync"
	"time"

	"github.com/twinlet/twinlet/internal/backoff"
)

// queue is a deduplicating work queue of section keys with delayed adds.
// A key is in the queue at most once; adding a key that is waiting for a
// delayed retry makes it ready now (new input beats backoff).
type queue struct {
	mu      sync.Mutex
	ready   []string
	queued  map[string]bool
	delayed map[string]time.Time
	wake    chan struct{}
	now     func() time.Time
}

func newQueue(now func() time.Time) *queue {
	return &queue{queued: map[string]bool{}, delayed: map[string]time.Time{}, wake: make(chan struct{}, 1), now: now}
}

func (q *queue) signal() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// Add makes keys ready.
func (q *queue) Add(keys ...string) {
	q.mu.Lock()
	for _, k := range keys {
		delete(q.delayed, k)
		if !q.queued[k] {
			q.queued[k] = true
			q.ready = append(q.ready, k)
		}
	}
	q.mu.Unlock()
	q.signal()
}

// AddAfter makes key ready after d unless it is ready sooner.
func (q *queue) AddAfter(key string, d time.Duration) {
	q.mu.Lock()
	at := q.now().Add(d)
	if t, ok := q.delayed[key]; !q.queued[key] && (!ok || at.Before(t)) {
		q.delayed[key] = at
	}
	q.mu.Unlock()
	q.signal()
}

// Len is the number of ready and delayed keys.
func (q *queue) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.ready) + len(q.delayed)
}

// Get blocks until a key is ready or ctx ends. order ranks keys so that
// dependencies come first among those ready.
func (q *queue) Get(ctx context.Context, rank map[string]int) (string, bool) {
	for {
		q.mu.Lock()
		now := q.now()
		var next time.Time
		for k, at := range q.delayed {
			if !at.After(now) {
				delete(q.delayed, k)
				if !q.queued[k] {
					q.queued[k] = true
					q.ready = append(q.ready, k)
				}
			} else if next.IsZero() || at.Before(next) {
				next = at
			}
		}
		if len(q.ready) > 0 {
			best := 0
			for i, k := range q.ready {
				if rank[k] < rank[q.ready[best]] {
					best = i
				}
			}
			k := q.ready[best]
			q.ready = append(q.ready[:best], q.ready[best+1:]...)
			delete(q.queued, k)
			q.mu.Unlock()
			return k, true
		}
		q.mu.Unlock()
		var timer <-chan time.Time
		if !next.IsZero() {
			t := time.NewTimer(next.Sub(now))
			defer t.Stop()
			timer = t.C
		}
		select {
		case <-ctx.Done():
			return "", false
		case <-q.wake:
		case <-timer:
		}
	}
}

// Backoff is the per-section retry policy for transient failures.
type Backoff struct {
	Base, Max time.Duration
}

// DefaultBackoff retries after 1s, 2s, 4s … up to 5 minutes, with jitter.
var DefaultBackoff = Backoff{Base: time.Second, Max: 5 * time.Minute}

// Delay returns the delay before retry number n (1 for the first), with
// ±20% jitter so that a fleet does not retry in step.
func (b Backoff) Delay(n int) time.Duration {
	return backoff.Delay(b.Base, b.Max, n)
}
