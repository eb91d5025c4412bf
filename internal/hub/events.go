package hub

import (
	"context"
	"sync"
	"time"
)

// Event is a device-to-cloud message the hub received.
type Event struct {
	// Seq numbers events from 1, without gaps, for the hub's lifetime.
	Seq        uint64            `json:"seq"`
	DeviceID   string            `json:"deviceId"`
	ModuleID   string            `json:"moduleId,omitempty"`
	Properties map[string]string `json:"properties"`
	Body       []byte            `json:"body"`
	Enqueued   time.Time         `json:"enqueuedTime"`
}

// eventRing keeps the last n events.
type eventRing struct {
	mu      sync.Mutex
	buf     []Event
	next    uint64 // seq of the next event
	changed chan struct{}
}

func newEventRing(n int) *eventRing {
	return &eventRing{buf: make([]Event, n), next: 1, changed: make(chan struct{})}
}

func (r *eventRing) add(e Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e.Seq = r.next
	e.Enqueued = time.Now().UTC()
	r.buf[e.Seq%uint64(len(r.buf))] = e
	r.next++
	close(r.changed)
	r.changed = make(chan struct{})
}

// since returns the kept events with Seq > after, and a channel closed on
// the next event.
func (r *eventRing) since(after uint64) ([]Event, chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	first := after + 1
	if oldest := r.next - min(r.next-1, uint64(len(r.buf))); first < oldest {
		first = oldest
	}
	var out []Event
	for s := first; s < r.next; s++ {
		out = append(out, r.buf[s%uint64(len(r.buf))])
	}
	return out, r.changed
}

// Events returns the device-to-cloud messages kept with Seq > after,
// oldest first. The buffer keeps the last Options.EventBuffer messages.
func (h *Hub) Events(after uint64) []Event {
	ev, _ := h.events.since(after)
	return ev
}

// WaitEvents is Events that waits, until ctx ends, for at least one event
// when none is there yet.
func (h *Hub) WaitEvents(ctx context.Context, after uint64) ([]Event, error) {
	for {
		ev, ch := h.events.since(after)
		if len(ev) > 0 {
			return ev, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}
