package console_test

import (
	"context"
	"encoding/json"
	"os"
	"sort"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"

	"github.com/twinlet/twinlet/internal/console"
	"github.com/twinlet/twinlet/internal/testutil"
	"github.com/twinlet/twinlet/schemas"
)

// corpus holds documents for the section schemas, valid and invalid, on
// which the page's validator (static/schema.js) and the agent's (Go)
// must agree.
var corpus = []struct{ schema, doc string }{
	{"hostname", `{"name": "kiosk-17"}`},
	{"hostname", `{"name": "kiosk-17.fleet.example.com", "reportingMode": "minimal"}`},
	{"hostname", `{"name": "Kiosk_17"}`},
	{"hostname", `{"name": ""}`},
	{"hostname", `{"name": "-kiosk"}`},
	{"hostname", `{}`},
	{"hostname", `{"name": "a", "color": "red"}`},
	{"hostname", `{"name": 17}`},
	{"hostname", `"kiosk"`},
	{"hostname", `{"name": "` + strings.Repeat("a", 65) + `"}`},
	{"hostname", `{"name": "kiosk", "__meta": {"deploymentId": "git:abc", "extra": 1}}`},
	{"hostname", `{"name": "kiosk", "reportingMode": "loud"}`},
	{"timezone", `{"name": "Europe/Berlin"}`},
	{"timezone", `{"name": "Europe/../../etc/passwd"}`},
	{"timezone", `{"name": "Etc/UTC", "rtc": "local"}`},
	{"files", `{"motd": {"path": "/etc/motd", "content": "hello\n", "mode": "0644"}}`},
	{"files", `{"motd": {"path": "etc/motd", "content": "x"}}`},
	{"files", `{"motd": {"path": "/etc/motd", "mode": "644x"}}`},
	{"files", `{"bad.name": {"path": "/etc/x", "content": "x"}}`},
	{"files", `{"d": {"path": "/opt/d", "ensure": "directory"}}`},
	{"files", `{"d": {"path": "/opt/d", "ensure": "directory", "content": "x"}}`},
	{"files", `{"gone": {"path": "/opt/x", "ensure": "absent"}}`},
	{"files", `{"gone": {"path": "/opt/x", "ensure": "absent", "mode": "0644"}}`},
	{"files", `{"prune": true, "reportingMode": "none"}`},
	{"files", `{"prune": "yes"}`},
	{"files", `{"u": {"path": "/opt/u", "url": "https://example.com/a", "sha256": "` + strings.Repeat("a", 64) + `"}}`},
	{"files", `{"u": {"path": "/opt/u", "url": "ftp://example.com/a"}}`},
	{"files", `{"o": {"path": "/opt/o", "content": "x", "owner": "root", "group": "0"}}`},
	{"files", `{"o": {"path": "/opt/o", "content": "x", "owner": "Bad Owner"}}`},
	{"sysctl", `{"swap": {"key": "vm.swappiness", "value": "10"}}`},
	{"sysctl", `{"swap": {"key": "vm.swappiness", "value": 10}}`},
	{"sysctl", `{"swap": {"key": "vm/swappiness", "value": "10"}}`},
	{"sysctl", `{"swap": {"key": "vm.swappiness"}}`},
	{"sysctl", `{"swap": {"key": "vm.swappiness", "ensure": "absent"}}`},
	{"sysctl", `{"swap": {"key": "vm.swappiness", "value": "1", "ensure": "absent"}}`},
	{"sysctl", `{"swap": 3}`},
	{"fleetconfig", `{"apiVersion": "twinlet.dev/v1", "kind": "FleetConfig", "metadata": {"name": "base"}, "spec": {"targetCondition": "*", "sections": {"hostname": {"name": "a"}}}}`},
	{"fleetconfig", `{"apiVersion": "twinlet.dev/v1", "kind": "FleetConfig", "metadata": {"name": "base"}, "spec": {"targetCondition": "*", "sections": {}, "rollout": {"maxFailed": "5%", "stages": [{"name": "canary", "target": "tags.ring='canary'"}]}}}`},
	{"fleetconfig", `{"apiVersion": "twinlet.dev/v1", "kind": "FleetConfig", "metadata": {"name": "base", "labels": {"twinlet-x": "y"}}, "spec": {"targetCondition": "*", "sections": {}, "rollout": {"maxFailed": "500%", "stages": []}}}`},
	{"enrollment", `{"apiVersion": "twinlet.dev/v1", "kind": "Enrollment", "metadata": {"name": "dev-1"}, "spec": {"attestation": {"type": "tpm"}}}`},
	{"enrollment", `{"apiVersion": "twinlet.dev/v1", "kind": "Enrollment", "metadata": {"name": "dev-1"}, "spec": {"attestation": {"type": "symmetricKey"}, "iotHubs": ["a.azure-devices.net", "a.azure-devices.net"]}}`},
	{"fleetconfig", `{"apiVersion": "twinlet.dev/v1", "kind": "FleetConfig", "metadata": {"name": "base"}, "spec": {"targetCondition": "*", "sections": {}, "rollout": {"stages": [{"name": "canary", "target": "*", "minReady": 150}]}}}`},
	{"fleetconfig", `{"apiVersion": "twinlet.dev/v1", "kind": "FleetConfig", "metadata": {"name": "base"}, "spec": {"targetCondition": "*", "priority": 1.5, "sections": {}}}`},
	{"timezone", `{"name": "Europe/Zürich"}`},
	{"files", `{"m": {"path": "/etc/m", "content": "é", "mode": "0644", "ensure": "present"}}`},
	{"enrollment", `{"apiVersion": "twinlet.dev/v1", "kind": "Enrollment", "metadata": {"name": "dev-1"}, "spec": {"attestation": {"type": "x509", "x509": {"clientCertificates": {"primary": {}}}}}}`},
	{"commands", `{"definitions": {"restart-kiosk": {"argv": ["systemctl", "restart", "kiosk"], "user": "kiosk", "workingDir": "/srv", "timeout": "1m30s", "env": {"A": "b"}, "maxOutput": 1024, "chroot": false}}, "runs": {"c-1": {"name": "restart-kiosk"}}, "cloudAllow": ["restart-*"], "results": {"keep": 5, "report": 2, "reportOutput": 64}, "reportingMode": "minimal"}`},
	{"commands", `{"runs": {"c-1": {"name": "Restart kiosk"}}}`},
}

