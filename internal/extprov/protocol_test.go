package extprov

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v5"

	"github.com/twinlet/twinlet/providers"
	"github.com/twinlet/twinlet/providers/plugin"
	"github.com/twinlet/twinlet/providers/providertest"
)

// protocolSchemas compiles docs/protocol/*.json.
func protocolSchemas(t *testing.T) map[string]*jsonschema.Schema {
	t.Helper()
	files, err := filepath.Glob("../../docs/protocol/*.json")
	if err != nil || len(files) == 0 {
		t.Fatalf("no protocol schemas: %v", err)
	}
	c := jsonschema.NewCompiler()
	c.Draft = jsonschema.Draft2020
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.AddResource("https://twinlet.dev/protocol/"+filepath.Base(f), bytes.NewReader(b)); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
	}
	out := map[string]*jsonschema.Schema{}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".json")
		s, err := c.Compile("https://twinlet.dev/protocol/" + filepath.Base(f))
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		out[name] = s
	}
	return out
}

// recorder keeps the traffic of a Host.
type recorder struct {
	mu    sync.Mutex
	lines []tracedLine
}

type tracedLine struct {
	out  bool
	line []byte
}

func (r *recorder) trace(out bool, line []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lines = append(r.lines, tracedLine{out, append([]byte(nil), line...)})
}

