package extprov

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/twinlet/twinlet/providers"
	"github.com/twinlet/twinlet/schemas"
)

// CheckStep is one step of Check.
type CheckStep struct {
	Name string `json:"name"`
	// OK is false when the step failed; Skipped steps are OK.
	OK      bool   `json:"ok"`
	Skipped bool   `json:"skipped,omitempty"`
	Message string `json:"message"`
}

// Check checks one manifest as the agent would load it, then starts the
// provider, asks it what it is, compiles its schema and runs a no-op
// reconcile of an empty section on env's root (decode, observe, plan:
// nothing may be planned; nothing is applied). It reports every step and
// whether all passed. The process is stopped before Check returns.
func Check(ctx context.Context, file string, opts Options, env *providers.Env) ([]CheckStep, bool) {
	var steps []CheckStep
	add := func(name string, ok bool, format string, args ...any) bool {
		steps = append(steps, CheckStep{Name: name, OK: ok, Message: fmt.Sprintf(format, args...)})
		return ok
	}
	m, probs := ParseManifest(file)
	if len(probs) > 0 {
		for _, p := range probs {
			add("manifest", false, "%s", p)
		}
		return steps, false
	}
	add("manifest", true, "%s: section %s, protocol version %d, %s", file, m.Section, m.ProtocolVersion, m.Executable)
	h := LoadFiles(ctx, []string{file}, opts)
	defer h.Close()
	if len(h.entries) == 0 {
		for _, p := range h.problems {
			add("describe", false, "%s", p)
		}
		return steps, false
	}
	e := h.entries[0]
	d := e.desc
	add("describe", true, "%s %s: %s section, %d method(s), timeout %v", orDash(d.ID), orDash(d.Version), d.Kind, len(d.Methods), timeoutOf(e.info))
	s, err := schemas.Compile(m.Section, e.info.Schema)
	if !add("schema", err == nil, "%s", errOr(err, "compiled (JSON Schema draft 2020-12); the agent enforces it before anything reaches the provider")) {
		return steps, false
	}
	empty := json.RawMessage(`{}`)
	if sp, _ := s.Validate(empty); len(sp) > 0 {
		steps = append(steps, CheckStep{Name: "observe", OK: true, Skipped: true,
			Message: fmt.Sprintf("skipped: the schema does not accept an empty section (%s: %s)", orDash(sp[0].Pointer), sp[0].Message)})
		return steps, true
	}
	p := e.info.New()
	spec, err := p.Decode(env, empty)
	if !add("decode", err == nil, "%s", errOr(err, "an empty section decodes")) {
		return steps, false
	}
	ctx, cancel := context.WithTimeout(ctx, timeoutOf(e.info))
	defer cancel()
	obs, err := p.Observe(ctx, env, spec)
	if !add("observe", err == nil, "%s", errOr(err, "a no-op observe answers")) {
		return steps, false
	}
	changes, err := p.Plan(spec, obs)
	switch {
	case err != nil:
		return append(steps, CheckStep{Name: "plan", Message: err.Error()}), false
	case len(changes) > 0:
		return append(steps, CheckStep{Name: "plan", Message: fmt.Sprintf("an empty section plans %d change(s), first %q: a section that asks for nothing must plan nothing", len(changes), changes[0])}), false
	}
	add("plan", true, "an empty section plans nothing")
	return steps, true
}

func timeoutOf(info providers.Info) time.Duration {
	if info.Timeout > 0 {
		return info.Timeout
	}
	return providers.DefaultTimeout
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func errOr(err error, ok string) string {
	if err != nil {
		return err.Error()
	}
	return ok
}
