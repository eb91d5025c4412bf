package hub

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"
)

// The admin API lives under /_twinhub/, outside the IoT Hub API, and takes
// an iothubowner token.

// SendC2D delivers a cloud-to-device message to a device subscribed to
// devices/{id}/messages/devicebound/#. Properties become the topic's
// property bag, after $.mid and $.to.
func (h *Hub) SendC2D(deviceID string, body []byte, props map[string]string) error {
	if _, err := h.getIdentity(deviceID, ""); err != nil {
		return err
	}
	h.mu.Lock()
	h.ridSeq++
	mid := "twinhub-" + strconv.FormatUint(h.ridSeq, 10)
	h.mu.Unlock()
	bag := []string{
		"%24.mid=" + bagEscape(mid),
		"%24.to=" + bagEscape("/devices/"+deviceID+"/messages/deviceBound"),
	}
	keys := make([]string, 0, len(props))
	for k := range props {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		bag = append(bag, bagEscape(k)+"="+bagEscape(props[k]))
	}
	topic := "devices/" + deviceID + "/messages/devicebound/" + strings.Join(bag, "&")
	if h.mqtt == nil {
		return fmt.Errorf("send c2d: hub not started")
	}
	// The device topic is private to the device (OnACLCheck), so the
	// broker's routing reaches only its connection.
	if err := h.mqtt.Publish(topic, body, false, 1); err != nil {
		return fmt.Errorf("send c2d to %s: %w", deviceID, err)
	}
	return nil
}

// bagEscape encodes a property bag key or value; a space is %20, since
// '+' is an MQTT wildcard.
func bagEscape(s string) string { return strings.ReplaceAll(url.QueryEscape(s), "+", "%20") }

func (h *Hub) adminRoutes(mux *http.ServeMux) {
	handle := func(pattern string, fn func(http.ResponseWriter, *http.Request) error) {
		mux.Handle(pattern, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if err := h.authorize(r, []string{RightRegistryWrite}); err != nil {
				writeError(w, err)
				return
			}
			if err := fn(w, r); err != nil {
				writeError(w, err)
			}
		}))
	}
	handle("GET /_twinhub/events", h.adminEvents)
	handle("GET /_twinhub/faults", func(w http.ResponseWriter, _ *http.Request) error {
		writeJSON(w, http.StatusOK, "", h.CurrentFaults())
		return nil
	})
	handle("PUT /_twinhub/faults", func(w http.ResponseWriter, r *http.Request) error {
		var f Faults
		if err := readJSON(r, &f); err != nil {
			return err
		}
		if err := h.SetFaults(f); err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, "", f)
		return nil
	})
	handle("POST /_twinhub/drop", func(w http.ResponseWriter, r *http.Request) error {
		var body struct {
			Identities []string `json:"identities"`
		}
		if r.ContentLength != 0 {
			if err := readJSON(r, &body); err != nil {
				return err
			}
		}
		n := h.DropConnections(body.Identities...)
		writeJSON(w, http.StatusOK, "", map[string]int{"dropped": n})
		return nil
	})
	handle("POST /_twinhub/devices/{id}/messages", func(w http.ResponseWriter, r *http.Request) error {
		var body struct {
			Payload    string            `json:"payload"`
			Properties map[string]string `json:"properties"`
		}
		if err := readJSON(r, &body); err != nil {
			return err
		}
		if err := h.SendC2D(r.PathValue("id"), []byte(body.Payload), body.Properties); err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	})
}

// adminEvents serves GET /_twinhub/events?since=N[&wait=30s]: the events
// after N; with wait, it long-polls until one arrives or wait passes.
func (h *Hub) adminEvents(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	var since uint64
	if s := q.Get("since"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return apiErr(400, "ArgumentInvalid", 400004, "since must be an event sequence number")
		}
		since = n
	}
	ev := h.Events(since)
	if s := q.Get("wait"); s != "" && len(ev) == 0 {
		d, err := time.ParseDuration(s)
		if err != nil || d < 0 {
			return apiErr(400, "ArgumentInvalid", 400004, "wait must be a duration such as 30s")
		}
		ctx, cancel := context.WithTimeout(r.Context(), min(d, 5*time.Minute))
		ev, _ = h.WaitEvents(ctx, since)
		cancel()
	}
	next := since
	if len(ev) > 0 {
		next = ev[len(ev)-1].Seq
	}
	if ev == nil {
		ev = []Event{}
	}
	writeJSON(w, http.StatusOK, "", map[string]any{"events": ev, "last": next})
	return nil
}