// TestTrafficMatchesTheDocumentedSchemas drives both examples and the
// misbehaving provider through every call and checks every line that
// crossed the process boundary against docs/protocol.
func TestTrafficMatchesTheDocumentedSchemas(t *testing.T) {
	schemas := protocolSchemas(t)
	rec := &recorder{}
	opts := testOpts(t)
	opts.Trace = rec.trace
	dir := t.TempDir()
	manifest(t, dir, "vendor.yaml", "vendorIni", pythonExample(t))
	manifest(t, dir, "sensor.yaml", "sensorCalibration", goExample(t))
	manifest(t, dir, "scoped.yaml", "scoped", chaos(t), "args: [--scope]")
	h := load(t, opts, dir)
	env := providertest.NewEnv(t)
	providertest.Converge(t, one(t, h, "vendorIni").New(), env,
		json.RawMessage(`{"a":{"path":"/etc/a.ini","settings":{"s":{"k":"v"}}}}`))
	vi := one(t, h, "vendorIni").New()
	if _, err := vi.Decode(env, json.RawMessage(`{"a":{"path":"/boot/a.ini","settings":{}}}`)); err == nil {
		t.Fatal("no invalid error")
	}
	for _, id := range []string{"vendorIni", "sensorCalibration"} {
		p := one(t, h, id).New()
		pw, ok := p.(providers.PathWatcher)
		if !ok {
			t.Fatalf("%s does not watch paths", id)
		}
		raw := json.RawMessage(`{"a":{"path":"/etc/a.ini","settings":{}}}`)
		want := filepath.Join(env.Root, "etc/a.ini")
		if id == "sensorCalibration" {
			raw, want = json.RawMessage(`{"gain": 1}`), filepath.Join(env.Root, "etc/vendor/sensor/calibration.conf")
		}
		spec, err := p.Decode(env, raw)
		if err != nil {
			t.Fatal(err)
		}
		if got := pw.WatchPaths(env, spec); len(got) != 1 || got[0] != want {
			t.Fatalf("%s watches %v, want %s", id, got, want)
		}
	}
	sc := one(t, h, "sensorCalibration")
	providertest.Converge(t, sc.New(), env, json.RawMessage(`{"offset": 1}`))
	if _, err := sc.Methods["read"].Call(context.Background(), env, json.RawMessage(`{}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := sc.Methods["read"].Call(context.Background(), env, json.RawMessage(`{"file":"/etc/nothing"}`)); err == nil {
		t.Fatal("no method error")
	}
	scoper, ok := one(t, h, "scoped").New().(providers.CloudScoper)
	if !ok {
		t.Fatal("the scoped provider has no cloud scope")
	}
	if fe := scoper.CloudScope(providers.ScopeRules{Deny: []string{"secret*"}}, json.RawMessage(`{"value":"secret-1"}`)); len(fe) != 1 || fe[0].Pointer != "/value" {
		t.Fatalf("cloud scope: %v", fe)
	}
	h.Close()
	// The agent closes stdin instead of sending shutdown; a provider
	// takes it all the same (the Go helper here).
	shutdownExchange(t, goExample(t), rec)

	used := map[string]bool{}
	validate := func(name string, v any, line []byte) {
		s, ok := schemas[name]
		if !ok {
			t.Errorf("no schema docs/protocol/%s.json for %s", name, line)
			return
		}
		used[name] = true
		if err := s.Validate(v); err != nil {
			t.Errorf("%s does not match docs/protocol/%s.json: %v", line, name, err)
		}
	}
	// Calls here run one at a time, so an id names the last call sent
	// with it (ids are per session).
	methods := map[string]string{}
	seen := map[string]bool{}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for _, l := range rec.lines {
		var v any
		if err := json.Unmarshal(l.line, &v); err != nil {
			t.Fatalf("not JSON: %s", l.line)
		}
		validate("message", v, l.line)
		var m plugin.Message
		_ = json.Unmarshal(l.line, &m)
		var params, result any
		_ = json.Unmarshal(m.Params, &params)
		_ = json.Unmarshal(m.Result, &result)
		key := ""
		if m.ID != nil {
			key = strconv.FormatInt(*m.ID, 10)
		}
		switch {
		case l.out:
			methods[key] = m.Method
			if params == nil {
				params = map[string]any{}
			}
			validate(m.Method+".params", params, l.line)
			seen[m.Method] = true
		case m.Method == plugin.MethodProgress:
			validate("progress.params", params, l.line)
			seen["progress"] = true
		case m.Error != nil:
			seen["error "+m.Error.Message[:min(5, len(m.Error.Message))]] = true
		default:
			validate(methods[key]+".result", result, l.line)
		}
	}
	for _, want := range []string{"initialize", "describe", "decode", "observe", "plan", "apply", "method", "watchPaths", "cloudScope", "shutdown", "progress"} {
		if !seen[want] {
			t.Errorf("the traffic had no %s", want)
		}
	}
	// Every message schema in docs/protocol was checked against real
	// traffic (defs.json holds shared definitions; error.json is checked
	// through message.json).
	for name := range schemas {
		if !used[name] && name != "defs" && name != "error" {
			t.Errorf("docs/protocol/%s.json matched no traffic", name)
		}
	}
	for _, code := range []int{plugin.CodeInvalid, plugin.CodeMethodError} {
		if !seenErrorCode(rec, code) {
			t.Errorf("the traffic had no error object of code %d", code)
		}
	}
}

// seenErrorCode reports whether an error object with code crossed (the
// caller holds rec.mu).
func seenErrorCode(rec *recorder, code int) bool {
	for _, l := range rec.lines {
		var m plugin.Message
		if json.Unmarshal(l.line, &m) == nil && m.Error != nil && m.Error.Code == code {
			return true
		}
	}
	return false
}

// shutdownExchange runs exe by hand: initialize, then shutdown, whose
// answer must come before the program exits on its own. Both directions
// go to rec.
func shutdownExchange(t *testing.T, exe string, rec *recorder) {
	t.Helper()
	cmd := exec.Command(exe)
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(out)
	for _, req := range []string{
		`{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"1.0","agentVersion":"test","section":"sensorCalibration"}}`,
		`{"jsonrpc":"2.0","id":2,"method":"shutdown","params":{}}`,
	} {
		rec.trace(true, []byte(req))
		if _, err := io.WriteString(in, req+"\n"); err != nil {
			t.Fatal(err)
		}
		line, err := br.ReadBytes('\n')
		if err != nil {
			t.Fatalf("answer to %s: %v", req, err)
		}
		rec.trace(false, bytes.TrimSpace(line))
	}
	// Exits without its stdin being closed.
	if err := cmd.Wait(); err != nil {
		t.Fatalf("after shutdown: %v", err)
	}
	in.Close()
}
