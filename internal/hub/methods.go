package hub

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"
)

type methodResult struct {
	status  int
	payload json.RawMessage
}

// MethodResult is a device's answer to a direct method.
type MethodResult struct {
	Status  int             `json:"status"`
	Payload json.RawMessage `json:"payload"`
}

// Method timeouts of the service.
const (
	defaultMethodTimeout = 30 * time.Second
	maxMethodTimeout     = 300 * time.Second
)

// InvokeMethod calls a direct method on a device (moduleID empty) or
// module and waits for its answer. It fails with ErrDeviceNotOnline when
// the identity is not connected and subscribed to methods within
// connectTimeout (0: at once), and with ErrTimeout when no answer comes
// within responseTimeout (0: 30 s).
func (h *Hub) InvokeMethod(ctx context.Context, deviceID, moduleID, method string, payload json.RawMessage, responseTimeout, connectTimeout time.Duration) (MethodResult, error) {
	if method == "" {
		return MethodResult{}, fmt.Errorf("method name is empty: %w", ErrInvalid)
	}
	if responseTimeout <= 0 {
		responseTimeout = defaultMethodTimeout
	}
	responseTimeout = min(responseTimeout, maxMethodTimeout)
	connectTimeout = min(connectTimeout, maxMethodTimeout)
	key := idKey(deviceID, moduleID)
	connectBy := time.Now().Add(connectTimeout)

	var (
		c   *conn
		r   string
		ch  chan methodResult
		pid string
	)
	for {
		h.mu.Lock()
		if _, ok := h.records[key]; !ok {
			h.mu.Unlock()
			return MethodResult{}, notFound(deviceID, moduleID)
		}
		c = h.conns[key]
		if c != nil && c.subscribed("$iothub/methods/POST/#", "$iothub/methods/POST/"+method+"/#") {
			h.ridSeq++
			r = strconv.FormatUint(h.ridSeq, 10)
			pid = key + "\x00" + r
			ch = make(chan methodResult, 1)
			h.pending[pid] = ch
			body := []byte(payload)
			if len(body) == 0 {
				body = []byte("null")
			}
			c.send("$iothub/methods/POST/"+method+"/?$rid="+r, body)
			h.mu.Unlock()
			break
		}
		gen := h.connGen
		h.mu.Unlock()
		wait := time.Until(connectBy)
		if wait <= 0 {
			return MethodResult{}, fmt.Errorf("%s: %w", describe(deviceID, moduleID), ErrDeviceNotOnline)
		}
		t := time.NewTimer(min(wait, 250*time.Millisecond))
		select {
		case <-gen:
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return MethodResult{}, ctx.Err()
		}
		t.Stop()
	}
	defer func() {
		h.mu.Lock()
		delete(h.pending, pid)
		h.mu.Unlock()
	}()
	t := time.NewTimer(responseTimeout)
	defer t.Stop()
	select {
	case res := <-ch:
		return MethodResult{Status: res.status, Payload: res.payload}, nil
	case <-t.C:
		return MethodResult{}, fmt.Errorf("method %s on %s: %w", method, describe(deviceID, moduleID), ErrTimeout)
	case <-ctx.Done():
		return MethodResult{}, ctx.Err()
	}
}

func (h *Hub) methodResponse(c *conn, rid string, status int, body []byte) {
	h.mu.Lock()
	ch := h.pending[c.key+"\x00"+rid]
	delete(h.pending, c.key+"\x00"+rid)
	h.mu.Unlock()
	if ch == nil {
		return
	}
	var payload json.RawMessage
	switch {
	case len(body) == 0:
		payload = json.RawMessage("null")
	case json.Valid(body):
		payload = append(json.RawMessage(nil), body...)
	default:
		payload, _ = json.Marshal(string(body))
	}
	ch <- methodResult{status: status, payload: payload}
}
