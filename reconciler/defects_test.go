package reconciler

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/twinlet/twinlet/internal/testutil"
	"github.com/twinlet/twinlet/providers"
)

// watching is the note provider that watches its files.
type watching struct{ note }

func (watching) WatchPaths(env *providers.Env, spec providers.Spec) []string {
	var out []string
	for k := range spec.(noteSpec).items {
		out = append(out, filepath.Join(env.Root, "etc/notes", k))
	}
	sort.Strings(out)
	return out
}

// A drift event on a directory that several sections watch enqueues every
// one of them (it enqueued one, picked at random).
func TestDriftOnASharedPathEnqueuesEveryWatcher(t *testing.T) {
	f := newFixture(t)
	f.policy(t, "p.yaml", "apiVersion: twinlet.dev/v1\nkind: DevicePolicy\nmetadata: { name: p }\nspec:\n  one: { a: alpha }\n  two: { b: beta }\n")
	w := func(id string) providers.Info {
		return providers.Info{ID: id, Kind: providers.Collection, Schema: noteSchema, New: func() providers.Provider { return watching{} }}
	}
	var logs testutil.SyncBuffer
	r := f.new(t, func(o *Options) {
		o.Providers = []providers.Info{w("one"), w("two")}
		o.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	})
	runLoop(t, r)
	testutil.Eventually(t, "converged", func() bool { return f.read(t, "a") == "alpha" && f.read(t, "b") == "beta" })
	if strings.Contains(logs.String(), "fsnotify unavailable") {
		// The machine's inotify instances are shared by every test run
		// on it; without one there are no watches to test.
		t.Skipf("no inotify instance: %s", logs.String())
	}
	testutil.Eventually(t, "watched", func() bool {
		r.watchMu.Lock()
		defer r.watchMu.Unlock()
		return len(r.pathOwnersLocked(filepath.Join(f.root, "etc/notes/x"))) == 2
	})
	// Each drift is healed by its own section, whichever watch fires.
	for i := 0; i < 4; i++ {
		name, want := "a", "alpha"
		if i%2 == 1 {
			name, want = "b", "beta"
		}
		os.WriteFile(filepath.Join(f.root, "etc/notes", name), []byte("drift"), 0o644)
		testutil.Eventually(t, "drift of "+name+" healed", func() bool { return f.read(t, name) == want })
	}
}

// A section removed from desired and later desired again with an invalid
// value does not bring back its old last good desired state.
func TestRemovedThenInvalidDoesNotReviveLastGood(t *testing.T) {
	f := newFixture(t)
	f.policy(t, "p.yaml", "apiVersion: twinlet.dev/v1\nkind: DevicePolicy\nmetadata: { name: p }\nspec:\n  notes: { greeting: hello }\n")
	f.new(t).ReconcileAll(context.Background(), false)
	f.policy(t, "p.yaml", "apiVersion: twinlet.dev/v1\nkind: DevicePolicy\nmetadata: { name: p }\nspec: {}\n")
	f.new(t).ReconcileAll(context.Background(), false)
	os.Remove(filepath.Join(f.root, "etc/notes/greeting")) // no longer managed: may go
	f.policy(t, "p.yaml", "apiVersion: twinlet.dev/v1\nkind: DevicePolicy\nmetadata: { name: p }\nspec:\n  notes: { greeting: bad-value }\n")
	s := section(f.new(t).ReconcileAll(context.Background(), false), "notes")
	if s.Status.State != StateFailed || s.Status.Reason != ReasonInvalid || s.Status.Message != "1 invalid value(s); nothing applied" {
		t.Fatalf("status: %+v", s.Status)
	}
	if f.read(t, "greeting") != "<missing>" {
		t.Fatal("the stale last good desired came back")
	}
}

// unverifiable's Plan fails once something was applied.
type unverifiable struct{ note }

func (u unverifiable) Plan(spec providers.Spec, obs providers.Observed) ([]providers.Change, error) {
	if len(obs.(noteObs).Items) > 0 {
		return nil, errors.New("cannot compare")
	}
	return u.note.Plan(spec, obs)
}

// The verify step reports its plan's error (it was dropped, and the
// section was Ready).
func TestVerifyReportsItsPlanError(t *testing.T) {
	f := newFixture(t)
	f.policy(t, "p.yaml", "apiVersion: twinlet.dev/v1\nkind: DevicePolicy\nmetadata: { name: p }\nspec:\n  notes: { a: one }\n")
	infos := testProviders()[:1]
	infos[0].New = func() providers.Provider { return unverifiable{} }
	r := f.new(t, func(o *Options) { o.Providers = infos; o.CallTimeout = time.Minute })
	s := section(r.ReconcileAll(context.Background(), false), "notes")
	if s.Status.State != StateFailed || s.Status.Reason != ReasonProviderBug || s.Status.Message != "verify: plan: cannot compare" || !s.Retry {
		t.Fatalf("status: %+v", s.Status)
	}
}

// A $version that is not an integer is reported, and the sections are
// kept: the agent's twin read used to replace the twin layer by nothing.
func TestSplitDesiredKeepsSectionsOnABadVersion(t *testing.T) {
	doc := map[string]json.RawMessage{"$version": json.RawMessage(`"7"`), "notes": json.RawMessage(`{"a":"b"}`)}
	sections, ver, err := SplitDesired(doc)
	if err == nil || !strings.Contains(err.Error(), "$version") {
		t.Fatalf("err = %v", err)
	}
	if ver != 0 || string(sections["notes"]) != `{"a":"b"}` {
		t.Fatalf("sections %v version %d", sections, ver)
	}
}
