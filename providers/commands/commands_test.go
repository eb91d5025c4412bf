package commands

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/twinlet/twinlet/internal/testutil"
	"github.com/twinlet/twinlet/providers"
	"github.com/twinlet/twinlet/providers/providertest"
	"github.com/twinlet/twinlet/schemas"
)

const passwd = "root:x:0:0:root:/root:/bin/sh\nrunner:x:4242:4343:Runner:/home/runner:/bin/sh\n"
const group = "root:x:0:\nrunner:x:4343:\nadm:x:4:runner\n"

// newEnv is a temporary root with a passwd and a group file.
func newEnv(t *testing.T) *providers.Env { return newEnvB(t) }

func newEnvB(t testing.TB) *providers.Env {
	t.Helper()
	env := providertest.NewEnv(t)
	// Commands run as another user reach their working directory inside
	// the temporary root (made 0700 by the testing package).
	os.Chmod(env.Root, 0o755)
	os.Chmod(filepath.Dir(env.Root), 0o755)
	for _, d := range []string{"etc", "srv/app", "home/runner", "root"} {
		if err := os.MkdirAll(filepath.Join(env.Root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(env.Root, "etc/passwd"), []byte(passwd), 0o644)
	os.WriteFile(filepath.Join(env.Root, "etc/group"), []byte(group), 0o644)
	return env
}

func section(t *testing.T, defs, runs string) json.RawMessage {
	t.Helper()
	raw := json.RawMessage(`{"definitions": {` + defs + `}, "runs": {` + runs + `}}`)
	probs, err := schemas.Validate(ID, raw)
	if err != nil || len(probs) > 0 {
		t.Fatalf("schema: %v %+v\n%s", err, probs, raw)
	}
	return raw
}

func observe(t *testing.T, env *providers.Env, raw json.RawMessage) *Observed {
	t.Helper()
	return providertest.Observe(t, Provider{}, env, raw).(*Observed)
}

func asRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("runs commands as another user: needs root (CAP_SETUID, CAP_SETGID)")
	}
}

// The drift timeline: a run asked for is planned as one diff line, runs
// as the root's user in its working directory, and is reported; it is
// never planned again, a new commandId runs, a failing command is a
// Failed result (not an apply error).
func TestTimeline(t *testing.T) {
	asRoot(t)
	env := newEnv(t)
	defs := `"who": {"argv": ["id", "-u"], "user": "runner"},
		"groups": {"argv": ["/usr/bin/id", "-G"], "user": "runner"},
		"where": {"argv": ["pwd"], "workingDir": "/srv/app"},
		"fail": {"argv": ["sh", "-c", "echo oops >&2; exit 3"], "timeout": "20s"}`
	raw := section(t, defs, `"r1": {"name": "who"}`)
	plan := providertest.PlanOnly(t, Provider{}, env, raw)
	if got := providertest.Lines(plan); len(got) != 1 || got[0] != "+ runs/r1: run who as runner: id, timeout 10m0s" {
		t.Fatalf("plan: %q", got)
	}
	providertest.Converge(t, Provider{}, env, raw)
	o := observe(t, env, raw)
	r := o.Runs["r1"]
	if r.State != Succeeded || r.ExitCode == nil || *r.ExitCode != 0 || r.Stdout != "4242\n" || r.StartTime == "" || r.DurationMs == nil || r.Origin != "twin" {
		t.Fatalf("r1: %+v", r)
	}
	if strings.Join(o.Definitions, ",") != "fail,groups,where,who" {
		t.Fatalf("definitions: %v", o.Definitions)
	}
	if plan := providertest.PlanOnly(t, Provider{}, env, raw); len(plan) != 0 {
		t.Fatalf("planned again: %v", providertest.Lines(plan))
	}

	raw = section(t, defs, `"r1": {"name": "who"}, "r2": {"name": "where"}, "r3": {"name": "fail"}, "r4": {"name": "groups"}`)
	if got := providertest.Lines(providertest.PlanOnly(t, Provider{}, env, raw)); len(got) != 3 {
		t.Fatalf("plan: %q", got)
	}
	providertest.Converge(t, Provider{}, env, raw)
	o = observe(t, env, raw)
	if r := o.Runs["r2"]; r.State != Succeeded || r.Stdout != filepath.Join(env.Root, "srv/app")+"\n" {
		t.Fatalf("r2: %+v", r)
	}
	if r := o.Runs["r3"]; r.State != Failed || r.ExitCode == nil || *r.ExitCode != 3 || r.Stderr != "oops\n" {
		t.Fatalf("r3: %+v", r)
	}
	if r := o.Runs["r4"]; r.State != Succeeded || r.Stdout != "4343 4\n" {
		t.Fatalf("r4 (supplementary groups of the root's /etc/group): %+v", r)
	}
}

