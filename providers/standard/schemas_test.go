package standard

import (
	"encoding/json"
	"testing"

	"github.com/twinlet/twinlet/providers"
	"github.com/twinlet/twinlet/providers/providertest"
	"github.com/twinlet/twinlet/schemas"
)

// TestSchemas checks each built-in schema against documents it must accept
// and reject (with the pointer of the problem), and that every document a
// schema accepts here also decodes in its provider, so the two stay in step.
func TestSchemas(t *testing.T) {
	if err := schemas.Check(); err != nil {
		t.Fatal(err)
	}
	meta := `"__meta": {"deploymentId": "d1", "interfaceVersion": "1.0"}, "reportingMode": "minimal"`
	for _, tc := range []struct {
		id, doc string
		valid   bool
		ptr     string // where the problem is, for an invalid document
	}{
		{"commands", `{` + meta + `, "definitions": {"df": {"argv": ["df", "-h"], "user": "nobody", "workingDir": "/", "timeout": "30s", "env": {"TOKEN": "x"}, "maxOutput": 100, "chroot": false}}, "runs": {"req-1": {"name": "df"}}, "cloudAllow": ["d*"], "results": {"keep": 5, "report": 2, "reportOutput": 64}}`, true, ""},
		{"commands", `{"definitions": {"df": {"argv": []}}}`, false, "/definitions/df/argv"},
		{"commands", `{"definitions": {"df": {"argv": ["df"], "timeout": 30}}}`, false, "/definitions/df/timeout"},
		{"commands", `{"definitions": {"df": {"argv": ["df"], "workingDir": "srv"}}}`, false, "/definitions/df/workingDir"},
		{"commands", `{"runs": {"req-1": {"name": "df", "argv": ["rm"]}}}`, false, "/runs/req-1/argv"},
		{"commands", `{"results": {"keep": 0}}`, false, "/results/keep"},
		{"deviceInfo", `{}`, true, ""},
		{"deviceInfo", `{` + meta + `}`, true, ""},
		{"deviceInfo", `{"hostname": "x"}`, false, "/hostname"},
		{"deviceInfo", `{"reportingMode": "verbose"}`, false, "/reportingMode"},
		{"hostname", `{"name": "kiosk-17", ` + meta + `}`, true, ""},
		{"hostname", `{"name": "kiosk-17.fleet.example"}`, true, ""},
		{"hostname", `{"name": "Kiosk"}`, false, "/name"},
		{"hostname", `{"name": "-kiosk"}`, false, "/name"},
		{"hostname", `{"name": "kiosk", "alias": "x"}`, false, "/alias"},
		{"hostname", `{"name": "kiosk", "__meta": {"deploymentId": "d", "x": 1}}`, false, "/__meta/x"},
		{"hostname", `{}`, false, ""},
		{"timezone", `{"name": "Europe/Berlin", ` + meta + `}`, true, ""},
		{"timezone", `{"name": "../etc/passwd"}`, false, "/name"},
		{"timezone", `{"name": "/Europe/Berlin"}`, false, "/name"},
		{"timezone", `{"name": 1}`, false, "/name"},
		{"files", `{"prune": true, ` + meta + `, "motd": {"path": "/etc/motd", "content": "hi\n", "mode": "0644", "owner": "root", "group": "0"}}`, true, ""},
		{"files", `{"bin": {"path": "/etc/bin", "contentBase64": "AAEC"}, "d": {"path": "/opt/app", "kind": "directory", "mode": "2775"}, "gone": {"path": "/etc/old", "ensure": "absent"}}`, true, ""},
		{"files", `{"motd": {"path": "/etc/motd", "content": "a", "contentBase64": "YQ=="}}`, false, "/motd/contentBase64"},
		{"files", `{"d": {"path": "/opt/app", "kind": "directory", "content": "x"}}`, false, "/d/content"},
		{"files", `{"motd": {"path": "/etc/motd"}}`, false, "/motd"},
		{"files", `{"motd": {"path": "etc/motd", "content": ""}}`, false, "/motd/path"},
		{"files", `{"motd": {"path": "/etc/motd", "content": "", "mode": "644x"}}`, false, "/motd/mode"},
		{"files", `{"motd": {"path": "/etc/motd", "content": "", "mode": 644}}`, false, "/motd/mode"},
		{"files", `{"motd": {"path": "/etc/motd", "content": "", "owner": "a b"}}`, false, "/motd/owner"},
		{"files", `{"motd": {"path": "/etc/motd", "content": "", "colour": "red"}}`, false, "/motd/colour"},
		{"files", `{"mo.td": {"path": "/etc/motd", "content": ""}}`, false, "/mo.td"},
		{"files", `{"prune": "yes"}`, false, "/prune"},
		{"sysctl", `{"prune": true, ` + meta + `, "ipForward": {"key": "net.ipv4.ip_forward", "value": "1"}, "swap": {"key": "vm.swappiness", "value": 10}}`, true, ""},
		{"sysctl", `{"rp": {"key": "net/ipv4/conf/eth0.100/rp_filter", "value": "2"}, "old": {"key": "kernel.sysrq", "ensure": "absent"}}`, true, ""},
		{"sysctl", `{"a": {"key": "net..ipv4", "value": "1"}}`, false, "/a/key"},
		{"sysctl", `{"a": {"key": "net.ipv4.ip_forward", "value": "1\nx"}}`, false, "/a/value"},
		{"sysctl", `{"a": {"key": "net.ipv4.ip_forward"}}`, false, "/a"},
		{"sysctl", `{"a": {"key": "net.ipv4.ip_forward", "value": true}}`, false, "/a/value"},
		{"sysctl", `{"a.b": {"key": "vm.swappiness", "value": "1"}}`, false, "/a.b"},
		{"services", `{"prune": true, ` + meta + `, "nginx": {"unit": "nginx.service", "enabled": true, "state": "running", "restartOn": ["conf"]}, "bt": {"masked": true}, "dropIns": {"limits": {"unit": "nginx.service", "content": "[Service]\nLimitNOFILE=65536\n"}}}`, true, ""},
		{"services", `{"getty": {"unit": "getty@tty1.service", "enabled": true}, "dropIns": {"old": {"unit": "x.service", "ensure": "absent"}}}`, true, ""},
		{"services", `{"nginx": {"unit": "nginx"}}`, false, "/nginx/unit"},
		{"services", `{"nginx": {"unit": "ng/inx.service"}}`, false, "/nginx/unit"},
		{"services", `{"nginx": {"state": "started"}}`, false, "/nginx/state"},
		{"services", `{"nginx": {"masked": true, "enabled": true}}`, false, "/nginx/enabled"},
		{"services", `{"nginx": {"restartOn": ["a", "a"]}}`, false, "/nginx/restartOn"},
		{"services", `{"dropIns": {"l": {"unit": "x.service"}}}`, false, "/dropIns/l"},
		{"services", `{"dropIns": {"l": {"unit": "x.service", "content": "[Service]\n", "mode": "0600"}}}`, false, "/dropIns/l/mode"},
		{"ntp", `{"servers": ["ntp1.example", "10.0.0.1", "2001:db8::1"], "fallback": ["pool.ntp.org"], "enabled": true, ` + meta + `}`, true, ""},
		{"ntp", `{"enabled": false}`, true, ""},
		{"ntp", `{"servers": ["a b"]}`, false, "/servers/0"},
		{"ntp", `{"servers": "pool.ntp.org"}`, false, "/servers"},
		{"ntp", `{"pool": ["x"]}`, false, "/pool"},
	} {
		t.Run(tc.id+" "+tc.doc, func(t *testing.T) {
			problems, err := schemas.Validate(tc.id, []byte(tc.doc))
			if err != nil {
				t.Fatal(err)
			}
			if tc.valid {
				if len(problems) != 0 {
					t.Fatalf("problems %+v", problems)
				}
				info, _ := providers.Lookup(tc.id)
				var stripped map[string]json.RawMessage
				if err := json.Unmarshal([]byte(tc.doc), &stripped); err != nil {
					t.Fatal(err)
				}
				delete(stripped, "__meta") // the reconciler strips it
				raw, _ := json.Marshal(stripped)
				if _, err := info.New().Decode(providertest.NewEnv(t), raw); err != nil {
					t.Fatalf("schema-valid section does not decode: %v", err)
				}
				return
			}
			for _, p := range problems {
				if p.Pointer == tc.ptr {
					return
				}
			}
			t.Fatalf("want a problem at %q, got %+v", tc.ptr, problems)
		})
	}
}

