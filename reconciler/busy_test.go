package reconciler

import (
	"context"
	"strings"
	"testing"
	"time"
)

// A provider whose Apply finds its lock held by someone else leaves the
// section Waiting (not Failed) with the provider's reason, retried no
// sooner than the provider asked; once the lock is free it converges.
func TestBusyIsWaitingAndRetried(t *testing.T) {
	f := newFixture(t)
	f.policy(t, "p.yaml", `apiVersion: twinlet.dev/v1
kind: DevicePolicy
metadata: { name: p }
spec:
  notes: { a: one, b: busy }
`)
	rep := f.new(t).ReconcileAll(context.Background(), false)
	s := section(rep, "notes")
	if s.Status.State != StateWaiting || s.Status.Reason != "LockHeld" || !s.Retry {
		t.Fatalf("busy: %+v retry=%v", s.Status, s.Retry)
	}
	if !strings.Contains(s.Status.Message, "held by process 42") || s.retryAfter != 3*time.Second {
		t.Fatalf("busy: message %q, retryAfter %v", s.Status.Message, s.retryAfter)
	}
	if f.read(t, "a") != "one" {
		t.Fatal("the change before the busy one was not applied")
	}
	f.policy(t, "p.yaml", `apiVersion: twinlet.dev/v1
kind: DevicePolicy
metadata: { name: p }
spec:
  notes: { a: one, b: two }
`)
	rep = f.new(t).ReconcileAll(context.Background(), false)
	if s := section(rep, "notes"); s.Status.State != StateReady || s.Retry {
		t.Fatalf("after the lock is free: %+v", s.Status)
	}
}
