// Command greeting is an external provider built in a module of its own
// (the test gives it a go.mod that requires twinlet): it shows that a Go
// provider outside twinlet needs providers and providers/plugin only. Its
// section {"text": "..."} is kept in <root>/etc/greeting.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"os"

	"github.com/twinlet/twinlet/providers"
	"github.com/twinlet/twinlet/providers/plugin"
)

func main() {
	plugin.Main(providers.Info{ID: "greeting", Kind: providers.Object,
		Schema: json.RawMessage(`{"type":"object","additionalProperties":false,"properties":{"text":{"type":"string","maxLength":80}}}`),
		New:    func() providers.Provider { return greeting{} }})
}

type greeting struct{}

type spec struct {
	Text *string `json:"text"`
}

func (greeting) Decode(_ *providers.Env, raw json.RawMessage) (providers.Spec, error) {
	var s spec
	err := json.Unmarshal(raw, &s)
	return s, err
}

func (greeting) Observe(_ context.Context, env *providers.Env, _ providers.Spec) (providers.Observed, error) {
	b, err := os.ReadFile(env.HostPath("/etc/greeting"))
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]any{"text": nil}, nil
	}
	return map[string]any{"text": string(b)}, err
}

func (greeting) Plan(s providers.Spec, o providers.Observed) ([]providers.Change, error) {
	want, have := s.(spec).Text, o.(map[string]any)["text"]
	if want == nil || have == *want {
		return nil, nil
	}
	c := providers.Change{Action: providers.Create, Item: "text", After: *want, Data: *want}
	if h, ok := have.(string); ok {
		c.Action, c.Before = providers.Update, h
	}
	return []providers.Change{c}, nil
}

func (greeting) Apply(_ context.Context, env *providers.Env, c providers.Change) error {
	d, err := env.OpenRoot()
	if err != nil {
		return err
	}
	defer d.Close()
	return d.WriteFileAtomic("etc/greeting", []byte(c.Data.(string)), providers.FileMeta{Mode: 0o644})
}
