package console_test

import (
	"encoding/json"
	"os"
	"sort"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"

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
}

// TestValidatorsAgree runs the page's validator in Chromium on the corpus
// and checks that it accepts exactly what the agent's accepts, and finds
// the problems at the same JSON pointers.
func TestValidatorsAgree(t *testing.T) {
	src, err := os.ReadFile("static/schema.js")
	if err != nil {
		t.Fatal(err)
	}
	ctx := browser(t, 800, 600)
	do(t, ctx, "load schema.js", chromedp.Navigate("about:blank"))
	get(t, ctx, "load schema.js", chromedp.Evaluate[any]("(0, eval)("+strconvQuote(string(src))+"), 1"))
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
		if g, j := pointers(goProblems), pointers(jsProblems); g != j {
			t.Errorf("%d %s %s: pointers differ\n  Go: %v\n  JS: %v", i, c.schema, c.doc, goProblems, jsProblems)
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

func pointers(ps []schemas.Problem) string {
	set := map[string]bool{}
	for _, p := range ps {
		set[p.Pointer] = true
	}
	var out []string
	for p := range set {
		out = append(out, p)
	}
	sort.Strings(out)
	return strings.Join(out, " ")
}