// pageValidator is a blank page in Chromium with the console's validator
// (static/schema.js) loaded.
func pageValidator(t *testing.T) context.Context {
	t.Helper()
	src, err := os.ReadFile("static/schema.js")
	if err != nil {
		t.Fatal(err)
	}
	ctx := browser(t, 800, 600)
	do(t, ctx, "load schema.js", chromedp.Navigate("about:blank"))
	get(t, ctx, "load schema.js", chromedp.Evaluate[any]("(0, eval)("+strconvQuote(string(src))+"), 1"))
	return ctx
}

// TestValidatorsAgree runs the page's validator in Chromium on the corpus
// and checks that it accepts exactly what the agent's accepts, and finds
// the same problems (pointers and messages).
func TestValidatorsAgree(t *testing.T) {
	ctx := pageValidator(t)
	invalid := 0
	for i, c := range corpus {
		raw, ok := schemas.Raw(c.schema)
		if !ok {
			t.Fatalf("no schema %s", c.schema)
		}
		goProblems, err := schemas.Validate(c.schema, []byte(c.doc))
		if err != nil {
			t.Fatal(err)
		}
		jsProblems := get(t, ctx, "validate", chromedp.Evaluate[[]schemas.Problem]("TwinSchema.validate("+string(raw)+", "+c.doc+")"))
		if len(goProblems) > 0 {
			invalid++
		}
		if (len(goProblems) == 0) != (len(jsProblems) == 0) {
			t.Errorf("%d %s %s:\n  Go: %v\n  JS: %v", i, c.schema, c.doc, goProblems, jsProblems)
			continue
		}
		if g, j := problems(goProblems), problems(jsProblems); g != j {
			t.Errorf("%d %s %s: problems differ\n  Go: %v\n  JS: %v", i, c.schema, c.doc, goProblems, jsProblems)
		}
	}
	if invalid < len(corpus)/3 || invalid == len(corpus) {
		t.Errorf("the corpus has %d invalid documents of %d: it must have both", invalid, len(corpus))
	}
	// The example of every embedded schema is valid for both.
	for _, id := range schemas.IDs() {
		raw, _ := schemas.Raw(id)
		var s struct{ Examples []json.RawMessage }
		json.Unmarshal(raw, &s)
		for _, ex := range s.Examples {
			js := get(t, ctx, "validate example", chromedp.Evaluate[[]schemas.Problem]("TwinSchema.validate("+string(raw)+", "+string(ex)+")"))
			if len(js) > 0 {
				t.Errorf("%s example %s: JS finds %v", id, ex, js)
			}
		}
	}
}

func strconvQuote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// problems is a set of problems as text: the two validators share their
// rules and their messages, so both must be the same.
func problems(ps []schemas.Problem) string {
	set := map[string]bool{}
	for _, p := range ps {
		set[p.Pointer+": "+p.Message] = true
	}
	var out []string
	for p := range set {
		out = append(out, p)
	}
	sort.Strings(out)
	return strings.Join(out, "\n")
}