// A command past its timeout is TimedOut and its whole process group is
// killed, a background child included.
func TestTimeoutKillsTheProcessGroup(t *testing.T) {
	env := newEnv(t)
	def := Def{Name: "hang", Argv: []string{"sh", "-c", `sleep 300 & echo $! > "$TWINLET_ROOT/child.pid"; echo started; wait`}, Timeout: time.Second}
	res := Run(context.Background(), env, def, nil)
	if res.State != TimedOut || res.ExitCode != nil || res.Signal != "SIGKILL" || res.Stdout != "started\n" {
		t.Fatalf("result: %+v", res)
	}
	b, err := os.ReadFile(filepath.Join(env.Root, "child.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	testutil.Eventually(t, "the background child is gone", func() bool { return procStart(pid) == 0 })

	// The end of ctx (a shutdown) is Canceled, the group killed too.
	ctx, cancel := context.WithCancel(context.Background())
	def.Timeout = time.Hour
	go func() {
		testutil.Eventually(t, "second run started", func() bool {
			b, _ := os.ReadFile(filepath.Join(env.Root, "child.pid"))
			return strings.TrimSpace(string(b)) != strconv.Itoa(pid)
		})
		cancel()
	}()
	if res := Run(ctx, env, def, nil); res.State != Canceled {
		t.Fatalf("canceled: %+v", res)
	}
}

// The values of the command's environment never appear in the tails,
// even cut in two by the tail's bound; the tails keep the end.
func TestSecretsAreRedacted(t *testing.T) {
	env := newEnv(t)
	const secret = "hunter2-TOKEN-9f8e7d"
	def := Def{Name: "leak", MaxOutput: 64, Env: map[string]string{"TOKEN": secret, "LANG": "C"},
		Argv: []string{"sh", "-c", `echo "token=$TOKEN"; echo "$TOKEN" >&2; i=0; while [ $i -lt 200 ]; do echo "line $i $TOKEN"; i=$((i+1)); done; echo end`}}
	res := Run(context.Background(), env, def, nil)
	if res.State != Succeeded {
		t.Fatalf("%+v", res)
	}
	for _, s := range []string{res.Stdout, res.Stderr} {
		for i := 0; i+6 <= len(secret); i++ {
			if strings.Contains(s, secret[i:i+6]) {
				t.Fatalf("part of the secret in %q", s)
			}
		}
	}
	if !strings.HasSuffix(res.Stdout, "line 199 "+Redacted+"\nend\n") || len(res.Stdout) > 64 || res.StdoutBytes < 5000 {
		t.Fatalf("stdout tail %q (%d bytes)", res.Stdout, res.StdoutBytes)
	}
	if res.Stderr != Redacted+"\n" {
		t.Fatalf("stderr %q", res.Stderr)
	}

	// The bound cuts a secret in two: no part of it is shown.
	for cutAt := 1; cutAt < len(secret); cutAt++ {
		tl := &tail{max: 10 + len(secret)}
		tl.Write([]byte(strings.Repeat("a", 100) + secret))
		tl.Write([]byte(strings.Repeat("b", 10+len(secret)-(len(secret)-cutAt))))
		got, _ := tl.result(10, []string{secret})
		if strings.ContainsAny(got, "TOKEN-9f") || strings.Contains(got, secret[cutAt:]) && len(secret[cutAt:]) >= 3 {
			t.Fatalf("cut at %d: %q", cutAt, got)
		}
	}
}

// Bad definitions are located; the twin may not define commands nor set
// local-only settings; a run of an unknown or disallowed name is located
// at its name.
func TestInvalidInput(t *testing.T) {
	env := newEnv(t)
	_, err := Provider{}.Decode(env, json.RawMessage(`{"definitions": {
		"a": {"argv": ["x"], "timeout": "7h"},
		"b": {"argv": ["bin/x"], "workingDir": "/srv/../etc"},
		"c": {"argv": ["x"], "env": {"1BAD": "v"}}}, "cloudAllow": ["x\\"]}`))
	got := providertest.Invalid(t, err)
	sort.Strings(got)
	want := []string{"/cloudAllow/0", "/definitions/a/timeout", "/definitions/b/argv/0", "/definitions/b/workingDir", "/definitions/c/env/1BAD"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("pointers %v, want %v", got, want)
	}
	for doc, ptr := range map[string]string{
		`{"definitions": {"a": {"argv": []}}}`:                       "/definitions/a/argv",
		`{"definitions": {"a": {"argv": ["x"], "y": 1}}}`:            "/definitions/a/y",
		`{"definitions": {"a b": {"argv": ["x"]}}}`:                  "/definitions/a b",
		`{"runs": {"r/1": {"name": "a"}}}`:                           "/runs/r~11",
		`{"runs": {"r1": {}}}`:                                       "/runs/r1",
		`{"definitions": {"a": {"argv": ["x"], "timeout": "soon"}}}`: "/definitions/a/timeout",
	} {
		probs, _ := schemas.Validate(ID, json.RawMessage(doc))
		found := false
		for _, p := range probs {
			found = found || p.Pointer == ptr
		}
		if !found {
			t.Errorf("%s: want a problem at %s, got %+v", doc, ptr, probs)
		}
	}

	raw := section(t, `"a": {"argv": ["true"]}, "secret": {"argv": ["true"]}`, `"r1": {"name": "nope"}, "r2": {"name": "a"}`)
	spec := providertest.Decode(t, Provider{}, env, raw)
	obs, _ := Provider{}.Observe(context.Background(), env, spec)
	_, err = Provider{}.Plan(spec, obs)
	if got := providertest.Invalid(t, err); len(got) != 1 || got[0] != "/runs/r1/name" {
		t.Fatalf("unknown name: %v", got)
	}
	var raw2 map[string]any
	json.Unmarshal(raw, &raw2)
	raw2["cloudAllow"] = []string{"a*"}
	raw2["runs"] = map[string]any{"r3": map[string]string{"name": "secret"}}
	b, _ := json.Marshal(raw2)
	spec = providertest.Decode(t, Provider{}, env, b)
	_, err = Provider{}.Plan(spec, obs)
	if got := providertest.Invalid(t, err); len(got) != 1 || got[0] != "/runs/r3/name" {
		t.Fatalf("not allowed: %v", got)
	}

	fes := Provider{}.CloudScope(providers.ScopeRules{Deny: []string{"danger-*"}}, json.RawMessage(`{
		"definitions": {"evil": {"argv": ["/bin/sh"]}}, "cloudAllow": ["*"], "results": {"keep": 1},
		"runs": {"r1": {"name": "danger-wipe"}, "r2": {"name": "ok"}}}`))
	var ptrs []string
	for _, fe := range fes {
		ptrs = append(ptrs, fe.Pointer)
	}
	if strings.Join(ptrs, " ") != "/definitions/evil /cloudAllow /results /runs/r1/name" {
		t.Fatalf("cloud scope: %v", fes)
	}
}

func callEnv(t *testing.T, env *providers.Env, raw json.RawMessage) *providers.Env {
	e := *env
	e.Desired = raw
	return &e
}

// commands.run: unknown name 404, a commandId used before 409 (whether it
// ran from the twin or a method), wait answers the result, without wait
// the run is Pending until the loop runs it once; commands.get.
func TestRunMethod(t *testing.T) {
	env := newEnv(t)
	raw := section(t, `"echo": {"argv": ["echo", "hi"], "timeout": "30s"}, "long": {"argv": ["true"]}`, `"t1": {"name": "echo"}`)
	menv := callEnv(t, env, raw)
	ctx := context.Background()
	status := func(err error) int {
		var me *providers.MethodError
		if errors.As(err, &me) {
			return me.Status
		}
		return 0
	}
	if _, err := callRun(ctx, menv, json.RawMessage(`{"name": "nope", "commandId": "m1"}`)); status(err) != 404 {
		t.Fatalf("unknown name: %v", err)
	}
	if _, err := callRun(ctx, &providers.Env{StateDir: env.StateDir}, json.RawMessage(`{"name": "echo", "commandId": "m1"}`)); status(err) != 404 {
		t.Fatalf("no section: %v", err)
	}
	_, err := callRun(ctx, menv, json.RawMessage(`{"name": "long", "commandId": "m1", "wait": true}`))
	if got := providertest.Invalid(t, err); len(got) != 1 || got[0] != "/wait" {
		t.Fatalf("wait on a long command: %v", err)
	}
	out, err := callRun(ctx, menv, json.RawMessage(`{"name": "echo", "commandId": "m1", "wait": true}`))
	if err != nil || out.(*Record).State != Succeeded || out.(*Record).Stdout != "hi\n" {
		t.Fatalf("wait: %+v %v", out, err)
	}
	if _, err := callRun(ctx, menv, json.RawMessage(`{"name": "echo", "commandId": "m1", "wait": true}`)); status(err) != 409 {
		t.Fatalf("again: %v", err)
	}
	providertest.Converge(t, Provider{}, env, raw) // runs t1
	if _, err := callRun(ctx, menv, json.RawMessage(`{"name": "echo", "commandId": "t1"}`)); status(err) != 409 {
		t.Fatalf("twin's id: %v", err)
	}

	out, err = callRun(ctx, menv, json.RawMessage(`{"name": "echo", "commandId": "m2"}`))
	if err != nil || out.(RunResponse).State != Pending || !out.(RunResponse).Accepted {
		t.Fatalf("accepted: %+v %v", out, err)
	}
	if o := observe(t, env, raw); o.Runs["m2"].State != Pending {
		t.Fatalf("pending: %+v", o.Runs["m2"])
	}
	plan := providertest.PlanOnly(t, Provider{}, env, raw)
	if got := providertest.Lines(plan); len(got) != 1 || got[0] != "+ runs/m2: run echo: echo, timeout 30s (commands.run)" || !plan[0].Once {
		t.Fatalf("plan: %q", got)
	}
	providertest.Converge(t, Provider{}, env, raw)
	got, err := callGet(ctx, menv, json.RawMessage(`{"commandId": "m2"}`))
	if err != nil || got.(*Record).State != Succeeded || got.(*Record).Origin != "method" || got.(*Record).Stdout != "hi\n" {
		t.Fatalf("get: %+v %v", got, err)
	}
	if _, err := callGet(ctx, menv, json.RawMessage(`{"commandId": "zz"}`)); status(err) != 404 {
		t.Fatalf("get unknown: %v", err)
	}
}

// Only the last keep results are kept; older commandIds still never run
// again.
func TestResultsAreBounded(t *testing.T) {
	env := newEnv(t)
	raw := json.RawMessage(`{"definitions": {"t": {"argv": ["true"]}}, "results": {"keep": 2, "report": 1}, "runs": {"a": {"name": "t"}, "b": {"name": "t"}, "c": {"name": "t"}}}`)
	providertest.Converge(t, Provider{}, env, raw)
	doc, _ := newStore(env.StateDir, 0).load()
	if len(doc.Results) != 2 || len(doc.Seen) != 1 || doc.Seen[0].CommandID != "a" {
		t.Fatalf("store: %+v", doc)
	}
	if plan := providertest.PlanOnly(t, Provider{}, env, raw); len(plan) != 0 {
		t.Fatalf("dropped result ran again: %v", providertest.Lines(plan))
	}
	o := observe(t, env, raw)
	if len(o.Runs) != 3 || o.Runs["a"].State != Succeeded {
		t.Fatalf("reported: %+v", o.Runs)
	}
}

const childEnv = "TWINLET_COMMANDS_CHILD"

// TestMethodChild is the agent the kill test kills while commands.run
// with wait runs.
func TestMethodChild(t *testing.T) {
	v := os.Getenv(childEnv)
	if v == "" {
		t.Skip("helper process of TestMethodRunKilled")
	}
	var a []string
	json.Unmarshal([]byte(v), &a)
	env := &providers.Env{Root: a[0], StateDir: a[1], Desired: json.RawMessage(a[2]), Now: time.Now}
	callRun(context.Background(), env, json.RawMessage(`{"name": "slow", "commandId": "k1", "wait": true}`))
	t.Fatal("the slow command returned")
}

// A kill -9 of the agent while commands.run runs a command: the
// commandId is Interrupted afterwards, refused, and never run again (the
// marker the command writes first is there once).
func TestMethodRunKilled(t *testing.T) {
	env := newEnv(t)
	raw := section(t, `"slow": {"argv": ["sh", "-c", "echo run >> \"$TWINLET_ROOT/marker\"; exec sleep 120"], "timeout": "290s"}`, "")
	arg, _ := json.Marshal([]string{env.Root, env.StateDir, string(raw)})
	cmd := exec.Command(os.Args[0], "-test.run=^TestMethodChild$")
	cmd.Env = append(os.Environ(), childEnv+"="+string(arg))
	var out testutil.SyncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	marker := func() string { b, _ := os.ReadFile(filepath.Join(env.Root, "marker")); return string(b) }
	testutil.Eventually(t, "the command runs", func() bool { return marker() == "run\n" })
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()

	menv := callEnv(t, env, raw)
	got, err := callGet(context.Background(), menv, json.RawMessage(`{"commandId": "k1"}`))
	if err != nil || got.(*Record).State != Interrupted {
		t.Fatalf("after the kill: %+v %v\n%s", got, err, out.String())
	}
	if o := observe(t, env, raw); o.Runs["k1"].State != Interrupted {
		t.Fatalf("reported: %+v", o.Runs["k1"])
	}
	var me *providers.MethodError
	if _, err := callRun(context.Background(), menv, json.RawMessage(`{"name": "slow", "commandId": "k1"}`)); !errors.As(err, &me) || me.Status != 409 {
		t.Fatalf("run again: %v", err)
	}
	providertest.Converge(t, Provider{}, env, raw)
	if marker() != "run\n" {
		t.Fatalf("ran twice: %q", marker())
	}
	// The command died with the agent (SIGKILL on the parent's death).
	doc, _ := newStore(env.StateDir, 0).load()
	if r, _ := doc.find("k1"); r == nil || r.State != Running && r.State != Interrupted {
		t.Fatalf("record: %+v", r)
	}
}

// copyProgram copies a host program and the libraries ldd names into the
// root, so that it runs chrooted there.
func copyProgram(t *testing.T, root, prog string) {
	t.Helper()
	out, err := exec.Command("ldd", prog).Output()
	if err != nil {
		t.Skipf("ldd %s: %v", prog, err)
	}
	files := []string{prog}
	for _, f := range strings.Fields(string(out)) {
		if strings.HasPrefix(f, "/") {
			files = append(files, f)
		}
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(root, f)
		os.MkdirAll(filepath.Dir(dst), 0o755)
		if err := os.WriteFile(dst, b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

// With chroot: true on a sandbox root, the program is the root's and runs
// chrooted there: its working directory is the device path, and a program
// that only the host has is not found.
func TestChroot(t *testing.T) {
	asRoot(t)
	env := newEnv(t)
	pwd, err := exec.LookPath("pwd")
	if err != nil {
		t.Skip("no pwd")
	}
	copyProgram(t, env.Root, pwd)
	res := Run(context.Background(), env, Def{Name: "pwd", Argv: []string{"pwd"}, WorkingDir: "/srv/app", Chroot: true, User: "runner"}, nil)
	if res.State != Succeeded || res.Stdout != "/srv/app\n" {
		t.Fatalf("chrooted: %+v", res)
	}
	res = Run(context.Background(), env, Def{Name: "sleep", Argv: []string{"sleep", "1"}, Chroot: true}, nil)
	if res.State != Failed || !strings.Contains(res.Error, "not found in PATH") {
		t.Fatalf("host program in a chroot: %+v", res)
	}
}

// A running command reports progress: its step, the seconds so far and
// the timeout's.
func TestProgress(t *testing.T) {
	env := newEnv(t)
	old := progressEvery
	progressEvery = 10 * time.Millisecond
	defer func() { progressEvery = old }()
	var steps []string
	env.OnProgress = func(step string, done, total int) {
		if total != 60 {
			t.Errorf("total %d", total)
		}
		steps = append(steps, step)
	}
	res := Run(context.Background(), env, Def{Name: "nap", Argv: []string{"sleep", "0.2"}, Timeout: time.Minute}, nil)
	if res.State != Succeeded || len(steps) < 2 || !strings.HasPrefix(steps[0], "run nap (pid ") {
		t.Fatalf("%+v %q", res, steps)
	}
}

// Arguments reach the program as they are: no shell expands variables,
// globs, command substitutions or separators.
func TestArgvWithoutAShell(t *testing.T) {
	env := newEnv(t)
	os.WriteFile(filepath.Join(env.Root, "srv/app/file"), nil, 0o644)
	args := []string{"$HOME", "*", "`id`", "$(id)", ";", "|", "&&", "'q'", "a b"}
	res := Run(context.Background(), env, Def{Name: "lit", Argv: append([]string{"printf", `[%s]`}, args...), WorkingDir: "/srv/app"}, nil)
	want := ""
	for _, a := range args {
		want += "[" + a + "]"
	}
	if res.State != Succeeded || res.Stdout != want {
		t.Fatalf("stdout %q, want %q (%+v)", res.Stdout, want, res)
	}
}

// While a twin run runs it is reported Running; an agent shutdown (the
// end of Apply's context) kills it and reports it Canceled, and it is
// never run again.
func TestRunningThenCanceled(t *testing.T) {
	env := newEnv(t)
	raw := section(t, `"nap": {"argv": ["sh", "-c", "echo run >> \"$TWINLET_ROOT/marker\"; exec sleep 120"], "timeout": "5m"}`, `"c1": {"name": "nap"}`)
	plan := providertest.PlanOnly(t, Provider{}, env, raw)
	if len(plan) != 1 {
		t.Fatalf("plan %q", providertest.Lines(plan))
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Provider{}.Apply(ctx, env, plan[0]) }()
	marker := func() string { b, _ := os.ReadFile(filepath.Join(env.Root, "marker")); return string(b) }
	testutil.Eventually(t, "the command runs", func() bool { return marker() == "run\n" })
	if r := observe(t, env, raw).Runs["c1"]; r.State != Running || r.StartTime == "" {
		t.Fatalf("while it runs: %+v", r)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("apply: %v", err)
	}
	if r := observe(t, env, raw).Runs["c1"]; r.State != Canceled || r.DurationMs == nil {
		t.Fatalf("after the shutdown: %+v", r)
	}
	if plan := providertest.PlanOnly(t, Provider{}, env, raw); len(plan) != 0 {
		t.Fatalf("planned again: %q", providertest.Lines(plan))
	}
	if marker() != "run\n" {
		t.Fatalf("ran twice: %q", marker())
	}
}
