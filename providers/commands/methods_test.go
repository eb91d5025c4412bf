package commands

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/twinlet/twinlet/internal/testutil"
	"github.com/twinlet/twinlet/providers"
	"github.com/twinlet/twinlet/reconciler"
)

// Through the runtime: a bad payload is refused with its pointer before
// the method runs; commands.run finds the definitions in the section's
// last good desired; without wait it answers at once and the running loop
// (enqueued by the call) runs the command and reports it.
func TestMethodsThroughTheRuntime(t *testing.T) {
	env := newEnv(t)
	pol := t.TempDir()
	os.WriteFile(filepath.Join(pol, "p.yaml"), []byte(`apiVersion: twinlet.dev/v1
kind: DevicePolicy
metadata: { name: p }
spec:
  commands:
    definitions:
      hi: { argv: [echo, hi], timeout: 1m, env: { TOKEN: very-secret-value } }
      env: { argv: [sh, -c, 'echo "$TOKEN"'], env: { TOKEN: very-secret-value } }
`), 0o644)
	info, _ := providers.Lookup(ID)
	r, err := reconciler.New(reconciler.Options{Root: env.Root, StateDir: env.StateDir, PolicyDir: pol,
		Providers: []providers.Info{info}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ctx := context.Background()
	for payload, ptr := range map[string]string{
		`{"name": 5, "commandId": "a"}`:                   "/name",
		`{"name": "hi"}`:                                  "",
		`{"name": "hi", "commandId": "a/b"}`:              "/commandId",
		`{"name": "hi", "commandId": "a", "argv": ["x"]}`: "/argv",
		`{"name": "hi", "commandId": "a", "wait": "yes"}`: "/wait",
	} {
		_, err := r.CallMethod(ctx, ID, "run", json.RawMessage(payload))
		var inv *providers.InvalidError
		if !errors.As(err, &inv) {
			t.Fatalf("%s: %v", payload, err)
		}
		found := false
		for _, fe := range inv.Errors {
			found = found || fe.Pointer == ptr
		}
		if !found {
			t.Errorf("%s: want a problem at %q, got %+v", payload, ptr, inv.Errors)
		}
	}
	// Before any reconcile nothing desired is known yet to the method.
	if _, err := r.CallMethod(ctx, ID, "run", json.RawMessage(`{"name": "hi", "commandId": "m0"}`)); err == nil {
		t.Fatal("ran without a last good section")
	}
	r.ReconcileAll(ctx, false)

	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(runCtx, reconciler.RunOptions{}) }()
	defer func() { stop(); <-done }()
	out, err := r.CallMethod(ctx, ID, "run", json.RawMessage(`{"name": "env", "commandId": "m1"}`))
	if err != nil || out.(RunResponse).State != Pending {
		t.Fatalf("run: %+v %v", out, err)
	}
	testutil.Eventually(t, "the loop runs m1 and reports it", func() bool {
		var doc map[string]struct {
			Runs map[string]RunReport `json:"runs"`
		}
		json.Unmarshal(r.Document(), &doc)
		got := doc[ID].Runs["m1"]
		return got.State == Succeeded && got.Stdout == Redacted+"\n"
	})
}
