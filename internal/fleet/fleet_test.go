package fleet_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/twinlet/twinlet/internal/fleet"
	"github.com/twinlet/twinlet/internal/hub/query"
	"github.com/twinlet/twinlet/providers"
	_ "github.com/twinlet/twinlet/providers/standard"
)

func known(id string) bool {
	info, ok := providers.Lookup(id)
	return ok && !info.ReadOnly
}

// TestExampleRepository loads examples/fleet: every file of it must be
// valid, and it holds what its README walks through.
func TestExampleRepository(t *testing.T) {
	repo, err := fleet.LoadDir("../../examples/fleet", known)
	if err != nil {
		t.Fatalf("examples/fleet: %v", err)
	}
	names := map[string]*fleet.Config{}
	for _, c := range repo.Configs {
		names[c.Name] = c
	}
	for _, n := range []string{"base", "site-berlin", "kiosk-app"} {
		if names[n] == nil {
			t.Errorf("no FleetConfig %q", n)
		}
	}
	if app := names["kiosk-app"]; app == nil || app.Rollout == nil || len(app.Rollout.Stages) != 3 || !app.Rollout.MaxFailed.IsShare {
		t.Errorf("kiosk-app rollout: %+v", app)
	}
	if len(repo.Devices) != 1 || repo.Devices[0].ID != "kiosk-17" {
		t.Errorf("devices: %+v", repo.Devices)
	}
	for _, c := range repo.Configs {
		cfg := c.Render(0)
		for k, q := range cfg.Metrics.Queries {
			if _, err := query.Parse(q); err != nil {
				t.Errorf("%s metric %s: %v\n%s", c.Name, k, err, q)
			}
		}
		if _, err := query.Parse("SELECT * FROM devices WHERE " + cfg.TargetCondition); err != nil && cfg.TargetCondition != "*" {
			t.Errorf("%s target: %v", c.Name, err)
		}
	}
}

func TestProblemsAreLocated(t *testing.T) {
	for _, tc := range []struct {
		name, doc, want string
	}{
		{"unknown kind", "apiVersion: twinlet.dev/v1\nkind: Fleet\n", "f.yaml:2:7: /kind: unknown kind \"Fleet\""},
		{"yaml syntax", "kind: FleetConfig\nspec: a: b\n", "f.yaml:2:1: YAML syntax"},
		{"bad section field", `apiVersion: twinlet.dev/v1
kind: FleetConfig
metadata: {name: base}
spec:
  targetCondition: "*"
  sections:
    hostname:
      name: Not_Valid
`, "f.yaml:8:13: /spec/sections/hostname/name: invalid value"},
		{"unknown section", `apiVersion: twinlet.dev/v1
kind: FleetConfig
metadata: {name: base}
spec:
  targetCondition: "*"
  sections:
    frobs: {}
`, `f.yaml:7:5: /spec/sections/frobs: unknown section "frobs"`},
		{"read-only section", `apiVersion: twinlet.dev/v1
kind: FleetConfig
metadata: {name: base}
spec:
  targetCondition: "*"
  sections:
    deviceInfo: {}
`, `f.yaml:7:5: /spec/sections/deviceInfo: unknown section "deviceInfo"`},
		{"reserved deploymentId", `apiVersion: twinlet.dev/v1
kind: FleetConfig
metadata: {name: base}
spec:
  targetCondition: "*"
  sections:
    timezone: {name: Etc/UTC, __meta: {deploymentId: x}}
`, "/spec/sections/timezone/__meta/deploymentId: set by twinctl"},
		{"bad name", `apiVersion: twinlet.dev/v1
kind: FleetConfig
metadata: {name: a--b}
spec: {targetCondition: "*", sections: {timezone: {name: Etc/UTC}}}
`, "f.yaml:3:18: /metadata/name: invalid value"},
		{"reserved label", `apiVersion: twinlet.dev/v1
kind: FleetConfig
metadata: {name: a}
spec: {targetCondition: "*", labels: {twinlet-stage: "3"}, sections: {timezone: {name: Etc/UTC}}}
`, "/spec/labels"},
		{"bad maxFailed", `apiVersion: twinlet.dev/v1
kind: FleetConfig
metadata: {name: a}
spec:
  targetCondition: "*"
  sections: {timezone: {name: Etc/UTC}}
  rollout:
    maxFailed: "lots"
    stages: [{name: all, target: "*"}]
`, "f.yaml:8:16: /spec/rollout/maxFailed"},
		{"duplicate", `apiVersion: twinlet.dev/v1
kind: FleetConfig
metadata: {name: a}
spec: {targetCondition: "*", sections: {timezone: {name: Etc/UTC}}}
---
apiVersion: twinlet.dev/v1
kind: FleetConfig
metadata: {name: a}
spec: {targetCondition: "*", sections: {timezone: {name: Etc/UTC}}}
`, "f.yaml:8:18: /metadata/name: FleetConfig \"a\" defined twice (also at f.yaml:1:1)"},
		{"device tags", `apiVersion: twinlet.dev/v1
kind: DeviceConfig
metadata: {name: d1}
spec: {tags: {site: {a.b: 1}}}
`, "/spec/tags: key \"a.b\""},
		{"duplicate key", "apiVersion: twinlet.dev/v1\nkind: DeviceConfig\nkind: DeviceConfig\n", "f.yaml:3:1: duplicate key \"kind\""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := fleet.Parse("f.yaml", []byte(tc.doc), known)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v\nwant %q", err, tc.want)
			}
		})
	}
}