// TestSchemaDocs checks that every schema is self-describing: a title,
// a description, and a description on every property.
func TestSchemaDocs(t *testing.T) {
	for _, id := range []string{"certificates", "commands", "deviceInfo", "files", "hostname", "ntp", "reboot", "services", "sysctl", "timezone"} {
		raw, ok := schemas.Raw(id)
		if !ok {
			t.Fatalf("no schema %s", id)
		}
		var s map[string]any
		if err := json.Unmarshal(raw, &s); err != nil {
			t.Fatalf("%s: %v", id, err)
		}
		if s["$id"] != "https://twinlet.dev/schemas/"+id+".json" || s["title"] == nil || s["description"] == nil {
			t.Errorf("%s: $id, title or description missing", id)
		}
		var walk func(where string, v any)
		walk = func(where string, v any) {
			m, ok := v.(map[string]any)
			if !ok {
				return
			}
			if props, ok := m["properties"].(map[string]any); ok {
				for name, p := range props {
					if pm, ok := p.(map[string]any); ok {
						if _, ok := pm["description"]; !ok {
							t.Errorf("%s: %s/%s has no description", id, where, name)
						}
					}
				}
			}
			for k, c := range m {
				if k == "if" || k == "then" || k == "else" || k == "allOf" || k == "dependentSchemas" {
					continue // assertions, not documentation
				}
				walk(where+"/"+k, c)
			}
		}
		walk("", s)
	}
}
