package extprov

import (
	"log/slog"
	"testing"

	"github.com/twinlet/twinlet/providers/plugin"
)

// FuzzParseManifest: no manifest text makes the parser panic, and a
// refusal always carries a position in the file.
func FuzzParseManifest(f *testing.F) {
	f.Add([]byte("apiVersion: twinlet.dev/v1\nkind: Provider\nsection: x\nexecutable: /bin/true\nprotocolVersion: 1\n"))
	f.Add([]byte("section: [\n"))
	f.Add([]byte("a: &x [*x]\n"))
	f.Add([]byte("timeout: 1h\nkeepAlive: -1s\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		_, probs := parseManifest("m.yaml", data)
		for _, p := range probs {
			if len(p.Pos) < len("m.yaml") || p.Pos[:len("m.yaml")] != "m.yaml" {
				t.Fatalf("problem without a position: %+v", p)
			}
		}
	})
}

// FuzzDispatch: no line a provider writes makes the agent panic; what is
// not a response or a progress notification is an error.
func FuzzDispatch(f *testing.F) {
	f.Add([]byte(`{"jsonrpc":"2.0","id":1,"result":{}}`))
	f.Add([]byte(`{"jsonrpc":"2.0","method":"progress","params":{"request":1,"step":"x","done":1,"total":2}}`))
	f.Add([]byte(`hello`))
	f.Add([]byte(`{"jsonrpc":"2.0","id":7,"error":{"code":-32001,"message":"m","data":{"errors":[]}}}`))
	f.Fuzz(func(t *testing.T, line []byte) {
		p := &proc{log: slog.New(slog.DiscardHandler), calls: map[int64]*pending{1: {ch: make(chan plugin.Message, 1)}}}
		_ = p.dispatch(line)
	})
}
