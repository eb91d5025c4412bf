// Package providertest helps provider tests run drift timelines on
// temporary roots: decode a section, observe, plan, apply the plan the way
// the reconciler would (including the Managed bookkeeping for prune), and
// check that a further plan is empty.
package providertest

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"reflect"
	"testing"
	"time"

	"github.com/twinlet/twinlet/providers"
)

// NewEnv returns an Env on a fresh temporary root and state directory,
// with a discarding logger, the exec runner, the default allowed roots and
// an empty Managed set. It never points at the machine's "/".
func NewEnv(t testing.TB) *providers.Env {
	t.Helper()
	return &providers.Env{
		Root:     t.TempDir(),
		StateDir: t.TempDir(),
		Runner:   providers.ExecRunner{},
		Now:      time.Now,
		Logger:   slog.New(slog.DiscardHandler),
		Managed:  map[string]bool{},
	}
}

// Decode decodes raw with p and fails the test on any error.
func Decode(t testing.TB, p providers.Provider, env *providers.Env, raw json.RawMessage) providers.Spec {
	t.Helper()
	spec, err := p.Decode(env, raw)
	if err != nil {
		t.Fatalf("Decode(%s): %v", raw, err)
	}
	return spec
}

// Observe decodes raw and observes, failing the test on any error. It
// checks that the observation marshals to JSON.
func Observe(t testing.TB, p providers.Provider, env *providers.Env, raw json.RawMessage) providers.Observed {
	t.Helper()
	spec := Decode(t, p, env, raw)
	obs, err := p.Observe(context.Background(), env, spec)
	if err != nil {
		t.Fatalf("Observe: %v", err)
	}
	if _, err := json.Marshal(obs); err != nil {
		t.Fatalf("Observed does not marshal to JSON: %v", err)
	}
	return obs
}

// ObserveJSON is Observe that returns the observation as the reconciler
// reports it: marshaled to JSON and decoded into generic values.
func ObserveJSON(t testing.TB, p providers.Provider, env *providers.Env, raw json.RawMessage) map[string]any {
	t.Helper()
	obs := Observe(t, p, env, raw)
	b, err := json.Marshal(obs)
	if err != nil {
		t.Fatalf("marshal Observed: %v", err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("Observed is not a JSON object: %s", b)
	}
	return m
}

// PlanOnly decodes raw, observes and plans without applying anything, as
// `twinlet plan` does. It checks that Plan is deterministic.
func PlanOnly(t testing.TB, p providers.Provider, env *providers.Env, raw json.RawMessage) []providers.Change {
	t.Helper()
	spec := Decode(t, p, env, raw)
	obs, err := p.Observe(context.Background(), env, spec)
	if err != nil {
		t.Fatalf("Observe: %v", err)
	}
	if _, err := json.Marshal(obs); err != nil {
		t.Fatalf("Observed does not marshal to JSON: %v", err)
	}
	changes, err := p.Plan(spec, obs)
	if err != nil {
		t.Fatalf("Plan: %v", err)
	}
	again, err := p.Plan(spec, obs)
	if err != nil {
		t.Fatalf("Plan (again): %v", err)
	}
	if !reflect.DeepEqual(lines(changes), lines(again)) {
		t.Fatalf("Plan is not deterministic:\n%v\n%v", lines(changes), lines(again))
	}
	return changes
}

// Apply applies changes in order the way the reconciler does: a Create
// with a Key is recorded in env.Managed before Apply, a Delete's Key is
// forgotten after it. Each change is applied twice to check that Apply is
// idempotent.
func Apply(t testing.TB, p providers.Provider, env *providers.Env, changes []providers.Change) {
	t.Helper()
	for _, c := range changes {
		if c.Action == providers.Create && c.Key != "" {
			if env.Managed == nil {
				env.Managed = map[string]bool{}
			}
			env.Managed[c.Key] = true
		}
		for i := range 2 {
			if err := p.Apply(context.Background(), env, c); err != nil {
				t.Fatalf("Apply %q (attempt %d): %v", c, i+1, err)
			}
		}
		if c.Action == providers.Delete && c.Key != "" {
			delete(env.Managed, c.Key)
		}
	}
}

// Converge runs one reconcile of raw (Decode → Observe → Plan → Apply each
// change) and verifies it: a fresh Observe and Plan must find nothing left
// to do. It returns the changes that were applied.
func Converge(t testing.TB, p providers.Provider, env *providers.Env, raw json.RawMessage) []providers.Change {
	t.Helper()
	changes := PlanOnly(t, p, env, raw)
	Apply(t, p, env, changes)
	if left := PlanOnly(t, p, env, raw); len(left) > 0 {
		t.Fatalf("not converged after applying %v; still pending: %v", lines(changes), lines(left))
	}
	return changes
}

// Invalid asserts that err is an *providers.InvalidError and returns the
// JSON pointers of its problems.
func Invalid(t testing.TB, err error) []string {
	t.Helper()
	var ie *providers.InvalidError
	if !errors.As(err, &ie) {
		t.Fatalf("want an *InvalidError, got %T: %v", err, err)
	}
	var out []string
	for _, fe := range ie.Errors {
		out = append(out, fe.Pointer)
	}
	return out
}

// Lines renders changes as plan lines, for messages and comparisons.
func Lines(changes []providers.Change) []string { return lines(changes) }

func lines(changes []providers.Change) []string {
	out := make([]string, 0, len(changes))
	for _, c := range changes {
		out = append(out, c.String())
	}
	return out
}
