package reconciler

import (
	"context"
	"sync"
	"time"

	"github.com/twinlet/twinlet/internal/backoff"
)

// queue is a deduplicating work queue of section keys with delayed adds,
// for a pool of workers. A key is in the queue at most once; adding a key
// that is waiting for a delayed retry makes it ready now (new input beats
// backoff). A key handed to a worker is active until Done: it is not
// handed out again meanwhile, so one section never runs on two workers,
// and an Add meanwhile makes it ready again once it is done.
type queue struct {
	mu      sync.Mutex
	ready   []string
	queued  map[string]bool
	active  map[string]bool
	delayed map[string]time.Time
	wake    chan struct{}
	now     func() time.Time
}

func newQueue(now func() time.Time) *queue {
	return &queue{queued: map[string]bool{}, active: map[string]bool{}, delayed: map[string]time.Time{}, wake: make(chan struct{}, 1), now: now}
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

// Active reports whether a worker holds the key.
func (q *queue) Active(key string) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.active[key]
}

// Done releases a key that Get handed out.
func (q *queue) Done(key string) {
	q.mu.Lock()
	delete(q.active, key)
	q.mu.Unlock()
	q.signal()
}

// Get blocks until a key that no worker holds is ready, or ctx ends. rank
// orders keys so that dependencies come first among those ready. The key
// is active until Done.
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
		best, free := -1, 0
		for i, k := range q.ready {
			if q.active[k] {
				continue
			}
			free++
			if best < 0 || rank[k] < rank[q.ready[best]] {
				best = i
			}
		}
		if best >= 0 {
			k := q.ready[best]
			q.ready = append(q.ready[:best], q.ready[best+1:]...)
			delete(q.queued, k)
			q.active[k] = true
			q.mu.Unlock()
			if free > 1 {
				q.signal() // wake another worker for the rest
			}
			return k, true
		}
		q.mu.Unlock()
		var timer <-chan time.Time
		var t *time.Timer
		if !next.IsZero() {
			t = time.NewTimer(next.Sub(now))
			timer = t.C
		}
		select {
		case <-ctx.Done():
			if t != nil {
				t.Stop()
			}
			q.signal() // pass the wake-up on to the other workers
			return "", false
		case <-q.wake:
		case <-timer:
		}
		if t != nil {
			t.Stop()
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
