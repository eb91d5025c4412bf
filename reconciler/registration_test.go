package reconciler

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twinlet/twinlet/providers"
)

func TestRegistrationNeedsSchemas(t *testing.T) {
	newNote := func() providers.Provider { return note{} }
	call := func(context.Context, *providers.Env, json.RawMessage) (any, error) { return nil, nil }
	for _, tc := range []struct {
		info providers.Info
		want string
	}{
		{providers.Info{ID: "nothing", New: newNote}, "provider nothing has no schema"},
		{providers.Info{ID: "broken", Schema: json.RawMessage(`{"type": 7}`), New: newNote}, "provider broken: schema broken"},
		{providers.Info{ID: "m", Schema: noteSchema, New: newNote, Methods: map[string]providers.Method{"run": {Call: call}}}, "method m.run has no payload Schema"},
		{providers.Info{ID: "m", Schema: noteSchema, New: newNote, Methods: map[string]providers.Method{"run": {Schema: json.RawMessage(`{"type":`), Call: call}}}, "method m.run: payload schema is not JSON"},
		{providers.Info{ID: "m", Schema: noteSchema, New: newNote, Methods: map[string]providers.Method{"a.b": {Schema: json.RawMessage(`{}`), Call: call}}}, "must be a plain word"},
		{providers.Info{ID: "m", Schema: noteSchema, New: newNote, Methods: map[string]providers.Method{"run": {Schema: json.RawMessage(`{}`)}}}, "m.run has no Call"},
	} {
		_, err := New(Options{Root: t.TempDir(), StateDir: t.TempDir(), Providers: []providers.Info{tc.info}})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want %q", tc.info.ID, err, tc.want)
		}
	}
	// A payload schema that is JSON but not a schema fails the method's
	// first call (it is compiled then), never the start.
	r, err := New(Options{Root: t.TempDir(), StateDir: t.TempDir(), Providers: []providers.Info{{ID: "m", Schema: noteSchema, New: newNote,
		Methods: map[string]providers.Method{"run": {Schema: json.RawMessage(`{"type":"nope"}`), Call: call}}}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.CallMethod(context.Background(), "m", "run", json.RawMessage(`{}`)); err == nil || !strings.Contains(err.Error(), "m.run payload") {
		t.Errorf("a broken payload schema: err = %v", err)
	}
	// An embedded schema is enough.
	if _, err := New(Options{Root: t.TempDir(), StateDir: t.TempDir(), Providers: []providers.Info{{ID: "hostname", New: newNote}}}); err != nil {
		t.Fatal(err)
	}
}

// methodProviders offers notes.echo, notes.conflict and notes.hang.
func methodProviders() []providers.Info {
	infos := testProviders()
	infos[0].Timeout = 100 * time.Millisecond
	infos[0].Methods = map[string]providers.Method{
		"echo": {Schema: json.RawMessage(`{"type":"object","properties":{"msg":{"type":"string"}},"required":["msg"],"additionalProperties":false}`),
			Call: func(ctx context.Context, env *providers.Env, payload json.RawMessage) (any, error) {
				var p struct{ Msg string }
				json.Unmarshal(payload, &p)
				if p.Msg == "bad" {
					return nil, providers.Invalid("/msg", "bad is not a message")
				}
				return map[string]any{"echo": p.Msg, "managed": len(env.Managed)}, nil
			}},
		"conflict": {Schema: json.RawMessage(`{}`), Call: func(context.Context, *providers.Env, json.RawMessage) (any, error) {
			return nil, &providers.MethodError{Status: 409, Message: "already run"}
		}},
		"hang": {Schema: json.RawMessage(`{}`), Call: func(ctx context.Context, _ *providers.Env, _ json.RawMessage) (any, error) {
			<-ctx.Done()
			return nil, ctx.Err()
		}},
		"boom": {Schema: json.RawMessage(`{}`), Call: func(context.Context, *providers.Env, json.RawMessage) (any, error) { panic("boom") }},
	}
	return infos
}

func TestCallMethod(t *testing.T) {
	f := newFixture(t)
	r := f.new(t, func(o *Options) { o.Providers = methodProviders(); o.CallTimeout = 0 })
	ctx := context.Background()
	if got := strings.Join(r.MethodNames(), ","); got != "notes.boom,notes.conflict,notes.echo,notes.hang" {
		t.Fatalf("methods: %s", got)
	}
	out, err := r.CallMethod(ctx, "notes", "echo", json.RawMessage(`{"msg":"hi"}`))
	if b, _ := json.Marshal(out); err != nil || string(b) != `{"echo":"hi","managed":0}` {
		t.Fatalf("echo: %s %v", b, err)
	}
	var inv *providers.InvalidError
	if _, err := r.CallMethod(ctx, "notes", "echo", json.RawMessage(`{"msg":3}`)); !errors.As(err, &inv) || inv.Errors[0].Pointer != "/msg" {
		t.Fatalf("bad payload: %v", err)
	}
	if _, err := r.CallMethod(ctx, "notes", "echo", json.RawMessage(`{"msg":"hi","x":1}`)); !errors.As(err, &inv) || inv.Errors[0].Pointer != "/x" {
		t.Fatalf("unknown field: %v", err)
	}
	if _, err := r.CallMethod(ctx, "notes", "echo", json.RawMessage(`{"msg":"bad"}`)); !errors.As(err, &inv) || inv.Errors[0].Pointer != "/msg" {
		t.Fatalf("invalid from the method: %v", err)
	}
	var me *providers.MethodError
	if _, err := r.CallMethod(ctx, "notes", "conflict", nil); !errors.As(err, &me) || me.Status != 409 {
		t.Fatalf("conflict: %v", err)
	}
	if _, err := r.CallMethod(ctx, "notes", "nope", nil); !errors.As(err, &me) || me.Status != 404 || !strings.Contains(me.Message, "notes.echo") {
		t.Fatalf("unknown: %v", err)
	}
	if _, err := r.CallMethod(ctx, "notes", "hang", nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("hang is not bounded by the provider's timeout: %v", err)
	}
	if _, err := r.CallMethod(ctx, "notes", "boom", nil); err == nil || !strings.Contains(err.Error(), "panicked") {
		t.Fatalf("panic: %v", err)
	}
	// A method still running when the loop stops is cancelled.
	r = f.new(t, func(o *Options) { o.Providers = methodProviders(); o.CallTimeout = time.Hour })
	stop := runLoop(t, r)
	done := make(chan error, 1)
	go func() { _, err := r.CallMethod(ctx, "notes", "hang", nil); done <- err }()
	stop()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("after stop: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a method outlived the loop")
	}
}

func TestRebootRequiredIsLatched(t *testing.T) {
	f := newFixture(t)
	f.policy(t, "p.yaml", "apiVersion: twinlet.dev/v1\nkind: DevicePolicy\nmetadata: { name: p }\nspec:\n  notes: { kernel: reboot }\n  later: { x: reboot }\n")
	bootID := filepath.Join(f.root, "proc/sys/kernel/random/boot_id")
	os.MkdirAll(filepath.Dir(bootID), 0o755)
	os.WriteFile(bootID, []byte("boot-1\n"), 0o444)
	rep := f.new(t).ReconcileAll(context.Background(), false)
	if !rep.Summary.RebootRequired || rep.Summary.RebootRequiredBy != "later,notes" {
		t.Fatalf("summary: %+v", rep.Summary)
	}
	// It survives a restart although nothing asks again.
	rep = f.new(t).ReconcileAll(context.Background(), false)
	if !rep.Summary.RebootRequired || rep.Summary.RebootRequiredBy != "later,notes" || section(rep, "notes").Status.Changes != 0 {
		t.Fatalf("after a restart: %+v", rep.Summary)
	}
	// A reboot (a new boot id) clears it.
	os.WriteFile(bootID, []byte("boot-2\n"), 0o444)
	rep = f.new(t).ReconcileAll(context.Background(), false)
	if rep.Summary.RebootRequired || rep.Summary.RebootRequiredBy != "" {
		t.Fatalf("after a reboot: %+v", rep.Summary)
	}
	// So does the reboot provider.
	f.policy(t, "p.yaml", "apiVersion: twinlet.dev/v1\nkind: DevicePolicy\nmetadata: { name: p }\nspec:\n  notes: { kernel: reboot, other: reboot }\n")
	r := f.new(t)
	if rep := r.ReconcileAll(context.Background(), false); rep.Summary.RebootRequiredBy != "notes" {
		t.Fatalf("asked again: %+v", rep.Summary)
	}
	if err := r.ClearRebootRequired(); err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Summary Summary `json:"__summary"`
	}
	json.Unmarshal(r.Document(), &doc)
	if doc.Summary.RebootRequired || r.RebootRequiredBy() != nil {
		t.Fatalf("cleared: %+v", doc.Summary)
	}
}

