package extprov

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
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
	h.Close()

	validate := func(name string, v any, line []byte) {
		s, ok := schemas[name]
		if !ok {
			t.Errorf("no schema docs/protocol/%s.json for %s", name, line)
			return
		}
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
	for _, want := range []string{"initialize", "describe", "decode", "observe", "plan", "apply", "method", "watchPaths", "progress"} {
		if !seen[want] {
			t.Errorf("the traffic had no %s", want)
		}
	}
}
