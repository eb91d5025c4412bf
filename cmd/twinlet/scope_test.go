package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCloudScopeEndToEnd drives the cloud scope through the real CLI, the
// real files and sysctl providers and the agent config: what the twin may
// not set fails its section with reason Forbidden and a JSON pointer, the
// rest of the section still converges, local policy is not limited, and
// plan --twin-desired shows the same as apply.
func TestCloudScopeEndToEnd(t *testing.T) {
	s := newSandbox(t)
	// Local policy may write under /etc/ssh; the twin may not.
	s.write(t, "local.yaml", policyDoc("default", "  files:\n    banner: { path: /etc/ssh/banner, content: \"local\\n\", mode: \"0644\" }\n"))
	twin := filepath.Join(t.TempDir(), "twin.json")
	os.WriteFile(twin, []byte(`{"files":{"motd":{"path":"/etc/motd","content":"hi\n"},`+
		`"keys":{"path":"/etc/ssh/sshd_config.d/evil.conf","content":"PermitRootLogin yes\n"}},`+
		`"sysctl":{"core":{"key":"kernel.core_pattern","value":"|/tmp/x"},"swap":{"key":"vm.swappiness","value":"10"}},`+
		`"hostname":{"name":"from-twin"},"$version":3}`), 0o644)
	// The config keeps hostname away from the twin altogether.
	cfg := filepath.Join(t.TempDir(), "twinlet.yaml")
	os.WriteFile(cfg, []byte("cloud:\n  sections: [files, sysctl, timezone]\n"), 0o644)
	args := func(cmd string) []string {
		a := s.args(cmd, "--twin-desired", twin, "--output", "json")
		a[2] = cfg // --config
		return a
	}

	code, out, errs := twinlet(t, args("plan")...)
	if code != 1 || !strings.Contains(out, `"twin:/files/keys/path"`) || !strings.Contains(out, `"twin:/sysctl/core/key"`) || !strings.Contains(out, `"twin:/hostname"`) {
		t.Fatalf("plan: %d\n%s%s", code, out, errs)
	}
	_, out, errs = twinlet(t, args("apply")...)
	var doc map[string]map[string]json.RawMessage
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("apply output: %v\n%s%s", err, out, errs)
	}
	for _, sec := range []struct{ id, pointer string }{{"files", "/keys/path"}, {"sysctl", "/core/key"}, {"hostname", ""}} {
		st := compact(doc[sec.id]["__status"])
		if !strings.Contains(st, `"Failed"`) || !strings.Contains(st, `"Forbidden"`) {
			t.Errorf("%s: status %s errors %s", sec.id, st, compact(doc[sec.id]["__errors"]))
		}
		if errsJSON := compact(doc[sec.id]["__errors"]); !strings.Contains(errsJSON, `"pointer":"`+sec.pointer+`"`) {
			t.Errorf("%s: __errors %s lacks pointer %q", sec.id, errsJSON, sec.pointer)
		}
	}
	if got := s.file("etc/ssh/sshd_config.d/evil.conf"); got != "<missing>" {
		t.Fatalf("the twin wrote under /etc/ssh: %q", got)
	}
	if got := s.file("etc/motd"); got != "hi\n" {
		t.Fatalf("the allowed twin item did not converge: %q", got)
	}
	if got := s.file("etc/ssh/banner"); got != "local\n" {
		t.Fatalf("local policy was limited by the cloud scope: %q", got)
	}
	if got := s.file("etc/hostname"); strings.Contains(got, "from-twin") {
		t.Fatalf("hostname came from the twin though the config does not allow it: %q", got)
	}
}

func compact(raw json.RawMessage) string {
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		return string(raw)
	}
	return b.String()
}
