package console

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/twinlet/twinlet/internal/iothub"
)

// maxWatches bounds the views polled at once, so that no number of open
// pages can flood the hub.
const maxWatches = 64

// A watch is one view of the hub (a page of the devices table, a device,
// the configurations) that every open page showing it shares: one poll
// per interval while anyone watches, whatever the number of pages, and an
// update to the pages only when the answer changed.
type watch struct {
	key   string
	fetch func(ctx context.Context) (any, error)
	subs  map[chan []byte]bool
	last  []byte
	stop  context.CancelFunc
}

// subscribe returns a channel of the view's updates (the latest one
// replaces an unread one) and the function that ends the subscription.
func (s *Server) subscribe(key string, fetch func(ctx context.Context) (any, error)) (<-chan []byte, func(), error) {
	ch := make(chan []byte, 1)
	s.mu.Lock()
	defer s.mu.Unlock()
	w, ok := s.watch[key]
	if !ok && len(s.watch) >= maxWatches {
		return nil, nil, fmt.Errorf("%d views are followed already: close some pages", maxWatches)
	}
	if !ok {
		ctx, cancel := context.WithCancel(s.ctx)
		w = &watch{key: key, fetch: fetch, subs: map[chan []byte]bool{}, stop: cancel}
		s.watch[key] = w
		s.wg.Add(1)
		go s.poll(ctx, w)
	}
	w.subs[ch] = true
	if w.last != nil {
		ch <- w.last
	}
	return ch, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		delete(w.subs, ch)
		if len(w.subs) == 0 && s.watch[key] == w {
			delete(s.watch, key)
			w.stop()
		}
	}, nil
}

func (s *Server) poll(ctx context.Context, w *watch) {
	defer s.wg.Done()
	t := time.NewTimer(s.opts.Interval)
	defer t.Stop()
	for {
		s.fetches.Add(1)
		v, err := w.fetch(ctx)
		// A query the hub refuses (a filter with a syntax error) is asked
		// again only every tenth interval, until the page changes it.
		next := s.opts.Interval
		var se *iothub.ServiceError
		if errors.As(err, &se) && se.StatusCode >= 400 && se.StatusCode < 500 && se.StatusCode != http.StatusTooManyRequests {
			next *= 10
		} else if errors.As(err, &se) && se.StatusCode == http.StatusTooManyRequests {
			next *= 5 // throttled: ease off
		}
		t.Reset(next)
		if ctx.Err() != nil {
			return
		}
		var msg []byte
		if err != nil {
			msg, _ = json.Marshal(map[string]string{"error": err.Error()})
		} else {
			msg, _ = json.Marshal(map[string]any{"data": v})
		}
		s.mu.Lock()
		if !bytes.Equal(msg, w.last) {
			w.last = msg
			for ch := range w.subs {
				select {
				case <-ch: // drop the unread older update
				default:
				}
				ch <- msg
			}
		}
		s.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Polls counts the views being polled (for tests).
func (s *Server) Polls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.watch)
}

// watchHandler streams a view as server-sent events.
func (s *Server) watchHandler(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var key string
	var fetch func(ctx context.Context) (any, error)
	switch q.Get("topic") {
	case "devices":
		filter, cont, size, err := pageArgs(r)
		if err != nil {
			fail(w, 400, "%v", err)
			return
		}
		if _, err := devicesQuery(filter); err != nil {
			fail(w, 400, "%v", err)
			return
		}
		key = "devices\x00" + filter + "\x00" + cont + "\x00" + strconv.Itoa(size)
		fetch = func(ctx context.Context) (any, error) { return s.devicePage(ctx, filter, cont, size) }
	case "device":
		id := q.Get("id")
		if id == "" {
			fail(w, 400, "id: required")
			return
		}
		key = "device\x00" + id
		fetch = func(ctx context.Context) (any, error) {
			t, err := s.opts.Client.GetTwin(ctx, id)
			if err != nil {
				return nil, err
			}
			return s.viewOf(t), nil
		}
	case "configs":
		key = "configs"
		fetch = func(ctx context.Context) (any, error) {
			l, err := s.configList(ctx)
			if err != nil {
				return nil, err
			}
			return map[string]any{"configs": l}, nil
		}
	default:
		fail(w, 400, "topic: want devices, device or configs")
		return
	}
	fl, ok := w.(http.Flusher)
	if !ok {
		fail(w, 500, "streaming unsupported")
		return
	}
	ch, done, err := s.subscribe(key, fetch)
	if err != nil {
		fail(w, http.StatusServiceUnavailable, "%v", err)
		return
	}
	defer done()
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(200)
	fmt.Fprintf(w, "retry: %d\n\n", max(1000, s.opts.Interval.Milliseconds()))
	fl.Flush()
	beat := time.NewTicker(15 * time.Second)
	defer beat.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-s.ctx.Done():
			return
		case <-beat.C:
			fmt.Fprint(w, ": keep-alive\n\n")
		case msg := <-ch:
			fmt.Fprintf(w, "data: %s\n\n", msg)
		}
		fl.Flush()
	}
}
