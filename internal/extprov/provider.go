package extprov

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/twinlet/twinlet/providers"
	"github.com/twinlet/twinlet/providers/plugin"
)

// proxy is the providers.Provider of an external section: every call goes
// to the process. Decode and Plan, which take no context, are bounded by
// the provider's timeout.
type proxy struct {
	c       *client
	timeout time.Duration
}

// The proxy's optional capabilities, as the provider described them
// (the reconciler finds capabilities by type assertion).
type (
	scopedProxy      struct{ *proxy }
	watchingProxy    struct{ *proxy }
	scopedWatchProxy struct{ *proxy }
)

// newProxy returns the proxy with the capabilities d describes.
func newProxy(x *proxy, d plugin.Description) providers.Provider {
	switch {
	case d.CloudScope && d.WatchPaths:
		return scopedWatchProxy{x}
	case d.CloudScope:
		return scopedProxy{x}
	case d.WatchPaths:
		return watchingProxy{x}
	}
	return x
}

func (x scopedProxy) CloudScope(rules providers.ScopeRules, twin json.RawMessage) []providers.FieldError {
	return x.cloudScope(rules, twin)
}

func (x scopedWatchProxy) CloudScope(rules providers.ScopeRules, twin json.RawMessage) []providers.FieldError {
	return x.cloudScope(rules, twin)
}

func (x watchingProxy) WatchPaths(env *providers.Env, spec providers.Spec) []string {
	return x.watchPaths(env, spec)
}

func (x scopedWatchProxy) WatchPaths(env *providers.Env, spec providers.Spec) []string {
	return x.watchPaths(env, spec)
}

// watchPaths asks the provider what to watch; only paths under the root
// are kept. A provider that cannot answer gets no watches (the resync
// timer still heals drift).
func (x *proxy) watchPaths(env *providers.Env, spec providers.Spec) []string {
	ctx, cancel := context.WithTimeout(context.Background(), x.timeout)
	defer cancel()
	var res plugin.WatchPathsResult
	if err := x.c.call(ctx, plugin.MethodWatchPaths, plugin.WatchPathsParams{Env: wireEnv(env), Spec: specJSON(spec)}, &res, nil); err != nil {
		x.c.log.Warn("watch paths", "err", err)
		return nil
	}
	root := filepath.Clean(env.Root)
	var out []string
	for _, p := range res.Paths {
		p = filepath.Clean(p)
		if p == root || strings.HasPrefix(p, root+"/") || root == "/" && filepath.IsAbs(p) {
			out = append(out, p)
		}
	}
	return out
}

// observation is what Observe returns: reported as the section's body,
// handed to plan as the provider's private view when it gave one.
type observation struct {
	reported json.RawMessage
	private  json.RawMessage
	// env is what it was observed in, so that a plan the provider can no
	// longer relate to this observation (its process was started again
	// in between) observes once more in the same place.
	env *providers.Env
}

// MarshalJSON reports the observed body.
func (o observation) MarshalJSON() ([]byte, error) {
	if len(o.reported) == 0 {
		return []byte("null"), nil
	}
	return o.reported, nil
}

func wireEnv(env *providers.Env) plugin.Env {
	keys := func(m map[string]bool) []string {
		out := make([]string, 0, len(m))
		for k, ok := range m {
			if ok {
				out = append(out, k)
			}
		}
		sort.Strings(out)
		return out
	}
	if env == nil {
		return plugin.Env{}
	}
	return plugin.Env{Root: env.Root, StateDir: env.StateDir, AllowedRoots: env.AllowedRoots,
		Managed: keys(env.Managed), Interrupted: keys(env.Interrupted)}
}

func progressTo(env *providers.Env) func(plugin.ProgressParams) {
	return func(pp plugin.ProgressParams) { env.Progress(pp.Step, pp.Done, pp.Total) }
}

// Decode implements providers.Provider.
func (x *proxy) Decode(env *providers.Env, raw json.RawMessage) (providers.Spec, error) {
	ctx, cancel := context.WithTimeout(context.Background(), x.timeout)
	defer cancel()
	var res plugin.DecodeResult
	if err := x.c.call(ctx, plugin.MethodDecode, plugin.DecodeParams{Env: wireEnv(env), Section: raw}, &res, nil); err != nil {
		return nil, err
	}
	if len(res.Spec) == 0 {
		return nil, &Failure{Reason: ReasonProtocol, Message: "protocol: decode: the result has no spec"}
	}
	return res.Spec, nil
}

// Observe implements providers.Provider.
func (x *proxy) Observe(ctx context.Context, env *providers.Env, spec providers.Spec) (providers.Observed, error) {
	var res plugin.ObserveResult
	if err := x.c.call(ctx, plugin.MethodObserve, plugin.ObserveParams{Env: wireEnv(env), Spec: specJSON(spec)}, &res, nil); err != nil {
		return nil, err
	}
	return observation{reported: res.Observed, private: res.Private, env: env}, nil
}

func specJSON(spec providers.Spec) json.RawMessage {
	if raw, ok := spec.(json.RawMessage); ok {
		return raw
	}
	return json.RawMessage("null")
}

