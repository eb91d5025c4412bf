package plugin

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"strings"
	"testing"

	"github.com/twinlet/twinlet/providers"
)

type nop struct{}

func (nop) Decode(env *providers.Env, raw json.RawMessage) (providers.Spec, error) {
	if strings.Contains(string(raw), "bad") {
		return nil, providers.Invalid("/x", "bad x")
	}
	return string(raw), nil
}
func (nop) Observe(context.Context, *providers.Env, providers.Spec) (providers.Observed, error) {
	return map[string]int{"n": 1}, nil
}
func (nop) Plan(providers.Spec, providers.Observed) ([]providers.Change, error) {
	return []providers.Change{{Action: providers.Update, Item: "n", Data: func() {}}}, nil
}
func (nop) Apply(ctx context.Context, env *providers.Env, c providers.Change) error {
	env.Progress("step", 1, 2)
	return nil
}

// TestServe drives Serve through pipes: every answer is one line of
// JSON-RPC; errors keep their meaning; Go values that do not marshal
// (a func in Change.Data) survive from plan to apply; shutdown ends it.
func TestServe(t *testing.T) {
	info := providers.Info{ID: "nop", Schema: json.RawMessage(`{"type":"object"}`), New: func() providers.Provider { return nop{} }}
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	done := make(chan error, 1)
	go func() { done <- Serve(context.Background(), inR, outW, info, nil); outW.Close() }()
	sc := bufio.NewScanner(outR)
	send := func(line string) {
		if _, err := io.WriteString(inW, line+"\n"); err != nil {
			t.Fatal(err)
		}
	}
	recv := func() Message {
		if !sc.Scan() {
			t.Fatalf("no answer: %v", sc.Err())
		}
		var m Message
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil || m.JSONRPC != "2.0" {
			t.Fatalf("not JSON-RPC: %s", sc.Bytes())
		}
		return m
	}
	send(`{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"1.0","section":"nop"}}`)
	if m := recv(); !strings.Contains(string(m.Result), `"protocolVersion":"1.0"`) {
		t.Fatalf("initialize: %+v", m)
	}
	send(`this is not json`)
	if m := recv(); m.Error == nil || m.Error.Code != -32700 || m.ID != nil {
		t.Fatalf("garbage: %+v", m)
	}
	send(`{"jsonrpc":"2.0","id":2,"method":"nosuch"}`)
	if m := recv(); m.Error == nil || m.Error.Code != -32601 {
		t.Fatalf("unknown method: %+v", m)
	}
	send(`{"jsonrpc":"2.0","id":3,"method":"decode","params":{"env":{"root":"/"},"section":{"bad":1}}}`)
	if m := recv(); m.Error == nil || m.Error.Code != CodeInvalid || !strings.Contains(string(m.Error.Data), `"pointer":"/x"`) {
		t.Fatalf("invalid: %+v", m)
	}
	send(`{"jsonrpc":"2.0","id":4,"method":"observe","params":{"env":{"root":"/"},"spec":{}}}`)
	var obs ObserveResult
	json.Unmarshal(recv().Result, &obs)
	send(`{"jsonrpc":"2.0","id":5,"method":"plan","params":{"spec":{},"observed":` + string(obs.Private) + `}}`)
	var plan PlanResult
	json.Unmarshal(recv().Result, &plan)
	if len(plan.Changes) != 1 {
		t.Fatalf("plan %+v", plan)
	}
	ch, _ := json.Marshal(plan.Changes[0])
	send(`{"jsonrpc":"2.0","id":6,"method":"apply","params":{"env":{"root":"/"},"change":` + string(ch) + `}}`)
	if m := recv(); m.Method != MethodProgress || !strings.Contains(string(m.Params), `"request":6`) {
		t.Fatalf("progress: %+v", m)
	}
	if m := recv(); m.Error != nil || *m.ID != 6 {
		t.Fatalf("apply: %+v", m)
	}
	send(`{"jsonrpc":"2.0","id":7,"method":"apply","params":{"env":{"root":"/"},"change":{"action":"Update","item":"n","data":{"ref":999}}}}`)
	if m := recv(); m.Error == nil || m.Error.Code != CodeStale || !strings.Contains(m.Error.Message, "observe and plan again") {
		t.Fatalf("stale apply: %+v", m)
	}
	send(`{"jsonrpc":"2.0","id":8,"method":"shutdown"}`)
	if m := recv(); m.Error != nil || *m.ID != 8 {
		t.Fatalf("shutdown: %+v", m)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	inW.Close()
}
