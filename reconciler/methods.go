package reconciler

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"github.com/twinlet/twinlet/providers"
)

// MethodNames lists the providers' direct methods as "<section>.<method>",
// sorted.
func (r *Reconciler) MethodNames() []string {
	var out []string
	for id, c := range r.ctrls {
		for name := range c.info.Methods {
			out = append(out, id+"."+name)
		}
	}
	sort.Strings(out)
	return out
}

// CallMethod invokes the direct method "<section>.<name>" of a provider.
// The payload must match the method's schema: when it does not, the error
// is a *providers.InvalidError whose pointers locate the problems. An
// unknown section or method is a *providers.MethodError with status 404.
// The call runs under the provider's timeout and is cancelled when ctx
// ends or the loop stops (Run returns, Close); a panic is an error. Errors
// of the method itself are returned as it returned them (*InvalidError,
// *MethodError, or any other for a failure). The method sees the section's
// last good desired value in Env.Desired; after it succeeds the section is
// enqueued, so that what the method changed is reconciled and reported.
func (r *Reconciler) CallMethod(ctx context.Context, section, name string, payload json.RawMessage) (any, error) {
	if r.opts.OnBusy != nil {
		defer r.opts.OnBusy()()
	}
	c := r.ctrls[section]
	if c == nil {
		return nil, &providers.MethodError{Status: 404, Message: fmt.Sprintf("unknown section %q", section)}
	}
	m, ok := c.info.Methods[name]
	if !ok {
		var known []string
		for n := range c.info.Methods {
			known = append(known, section+"."+n)
		}
		sort.Strings(known)
		if len(known) == 0 {
			return nil, &providers.MethodError{Status: 404, Message: fmt.Sprintf("section %s has no direct methods", section)}
		}
		return nil, &providers.MethodError{Status: 404, Message: fmt.Sprintf("section %s has no method %q (known: %s)", section, name, strings.Join(known, ", "))}
	}
	if len(strings.TrimSpace(string(payload))) == 0 {
		payload = json.RawMessage("null")
	}
	probs, err := c.methods[name].Validate(payload)
	if err != nil {
		return nil, fmt.Errorf("%s.%s: %w", section, name, err)
	}
	if len(probs) > 0 {
		inv := &providers.InvalidError{}
		for _, p := range probs {
			inv.Errors = append(inv.Errors, providers.FieldError{Pointer: p.Pointer, Message: p.Message})
		}
		return nil, inv
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(r.life, cancel)
	defer stop()
	r.stMu.Lock()
	sec := r.st.Section(section)
	managed := sec.ManagedSet()
	interrupted := map[string]bool{}
	for _, k := range sec.Interrupted {
		interrupted[k] = true
	}
	lastGood := sec.LastGood
	r.stMu.Unlock()
	env := r.env(section, managed, interrupted, r.log.With("section", section, "method", name))
	if lastGood != nil {
		var lg map[string]json.RawMessage
		if json.Unmarshal(lastGood, &lg) == nil {
			env.Desired = stripReserved(lg)
		}
	}
	var out any
	err = c.guard(ctx, section+"."+name, func(ctx context.Context) error {
		var err error
		out, err = m.Call(ctx, env, payload)
		return err
	})
	if err == nil {
		// A method may have changed what the section observes (a command
		// run, a request recorded for the loop): reconcile it, so that the
		// twin reports it.
		r.Enqueue(section)
	}
	return out, err
}
