package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/twinlet/twinlet/providers"
	"github.com/twinlet/twinlet/reconciler"
)

// Methods are the direct methods the agent answers.
var Methods = []string{"getPlan", "getStatus", "reboot", "reconcile", "report"}

type methodError struct {
	Error string `json:"error"`
}

func reply(status int, v any) (int, []byte) {
	b, err := json.Marshal(v)
	if err != nil {
		return 500, []byte(`{"error":"cannot encode the response"}`)
	}
	return status, b
}

func fail(status int, format string, args ...any) (int, []byte) {
	return reply(status, methodError{Error: fmt.Sprintf(format, args...)})
}

// sectionsArg is the optional payload of reconcile and report:
// {"sections": ["files", …]}; no payload means every section.
type sectionsArg struct {
	Sections []string `json:"sections"`
}

func (a *Agent) parseSections(payload []byte) ([]string, error) {
	payload = bytes.TrimSpace(payload)
	if len(payload) == 0 || string(payload) == "null" || string(payload) == "{}" || string(payload) == `""` {
		return a.r.Sections(), nil
	}
	var arg sectionsArg
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&arg); err != nil {
		return nil, fmt.Errorf(`payload: want {"sections": ["id", …]} or nothing: %v`, err)
	}
	for i, id := range arg.Sections {
		if !a.r.Known(id) {
			return nil, fmt.Errorf("payload: /sections/%d: unknown section %q (known: %s)", i, id, strings.Join(a.r.Sections(), ", "))
		}
	}
	if len(arg.Sections) == 0 {
		return a.r.Sections(), nil
	}
	return arg.Sections, nil
}

// onMethod answers a direct method with a JSON body.
func (a *Agent) onMethod(ctx context.Context, name string, payload []byte) (int, []byte) {
	if a.opts.Metrics != nil {
		a.opts.Metrics.methods.WithLabelValues(name).Inc()
	}
	switch name {
	case "reconcile":
		ids, err := a.parseSections(payload)
		if err != nil {
			return fail(400, "%v", err)
		}
		a.r.Enqueue(ids...)
		return reply(200, map[string]any{"enqueued": ids})
	case "report":
		ids, err := a.parseSections(payload)
		if err != nil {
			return fail(400, "%v", err)
		}
		// Re-observe, and send the whole document again rather than the
		// difference: the hub's copy may have been edited by someone else.
		a.mu.Lock()
		if a.acked != nil {
			a.acked = map[string]json.RawMessage{}
		}
		a.mu.Unlock()
		a.r.Enqueue(ids...)
		a.signal()
		return reply(200, map[string]any{"enqueued": ids, "fullReport": true})
	case "getStatus":
		if !emptyPayload(payload) {
			return fail(400, "getStatus takes no payload")
		}
		var doc map[string]json.RawMessage
		if err := json.Unmarshal(a.r.Document(), &doc); err != nil || doc == nil {
			return fail(503, "no reported state yet")
		}
		out := map[string]any{"summary": doc["__summary"]}
		sections := map[string]json.RawMessage{}
		for id, v := range doc {
			var sec struct {
				Status json.RawMessage `json:"__status"`
				Errors json.RawMessage `json:"__errors"`
			}
			if id != "__summary" && json.Unmarshal(v, &sec) == nil {
				b, _ := json.Marshal(map[string]json.RawMessage{"status": sec.Status, "errors": sec.Errors})
				sections[id] = b
			}
		}
		out["sections"] = sections
		return reply(200, out)
	case "getPlan":
		if !emptyPayload(payload) {
			return fail(400, "getPlan takes no payload")
		}
		rep := a.r.ReconcileAll(ctx, true)
		return reply(200, reconciler.PlanDocument(rep))
	case "reboot":
		var arg struct {
			Reason string `json:"reason"`
		}
		if !emptyPayload(payload) {
			dec := json.NewDecoder(bytes.NewReader(payload))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&arg); err != nil {
				return fail(400, `payload: want {"reason": "…"} or nothing: %v`, err)
			}
		}
		if arg.Reason == "" {
			arg.Reason = "direct method"
		}
		if a.opts.Reboot == nil {
			if _, ok := providers.Lookup("reboot"); ok {
				return fail(501, "reboot is not supported: the reboot provider does not take reboot requests from this agent")
			}
			return fail(501, "reboot is not supported: this agent has no reboot provider")
		}
		if err := a.opts.Reboot(ctx, arg.Reason); err != nil {
			var me *providers.MethodError
			if errors.As(err, &me) && me.Status >= 400 && me.Status <= 599 {
				return reply(me.Status, methodError{Error: "reboot: " + me.Message})
			}
			return fail(500, "reboot: %v", err)
		}
		return reply(202, map[string]any{"reboot": "requested", "reason": arg.Reason})
	}
	if section, method, ok := strings.Cut(name, "."); ok && a.r.Known(section) {
		return a.providerMethod(ctx, name, section, method, payload)
	}
	known := append(append([]string(nil), Methods...), a.r.MethodNames()...)
	sort.Strings(known)
	return fail(404, "unknown method %q (known: %s)", name, strings.Join(known, ", "))
}

func emptyPayload(p []byte) bool {
	p = bytes.TrimSpace(p)
	return len(p) == 0 || string(p) == "null" || string(p) == "{}" || string(p) == `""`
}

// invalidReply is the 400 answer to a payload that does not match the
// method's schema, or that the method found invalid.
type invalidReply struct {
	Error  string                 `json:"error"`
	Errors []providers.FieldError `json:"errors"`
}

// providerMethod answers "<section>.<method>": the reconciler validates
// the payload against the method's schema and runs it under the
// provider's timeout, cancelled with ctx.
func (a *Agent) providerMethod(ctx context.Context, name, section, method string, payload []byte) (int, []byte) {
	out, err := a.r.CallMethod(ctx, section, method, payload)
	var inv *providers.InvalidError
	var me *providers.MethodError
	switch {
	case errors.As(err, &inv):
		return reply(400, invalidReply{Error: name + ": " + inv.Error(), Errors: inv.Errors})
	case errors.As(err, &me):
		if me.Status < 200 || me.Status > 599 {
			return fail(500, "%s: %s (status %d)", name, me.Message, me.Status)
		}
		return reply(me.Status, methodError{Error: me.Message})
	case err != nil:
		a.log.Warn("direct method failed", "method", name, "err", err)
		return fail(500, "%s: %v", name, err)
	}
	return reply(200, out)
}