// methodSeeds are valid payloads of the providers' direct methods, the
// starting points of their mutations.
var methodSeeds = map[string][]string{
	"certificates.get":    {`{"thumbprint": "` + strings.Repeat("ab", 20) + `"}`},
	"commands.run":        {`{"name": "restart-kiosk", "commandId": "c-1", "wait": true}`},
	"commands.get":        {`{"commandId": "c-1"}`},
	"diagnostics.collect": {`{"uploadName": "bundles/kiosk-01.tar.gz"}`},
	"reboot.now":          {`{"delay": 10, "reason": "kernel update"}`},
}

// mutationValues are what each place of a seed is replaced by.
var mutationValues = []any{"", "x", "Bad_Value!", "/abs/path", "a/../b", strings.Repeat("a", 300), "é", float64(0), float64(-1),
	1.5, float64(1e9), true, false, nil, []any{}, []any{"x"}, []any{"x", "x"}, map[string]any{}}

// TestValidatorsAgreeMutated runs both validators on every section schema
// the console serves and every provider method's payload schema, over
// the mutations of valid documents (each schema's examples, the valid
// documents of the corpus, methodSeeds): the page must refuse exactly
// what the agent refuses, with the same problems.
func TestValidatorsAgreeMutated(t *testing.T) {
	ctx := pageValidator(t)

	type target struct {
		name  string
		raw   []byte
		seeds []string
	}
	var targets []target
	for _, sec := range console.KnownSections() {
		if len(sec.Schema) > 0 {
			var s struct{ Examples []json.RawMessage }
			if err := json.Unmarshal(sec.Schema, &s); err != nil {
				t.Fatalf("%s: %v", sec.ID, err)
			}
			tg := target{name: sec.ID, raw: sec.Schema}
			for _, ex := range s.Examples {
				tg.seeds = append(tg.seeds, string(ex))
			}
			for _, c := range corpus {
				if c.schema == sec.ID {
					tg.seeds = append(tg.seeds, c.doc)
				}
			}
			targets = append(targets, tg)
		}
		for _, m := range sec.Methods {
			if len(m.Schema) == 0 {
				continue
			}
			name := sec.ID + "." + m.Name
			seeds, ok := methodSeeds[name]
			if !ok {
				t.Errorf("%s: no seed payload in methodSeeds", name)
			}
			targets = append(targets, target{name: name, raw: m.Schema, seeds: seeds})
		}
	}
	total, invalid, sections := 0, 0, 0
	for _, tg := range targets {
		sch, err := schemas.Compile(tg.name, tg.raw)
		if err != nil {
			t.Fatal(err)
		}
		var docs [][]byte
		for _, seed := range tg.seeds {
			var v any
			if err := json.Unmarshal([]byte(seed), &v); err != nil {
				t.Fatalf("%s seed %s: %v", tg.name, seed, err)
			}
			if ps, _ := sch.Validate([]byte(seed)); len(ps) > 0 {
				continue // an invalid corpus document: mutations of it say little
			}
			for _, m := range testutil.Mutations(v, mutationValues) {
				b, _ := json.Marshal(m)
				docs = append(docs, b)
			}
		}
		if len(docs) == 0 {
			t.Errorf("%s: no valid seed document", tg.name)
			continue
		}
		sections++
		all := "[" + string(joinJSON(docs)) + "]"
		js := get(t, ctx, "validate "+tg.name, chromedp.Evaluate[[][]schemas.Problem](all+".map(d => TwinSchema.validate("+string(tg.raw)+", d))"))
		if len(js) != len(docs) {
			t.Fatalf("%s: %d answers for %d documents", tg.name, len(js), len(docs))
		}
		bad := 0
		for i, doc := range docs {
			goProblems, err := sch.Validate(doc)
			if err != nil {
				t.Fatal(err)
			}
			total++
			if len(goProblems) > 0 {
				invalid++
			}
			same := (len(goProblems) == 0) == (len(js[i]) == 0) && problems(goProblems) == problems(js[i])
			if !same {
				if bad++; bad <= 5 {
					t.Errorf("%s %s:\n  Go: %v\n  JS: %v", tg.name, doc, goProblems, js[i])
				}
			}
		}
		if bad > 5 {
			t.Errorf("%s: %d more disagreements", tg.name, bad-5)
		}
	}
	t.Logf("%d documents for %d schemas, %d of them invalid", total, sections, invalid)
	if invalid < total/3 || invalid == total {
		t.Errorf("%d invalid documents of %d: the mutations must give both", invalid, total)
	}
}

func joinJSON(docs [][]byte) []byte {
	var b []byte
	for i, d := range docs {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, d...)
	}
	return b
}
