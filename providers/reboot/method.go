package reboot

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/twinlet/twinlet/providers"
)

var nowMethod = providers.Method{
	Description: "reboot the device after delay seconds, with a reason (recorded, not executed, on a sandbox root)",
	Schema: json.RawMessage(`{
		"type": "object",
		"additionalProperties": false,
		"required": ["reason"],
		"properties": {
			"delay": {"description": "Seconds to wait before rebooting, 0 to 86400; default 0.", "type": "integer", "minimum": 0, "maximum": 86400},
			"reason": {"description": "Why: logged, reported and given to systemd as the shutdown message.", "type": "string", "minLength": 1, "maxLength": 200, "pattern": "^[^\\x00-\\x1f\\x7f]+$"}
		}
	}`),
	Call: callNow,
}

// NowResult is the response of reboot.now.
type NowResult struct {
	ScheduledFor string `json:"scheduledFor"`
	Reason       string `json:"reason"`
	// Sandbox is set when the agent acts on a sandbox root: the reboot
	// will be recorded, not executed.
	Sandbox bool `json:"sandbox"`
}

// callNow records the request; the section's next reconcile (asked for at
// its time) carries it out, so that every reboot goes one way and is
// recorded before it happens.
func callNow(ctx context.Context, env *providers.Env, payload json.RawMessage) (any, error) {
	var in struct {
		Delay  int64  `json:"delay"`
		Reason string `json:"reason"`
	}
	if err := json.Unmarshal(payload, &in); err != nil {
		return nil, providers.Invalid("", "%v", err)
	}
	if !env.CloudAllowed {
		return nil, &providers.MethodError{Status: 403, Message: "the cloud scope keeps the cloud from rebooting this device (reboot is not in cloud.sections); only local policy may"}
	}
	if why, no := env.CloudRules.Forbids("now", '/'); no {
		return nil, &providers.MethodError{Status: 403, Message: why}
	}
	reason := strings.TrimSpace(in.Reason)
	if reason == "" {
		return nil, providers.Invalid("/reason", "a reason is required")
	}
	now := env.Now()
	due := now.Add(time.Duration(in.Delay) * time.Second)
	recMu.Lock()
	defer recMu.Unlock()
	rec, err := loadRecord(env)
	if err != nil {
		return nil, err
	}
	if r := rec.Rebooting; r != nil {
		if id, _, err := bootInfo(env, now); err == nil && id == r.BootID {
			return nil, &providers.MethodError{Status: 409, Message: fmt.Sprintf("a reboot is already under way since %s (%s)", r.RequestedAt.UTC().Format(rfc), r.Reason)}
		}
	}
	if old := rec.Request; old != nil && old.DueAt.Before(due) {
		due = old.DueAt // an earlier request stands; the reason is the new one
	}
	rec.Request = &Request{DueAt: due, RequestedAt: now, Reason: reason}
	if err := saveRecord(env, rec); err != nil {
		return nil, fmt.Errorf("record the reboot request: %w", err)
	}
	env.Logger.Warn("reboot requested", "reason", reason, "at", due.UTC().Format(rfc))
	env.Requeue(due.Sub(now))
	return &NowResult{ScheduledFor: due.UTC().Format(rfc), Reason: reason, Sandbox: !env.IsHostRoot()}, nil
}