// TestLoadDirAllOrNothing: one bad file anywhere fails the repository,
// and every problem is listed.
func TestLoadDirAllOrNothing(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string) {
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("a.yaml", "apiVersion: twinlet.dev/v1\nkind: FleetConfig\nmetadata: {name: a}\nspec: {targetCondition: '*', sections: {timezone: {name: Etc/UTC}}}\n")
	write("sub/b.yaml", "apiVersion: twinlet.dev/v1\nkind: FleetConfig\nmetadata: {name: b}\nspec: {targetCondition: '*', sections: {timezone: {name: 7}}}\n")
	write("sub/c.yml", "apiVersion: twinlet.dev/v1\nkind: DeviceConfig\nmetadata: {name: d}\nspec: {colour: red}\n")
	write(".git/x.yaml", "not: [valid")
	_, err := fleet.LoadDir(dir, known)
	ps, ok := err.(fleet.Problems)
	if !ok || len(ps) != 2 {
		t.Fatalf("got %v", err)
	}
	if !strings.Contains(ps[0].String(), "sub/b.yaml:4:") || !strings.Contains(ps[1].String(), "sub/c.yml:4:") {
		t.Errorf("problems:\n%v", err)
	}
	if _, err := fleet.LoadDir(t.TempDir(), known); err == nil {
		t.Error("an empty directory is a repository")
	}
}

func TestRender(t *testing.T) {
	doc := `apiVersion: twinlet.dev/v1
kind: FleetConfig
metadata: {name: app}
spec:
  targetCondition: "tags.fleet='kiosks'"
  priority: 30
  labels: {team: ops}
  sections:
    timezone: {name: Etc/UTC}
  rollout:
    maxFailed: 2
    stages:
      - {name: canary, target: "tags.ring='canary'"}
      - {name: rest, target: "*", minReady: 90}
`
	repo, err := fleet.Parse("f.yaml", []byte(doc), known)
	if err != nil {
		t.Fatal(err)
	}
	c := repo.Configs[0]
	cfg := c.Render(0)
	if !strings.HasPrefix(cfg.ID, "app--") || len(cfg.ID) != len("app--")+10 || fleet.NameOf(cfg.ID) != "app" {
		t.Errorf("id %q", cfg.ID)
	}
	if cfg.TargetCondition != "(tags.fleet='kiosks') AND ((tags.ring='canary'))" {
		t.Errorf("stage 0 target %q", cfg.TargetCondition)
	}
	if got := c.Render(1).TargetCondition; got != "tags.fleet='kiosks'" {
		t.Errorf("stage 1 target %q", got)
	}
	if fleet.BaseTarget(cfg) != "tags.fleet='kiosks'" {
		t.Errorf("base target %q", fleet.BaseTarget(cfg))
	}
	var sec map[string]any
	json.Unmarshal(cfg.Content.DeviceContent["properties.desired.timezone"].(json.RawMessage), &sec)
	if sec["name"] != "Etc/UTC" || sec["__meta"].(map[string]any)["deploymentId"] != cfg.ID {
		t.Errorf("content %v", sec)
	}
	if !fleet.Managed(cfg) || fleet.Name(cfg) != "app" || cfg.Labels["team"] != "ops" || cfg.Labels[fleet.LabelHash] != c.Hash() {
		t.Errorf("labels %v", cfg.Labels)
	}
	plan, stage, err := fleet.RolloutPlan(cfg)
	if err != nil || stage != 0 || len(plan.Stages) != 2 || plan.Stages[1].MinReady != 90 || plan.Stages[0].MinReady != 100 || plan.MaxFailed.Count != 2 {
		t.Errorf("plan %+v stage %d err %v", plan, stage, err)
	}

	// The id follows the content, not the priority or the target.
	c2 := *c
	c2.Priority, c2.TargetCondition = 1, "*"
	if c2.ID() != c.ID() {
		t.Error("priority or target changed the id")
	}
	c2.Sections = map[string]json.RawMessage{"timezone": json.RawMessage(`{ "name" : "Etc/UTC" }`)}
	if c2.ID() != c.ID() {
		t.Error("formatting changed the id")
	}
	c2.Sections = map[string]json.RawMessage{"timezone": json.RawMessage(`{"name":"Europe/Berlin"}`)}
	if c2.ID() == c.ID() {
		t.Error("content change kept the id")
	}
}