// scoped is the note provider with a cloud scope: an item whose name
// matches a Deny glob, or a value starting with "root", is forbidden.
type scoped struct{ note }

func (scoped) CloudScope(rules providers.ScopeRules, twin json.RawMessage) []providers.FieldError {
	var m map[string]json.RawMessage
	json.Unmarshal(twin, &m)
	var out []providers.FieldError
	for k, v := range m {
		for _, g := range rules.Deny {
			if ok, _ := path.Match(g, k); ok {
				out = append(out, providers.FieldError{Pointer: "/" + k, Message: "denied by " + g})
			}
		}
		if strings.HasPrefix(string(v), `"root`) {
			out = append(out, providers.FieldError{Pointer: "/" + k, Message: "root values are privileged"})
		}
	}
	return out
}

func TestCloudScope(t *testing.T) {
	f := newFixture(t)
	f.policy(t, "p.yaml", "apiVersion: twinlet.dev/v1\nkind: DevicePolicy\nmetadata: { name: p }\nspec:\n  notes: { sshd: local-may }\n")
	twin := filepath.Join(t.TempDir(), "twin.json")
	os.WriteFile(twin, []byte(`{"notes":{"motd":"hi","ssh-keys":"evil","x":"rootkit"},"later":{"a":"b"},"$version":3}`), 0o644)
	infos := testProviders()
	infos[0].New = func() providers.Provider { return scoped{} }
	infos[0].CloudDeny = []string{"ssh*"}
	infos[1].DependsOn = nil // a Forbidden section holds its dependents back
	opts := func(o *Options) {
		o.Providers, o.TwinDesiredFile = infos, twin
		o.CloudSections = []string{"notes"}
	}
	rep := f.new(t, opts).ReconcileAll(context.Background(), false)
	s := section(rep, "notes")
	if s.Status.State != StateFailed || s.Status.Reason != ReasonForbidden || len(s.Errors) != 2 ||
		s.Errors[0].Pointer != "/ssh-keys" || s.Errors[0].At != "twin:/notes/ssh-keys" || s.Errors[1].Pointer != "/x" {
		t.Fatalf("notes: %+v %+v", s.Status, s.Errors)
	}
	// The allowed items converge; local policy is not limited.
	if f.read(t, "motd") != "hi" || f.read(t, "ssh-keys") != "<missing>" || f.read(t, "x") != "<missing>" || f.read(t, "sshd") != "local-may" {
		t.Fatalf("applied: motd=%s ssh-keys=%s x=%s sshd=%s", f.read(t, "motd"), f.read(t, "ssh-keys"), f.read(t, "x"), f.read(t, "sshd"))
	}
	if s := section(rep, "later"); s == nil || s.Status.Reason != ReasonForbidden || len(s.Errors) != 1 || s.Errors[0].Pointer != "" || f.read(t, "a") != "<missing>" {
		t.Fatalf("later: %+v", s)
	}
	// The config's rules replace the provider's defaults.
	rep = f.new(t, opts, func(o *Options) {
		o.CloudSections = nil
		o.CloudRules = map[string]providers.ScopeRules{"notes": {Deny: []string{"motd"}}}
	}).ReconcileAll(context.Background(), false)
	if s := section(rep, "notes"); len(s.Errors) != 2 || s.Errors[0].Pointer != "/motd" || f.read(t, "ssh-keys") != "evil" {
		t.Fatalf("config rules: %+v", s.Errors)
	}
	if s := section(rep, "later"); s.Status.State != StateReady || f.read(t, "a") != "b" {
		t.Fatalf("every section allowed: %+v", s.Status)
	}
}