// Plan implements providers.Provider. A provider process that stopped
// at its keep-alive (or crashed) between Observe and Plan no longer knows
// the observation it handed out; Plan then observes again, once, and
// plans from that, so the idle timer never shows up as a failure.
func (x *proxy) Plan(spec providers.Spec, observed providers.Observed) ([]providers.Change, error) {
	o, _ := observed.(observation)
	ctx, cancel := context.WithTimeout(context.Background(), x.timeout)
	defer cancel()
	res, err := x.plan(ctx, spec, o)
	if errors.Is(err, errStale) {
		var again providers.Observed
		if again, err = x.Observe(ctx, o.env, spec); err == nil {
			res, err = x.plan(ctx, spec, again.(observation))
		}
	}
	if err != nil {
		return nil, err
	}
	out := make([]providers.Change, 0, len(res.Changes))
	for i, c := range res.Changes {
		a := providers.Action(c.Action)
		if a != providers.Create && a != providers.Update && a != providers.Delete {
			return nil, &Failure{Reason: ReasonProtocol, Message: fmt.Sprintf("protocol: plan: change %d: action %q is not Create, Update or Delete", i, c.Action)}
		}
		if c.Item == "" {
			return nil, &Failure{Reason: ReasonProtocol, Message: fmt.Sprintf("protocol: plan: change %d has no item", i)}
		}
		ch := providers.Change{Action: a, Item: c.Item, Key: c.Key, Before: c.Before, After: c.After,
			Once: c.Once, RebootRequired: c.RebootRequired}
		ch.Data = planned{data: c.Data, spec: spec, env: o.env}
		out = append(out, ch)
	}
	return out, nil
}

// planned is a change's Data: the provider's own data and what the plan
// was made from, so that Apply can plan again when the process that made
// it is gone.
type planned struct {
	data json.RawMessage
	spec providers.Spec
	env  *providers.Env
}

func (x *proxy) plan(ctx context.Context, spec providers.Spec, o observation) (plugin.PlanResult, error) {
	view := o.private
	if len(view) == 0 {
		view = o.reported
	}
	var res plugin.PlanResult
	err := x.c.call(ctx, plugin.MethodPlan, plugin.PlanParams{Spec: specJSON(spec), Observed: view}, &res, nil)
	return res, err
}

// Apply implements providers.Provider. When the process that planned the
// change is gone (keep-alive, crash), the provider can no longer relate
// the change to its plan: Apply observes and plans again, and applies the
// same change from the new plan if it is still in it. If it is not, the
// world moved on and the error stands; the reconciler starts over.
func (x *proxy) Apply(ctx context.Context, env *providers.Env, c providers.Change) error {
	d, _ := c.Data.(planned)
	err := x.apply(ctx, env, c, d.data)
	if !errors.Is(err, errStale) || d.env == nil {
		return err
	}
	obs, oerr := x.Observe(ctx, d.env, d.spec)
	if oerr != nil {
		return oerr
	}
	res, perr := x.plan(ctx, d.spec, obs.(observation))
	if perr != nil {
		return perr
	}
	for _, n := range res.Changes {
		if providers.Action(n.Action) == c.Action && n.Item == c.Item && n.Key == c.Key && n.Before == c.Before && n.After == c.After {
			return x.apply(ctx, env, c, n.Data)
		}
	}
	return err
}

func (x *proxy) apply(ctx context.Context, env *providers.Env, c providers.Change, data json.RawMessage) error {
	w := plugin.Change{Action: string(c.Action), Item: c.Item, Key: c.Key, Before: c.Before, After: c.After,
		Once: c.Once, RebootRequired: c.RebootRequired, Data: data}
	return x.c.call(ctx, plugin.MethodApply, plugin.ApplyParams{Env: wireEnv(env), Change: w}, nil, progressTo(env))
}

// cloudScope is providers.CloudScoper for providers that describe a
// cloud scope. A provider that cannot answer forbids everything the twin
// set, so that a broken provider never widens the scope.
func (x *proxy) cloudScope(rules providers.ScopeRules, twin json.RawMessage) []providers.FieldError {
	ctx, cancel := context.WithTimeout(context.Background(), x.timeout)
	defer cancel()
	var res plugin.CloudScopeResult
	err := x.c.call(ctx, plugin.MethodCloudScope, plugin.CloudScopeParams{Rules: plugin.Rules(rules), Twin: twin}, &res, nil)
	if err != nil {
		return []providers.FieldError{{Pointer: "", Message: "the provider could not check the cloud scope, so the twin's values are refused: " + err.Error()}}
	}
	out := make([]providers.FieldError, 0, len(res.Errors))
	for _, fe := range res.Errors {
		out = append(out, providers.FieldError(fe))
	}
	return out
}

// method is a direct method of an external provider.
func (x *proxy) method(name string) func(ctx context.Context, env *providers.Env, payload json.RawMessage) (any, error) {
	return func(ctx context.Context, env *providers.Env, payload json.RawMessage) (any, error) {
		var res plugin.MethodResult
		if err := x.c.call(ctx, plugin.MethodMethod, plugin.MethodParams{Env: wireEnv(env), Name: name, Payload: payload}, &res, progressTo(env)); err != nil {
			return nil, err
		}
		if len(res.Response) == 0 {
			return json.RawMessage("null"), nil
		}
		return res.Response, nil
	}
}