// TestConditions evaluates the metric conditions with the hub's own query
// language over twins in every state a device goes through.
func TestConditions(t *testing.T) {
	id := "app--0123456789"
	cond := fleet.ConditionsFor(id, []string{"timezone", "files"})
	// sec is one section of a twin: who set its desired, and the
	// deploymentId and state the agent reports for it.
	type sec struct{ desired, reported, state string }
	twin := func(status string, tz, files sec) map[string]any {
		des, rep := map[string]any{}, map[string]any{}
		for name, s := range map[string]sec{"timezone": tz, "files": files} {
			if s.desired != "" {
				des[name] = map[string]any{"__meta": map[string]any{"deploymentId": s.desired}}
			}
			if s.reported != "" {
				rep[name] = map[string]any{"__status": map[string]any{"deploymentId": s.reported, "state": s.state}}
			}
		}
		t := map[string]any{"deviceId": "d", "properties": map[string]any{"desired": des, "reported": rep}}
		if status != "" {
			t["configurations"] = map[string]any{id: map[string]any{"status": status}}
		}
		return t
	}
	ready := sec{id, id, "Ready"}
	other := "site--0000000000"
	for _, tc := range []struct {
		name                           string
		doc                            map[string]any
		targeted, applied, rdy, failed bool
		pending                        bool
	}{
		{"not targeted", twin("", ready, ready), false, false, false, false, false},
		{"targeted only", twin("Targeted", sec{other, other, "Ready"}, sec{other, other, "Ready"}), true, false, false, false, false},
		{"nothing reported", twin("Applied", sec{id, "", ""}, sec{id, "", ""}), true, true, false, false, true},
		{"old content still reported", twin("Applied", sec{id, "app--ffffffffff", "Ready"}, ready), true, true, false, false, true},
		{"another configuration's state still reported", twin("Applied", sec{id, other, "Ready"}, ready), true, true, false, false, true},
		{"reconciling", twin("Applied", sec{id, id, "Reconciling"}, ready), true, true, false, false, true},
		{"ready", twin("Applied", ready, ready), true, true, true, false, false},
		{"other config won a section", twin("Applied", sec{other, other, "Failed"}, ready), true, true, true, false, false},
		{"failed", twin("Applied", ready, sec{id, id, "Failed"}), true, true, false, true, false},
		{"failed for older content", twin("Applied", ready, sec{id, "app--ffffffffff", "Failed"}), true, true, false, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, c := range []struct {
				what, cond string
				want       bool
			}{{"targeted", cond.Targeted, tc.targeted}, {"applied", cond.Applied, tc.applied}, {"ready", cond.Ready, tc.rdy}, {"failed", cond.Failed, tc.failed}, {"pending", cond.Pending, tc.pending}} {
				q, err := query.Parse("SELECT * FROM devices WHERE " + c.cond)
				if err != nil {
					t.Fatalf("%s: %v", c.what, err)
				}
				if got := q.Match(tc.doc); got != c.want {
					t.Errorf("%s = %v, want %v\n%s", c.what, got, c.want, c.cond)
				}
			}
		})
	}
}

func TestThreshold(t *testing.T) {
	for _, tc := range []struct {
		s                string
		failed, targeted int
		exceeded         bool
	}{
		{"0", 0, 10, false}, {"0", 1, 10, true}, {"2", 2, 10, false}, {"2", 3, 10, true},
		{"10%", 1, 10, false}, {"10%", 2, 10, true}, {"5%", 1, 0, false},
	} {
		th, err := fleet.ParseThreshold(tc.s)
		if err != nil {
			t.Fatal(err)
		}
		if got := th.Exceeded(tc.failed, tc.targeted); got != tc.exceeded || th.String() != tc.s {
			t.Errorf("%s: Exceeded(%d, %d) = %v, String %q", tc.s, tc.failed, tc.targeted, got, th.String())
		}
	}
	for _, bad := range []string{"-1", "x", "101%", ""} {
		if _, err := fleet.ParseThreshold(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func FuzzParse(f *testing.F) {
	seeds, _ := filepath.Glob("../../examples/fleet/*/*.yaml")
	more, _ := filepath.Glob("../../examples/fleet/*.yaml")
	for _, s := range append(seeds, more...) {
		b, _ := os.ReadFile(s)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		repo, err := fleet.Parse("f.yaml", data, known)
		if err == nil {
			for _, c := range repo.Configs {
				c.Render(0)
			}
		}
	})
}