// A twin whose every key is forbidden desires nothing: with no other
// layer the section is refused as Forbidden, not validated as an empty
// section (an object section such as ntp would read as Invalid).
func TestCloudScopeAllKeysForbidden(t *testing.T) {
	f := newFixture(t)
	twin := filepath.Join(t.TempDir(), "twin.json")
	os.WriteFile(twin, []byte(`{"notes":{"ssh-keys":"evil","x":"rootkit"},"$version":4}`), 0o644)
	infos := testProviders()
	infos[0].New = func() providers.Provider { return scoped{} }
	infos[0].CloudDeny = []string{"ssh*"}
	infos[1].DependsOn = nil
	rep := f.new(t, func(o *Options) { o.Providers, o.TwinDesiredFile = infos, twin }).ReconcileAll(context.Background(), false)
	s := section(rep, "notes")
	if s.Status.State != StateFailed || s.Status.Reason != ReasonForbidden || !strings.Contains(s.Status.Message, "nothing else desires the section") || len(s.Errors) != 2 {
		t.Fatalf("notes: %+v %+v", s.Status, s.Errors)
	}
	if f.read(t, "ssh-keys") != "<missing>" || f.read(t, "x") != "<missing>" {
		t.Fatal("a forbidden value was applied")
	}
}

// staticSource is a further desired-state source (a fleet source, later).
type staticSource map[string]json.RawMessage

func (s staticSource) Inputs(id string) []Input {
	v, ok := s[id]
	if !ok {
		return nil
	}
	return []Input{{Layer: LayerEnforce, Source: "fleet", Value: v}}
}

// A source plugs in through Options.Sources; its inputs merge by layer
// with the built-in ones.
func TestSourcesPlugIn(t *testing.T) {
	f := newFixture(t)
	f.policy(t, "base.yaml", basePolicy)
	r := f.new(t, func(o *Options) {
		o.Sources = []Source{staticSource{"notes": json.RawMessage(`{"color":"fleet-green"}`)}}
	})
	s := section(r.ReconcileAll(context.Background(), false), "notes")
	if f.read(t, "color") != "fleet-green" || f.read(t, "greeting") != "hello" || s.Status.State != StateReady {
		t.Fatalf("color=%s greeting=%s %+v", f.read(t, "color"), f.read(t, "greeting"), s.Status)
	}
}
