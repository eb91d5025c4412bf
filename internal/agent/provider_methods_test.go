package agent_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/twinlet/twinlet/internal/agent"
	"github.com/twinlet/twinlet/internal/iothub"
	"github.com/twinlet/twinlet/internal/testutil"
	"github.com/twinlet/twinlet/providers"
	"github.com/twinlet/twinlet/reconciler"
)

// probe is a provider with direct methods and no section state of its own
// (a stand-in for certificates.get or commands.run, which do not exist
// yet): it observes nothing and plans nothing.
type probe struct{}

func (probe) Decode(*providers.Env, json.RawMessage) (providers.Spec, error) { return nil, nil }
func (probe) Observe(context.Context, *providers.Env, providers.Spec) (providers.Observed, error) {
	return map[string]any{}, nil
}
func (probe) Plan(providers.Spec, providers.Observed) ([]providers.Change, error) { return nil, nil }
func (probe) Apply(context.Context, *providers.Env, providers.Change) error       { return nil }

func probeInfo() providers.Info {
	return providers.Info{ID: "probe", Schema: json.RawMessage(`{"type":"object"}`), New: func() providers.Provider { return probe{} },
		Methods: map[string]providers.Method{
			"echo": {Schema: json.RawMessage(`{"type":"object","properties":{"msg":{"type":"string","maxLength":8}},"required":["msg"]}`),
				Call: func(_ context.Context, _ *providers.Env, p json.RawMessage) (any, error) {
					var arg struct{ Msg string }
					json.Unmarshal(p, &arg)
					if arg.Msg == "invalid" {
						return nil, providers.Invalid("/msg", "the method refuses it")
					}
					return map[string]string{"echo": arg.Msg}, nil
				}},
			"busy": {Schema: json.RawMessage(`{}`), Call: func(context.Context, *providers.Env, json.RawMessage) (any, error) {
				return nil, &providers.MethodError{Status: 409, Message: "already running"}
			}},
			"fail": {Schema: json.RawMessage(`{}`), Call: func(context.Context, *providers.Env, json.RawMessage) (any, error) {
				return nil, fmt.Errorf("disk on fire")
			}},
		}}
}

// Provider methods "<section>.<method>" are answered through the hub next
// to the agent's own: the payload is validated against the method's
// schema (400 with the JSON pointer), an *InvalidError is 400, a
// *MethodError its status, any other error 500.
func TestProviderMethods(t *testing.T) {
	e := newEnv(t)
	hn, _ := providers.Lookup("hostname")
	r, err := reconciler.New(reconciler.Options{Root: e.root, StateDir: e.state, PolicyDir: e.policy,
		Logger: slog.New(slog.DiscardHandler), Providers: []providers.Info{hn, probeInfo()}})
	if err != nil {
		t.Fatal(err)
	}
	cfg := iothub.DeviceConfig{HostName: e.cs.HostName, DeviceID: e.cs.DeviceID, Signer: iothub.KeySigner{Key: e.cs.SharedAccessKey},
		CAPEM: e.h.CAPEM(), Addr: e.mqttAddr, MinBackoff: 20 * time.Millisecond, MaxBackoff: 300 * time.Millisecond, RequestTimeout: 5 * time.Second}
	a, err := agent.New(r, cfg, agent.Options{Coalesce: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); a.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	testutil.Eventually(t, "connected", a.Client().Connected)

	call := func(name, payload string) (int, map[string]any) {
		t.Helper()
		var p json.RawMessage
		if payload != "" {
			p = json.RawMessage(payload)
		}
		res, err := e.h.InvokeMethod(context.Background(), "kiosk-17", "", name, p, 10*time.Second, 0)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		var m map[string]any
		json.Unmarshal(res.Payload, &m)
		return res.Status, m
	}
	if st, m := call("probe.echo", `{"msg":"hi"}`); st != 200 || m["echo"] != "hi" {
		t.Fatalf("echo: %d %v", st, m)
	}
	if st, m := call("probe.echo", `{"msg":"far too long"}`); st != 400 || !strings.Contains(fmt.Sprint(m["errors"]), "pointer:/msg") {
		t.Fatalf("bad payload: %d %v", st, m)
	}
	if st, m := call("probe.echo", `{"msg":"invalid"}`); st != 400 || !strings.Contains(fmt.Sprint(m["errors"]), "the method refuses it") {
		t.Fatalf("invalid: %d %v", st, m)
	}
	if st, m := call("probe.busy", ""); st != 409 || m["error"] != "already running" {
		t.Fatalf("busy: %d %v", st, m)
	}
	if st, m := call("probe.fail", ""); st != 500 || !strings.Contains(fmt.Sprint(m["error"]), "disk on fire") {
		t.Fatalf("fail: %d %v", st, m)
	}
	if st, m := call("probe.nope", ""); st != 404 || !strings.Contains(fmt.Sprint(m["error"]), "probe.echo") {
		t.Fatalf("unknown provider method: %d %v", st, m)
	}
	if st, m := call("selfDestruct", ""); st != 404 || !strings.Contains(fmt.Sprint(m["error"]), "probe.busy") {
		t.Fatalf("unknown method: %d %v", st, m)
	}
	if st, _ := call("getStatus", ""); st != 200 && st != 503 {
		t.Fatalf("built-in methods stay: %d", st)
	}
}
