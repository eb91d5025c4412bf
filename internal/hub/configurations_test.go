package hub

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twinlet/twinlet/internal/iothub"
	"github.com/twinlet/twinlet/internal/testutil"
)

// serviceClient is the project's real service client on the hub's HTTPS
// endpoint, with the iothubowner policy.
func serviceClient(t testing.TB, h *Hub) *iothub.ServiceClient {
	t.Helper()
	cs, err := h.PolicyConnectionString("iothubowner")
	if err != nil {
		t.Fatal(err)
	}
	c, err := iothub.NewServiceClient(cs, iothub.WithRootCAs(h.CertPool()), iothub.WithServiceAddr(h.HTTPSAddr()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func serviceStatus(err error) int {
	var se *iothub.ServiceError
	if errors.As(err, &se) {
		return se.StatusCode
	}
	return 0
}

func deviceConfig(id, cond string, prio int, content map[string]any) iothub.Configuration {
	return iothub.Configuration{ID: id, TargetCondition: cond, Priority: prio,
		Content: iothub.ConfigurationContent{DeviceContent: content}}
}

// desiredOf reads a twin's desired properties through the REST API.
func desiredOf(t testing.TB, c *iothub.ServiceClient, id string) map[string]any {
	t.Helper()
	tw, err := c.GetTwin(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return tw.Properties.Desired
}

func jsonString(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// waitDesired waits until a device's desired property at path (dotted,
// under desired) has the JSON value want ("" means absent).
func waitDesired(t testing.TB, c *iothub.ServiceClient, id, path, want string) {
	t.Helper()
	var got string
	testutil.Eventually(t, fmt.Sprintf("%s desired %s = %s (last %s)", id, path, want, "…"), func() bool {
		d := desiredOf(t, c, id)
		v, ok := getPath(d, strings.Split(path, "."))
		got = ""
		if ok {
			got = jsonString(v)
		}
		return got == want
	})
}

func configStatus(t testing.TB, c *iothub.ServiceClient, dev, cfg string) string {
	t.Helper()
	tw, err := c.GetTwin(context.Background(), dev)
	if err != nil {
		t.Fatal(err)
	}
	m, _ := tw.Configurations[cfg].(map[string]any)
	s, _ := m["status"].(string)
	return s
}

func waitStatus(t testing.TB, c *iothub.ServiceClient, dev, cfg, want string) {
	t.Helper()
	testutil.Eventually(t, dev+" configurations."+cfg+".status = "+want, func() bool {
		return configStatus(t, c, dev, cfg) == want
	})
}

func TestConfigurationCRUD(t *testing.T) {
	h := startHub(t, Options{})
	c := serviceClient(t, h)
	ctx := context.Background()

	created, err := c.CreateConfiguration(ctx, iothub.Configuration{
		ID: "base-1", TargetCondition: "tags.site = 'x'", Priority: 10,
		Labels:  map[string]string{"app": "twinlet"},
		Content: iothub.ConfigurationContent{DeviceContent: map[string]any{"properties.desired.chrony": map[string]any{"servers": []any{"a"}}}},
		Metrics: iothub.ConfigurationMetrics{Queries: map[string]string{"ready": "SELECT deviceId FROM devices WHERE properties.reported.ok = true"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if created.ETag == "" || created.SchemaVersion != "1.0" || created.CreatedTimeUTC == nil || created.Labels["app"] != "twinlet" {
		t.Fatalf("created %+v", created)
	}
	if q := created.SystemMetrics.Queries["targetedCount"]; q != "select deviceId from devices where tags.site = 'x'" {
		t.Errorf("targetedCount query %q", q)
	}
	if _, err := c.CreateConfiguration(ctx, deviceConfig("base-1", "*", 1, map[string]any{"properties.desired.x": 1})); serviceStatus(err) != 409 {
		t.Errorf("create again: %v, want 409", err)
	}

	// Update: priority and target change, content stays whatever is sent.
	upd := *created
	upd.Priority = 20
	upd.TargetCondition = "*"
	upd.Content.DeviceContent = map[string]any{"properties.desired.other": 1}
	got, err := c.UpdateConfiguration(ctx, upd)
	if err != nil {
		t.Fatal(err)
	}
	if got.Priority != 20 || got.TargetCondition != "*" || got.ETag == created.ETag {
		t.Errorf("updated %+v", got)
	}
	if _, ok := got.Content.DeviceContent["properties.desired.chrony"]; !ok || len(got.Content.DeviceContent) != 1 {
		t.Errorf("content changed by an update: %v", got.Content.DeviceContent)
	}
	stale := upd
	stale.ETag = created.ETag
	if _, err := c.UpdateConfiguration(ctx, stale); serviceStatus(err) != 412 {
		t.Errorf("stale etag: %v, want 412", err)
	}
	noContent := *got
	noContent.Content = iothub.ConfigurationContent{}
	if _, err := c.UpdateConfiguration(ctx, noContent); serviceStatus(err) != 400 {
		t.Errorf("update without content: %v, want 400", err)
	}

	// Invalid input is refused with a located reason.
	for name, cfg := range map[string]iothub.Configuration{
		"uppercase id":   deviceConfig("Base", "*", 1, map[string]any{"properties.desired.x": 1}),
		"slash in id":    deviceConfig("a/b", "*", 1, map[string]any{"properties.desired.x": 1}),
		"bad path":       deviceConfig("p", "*", 1, map[string]any{"properties.reported.x": 1}),
		"bad condition":  deviceConfig("q", "tags.x = ", 1, map[string]any{"properties.desired.x": 1}),
		"desired target": deviceConfig("r", "properties.desired.x = 1", 1, map[string]any{"properties.desired.x": 1}),
		"module star": {ID: "m", TargetCondition: "*",
			Content: iothub.ConfigurationContent{ModuleContent: map[string]any{"properties.desired.x": 1}}},
		"too many metrics": {ID: "n", TargetCondition: "*", Content: iothub.ConfigurationContent{DeviceContent: map[string]any{"properties.desired.x": 1}},
			Metrics: iothub.ConfigurationMetrics{Queries: map[string]string{"a": "SELECT * FROM devices", "b": "SELECT * FROM devices", "c": "SELECT * FROM devices", "d": "SELECT * FROM devices", "e": "SELECT * FROM devices", "f": "SELECT * FROM devices"}}},
	} {
		if _, err := c.CreateConfiguration(ctx, cfg); serviceStatus(err) != 400 {
			t.Errorf("%s: %v, want 400", name, err)
		}
	}
	_, err = c.CreateConfiguration(ctx, deviceConfig("q", "tags.x = ", 1, map[string]any{"properties.desired.x": 1}))
	if err == nil || !strings.Contains(err.Error(), "line 1, column 9") {
		t.Errorf("condition error is not located in the condition: %v", err)
	}

	// At most 100 configurations.
	for i := 1; i < maxConfigurations; i++ {
		if _, err := c.CreateConfiguration(ctx, deviceConfig(fmt.Sprintf("c%03d", i), "tags.none = 1", 1, map[string]any{"properties.desired.x": i})); err != nil {
			t.Fatal(err)
		}
	}
	_, err = c.CreateConfiguration(ctx, deviceConfig("one-too-many", "*", 1, map[string]any{"properties.desired.x": 1}))
	var se *iothub.ServiceError
	if !errors.As(err, &se) || se.StatusCode != 403 || se.Code != "IotHubQuotaExceeded" {
		t.Errorf("101st configuration: %v, want 403 IotHubQuotaExceeded", err)
	}
	list, err := c.ListConfigurations(ctx, 0)
	if err != nil || len(list) != maxConfigurations {
		t.Fatalf("list: %d, %v", len(list), err)
	}
	if list, _ := c.ListConfigurations(ctx, 5); len(list) != 5 {
		t.Errorf("top 5: %d", len(list))
	}

	if err := c.DeleteConfiguration(ctx, "base-1", created.ETag); serviceStatus(err) != 412 {
		t.Errorf("delete with stale etag: %v, want 412", err)
	}
	if err := c.DeleteConfiguration(ctx, "base-1", got.ETag); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetConfiguration(ctx, "base-1"); !iothub.IsNotFound(err) {
		t.Errorf("get deleted: %v", err)
	}
	if err := c.DeleteConfiguration(ctx, "base-1", ""); !iothub.IsNotFound(err) {
		t.Errorf("delete deleted: %v", err)
	}
}

func patchTags(t testing.TB, c *iothub.ServiceClient, id string, tags map[string]any) {
	t.Helper()
	if _, err := c.PatchTwin(context.Background(), id, iothub.TwinPatch{Tags: tags}, ""); err != nil {
		t.Fatal(err)
	}
}

func TestConfigurationPrecedence(t *testing.T) {
	h := startHub(t, Options{})
	c := serviceClient(t, h)
	ctx := context.Background()
	for _, id := range []string{"d1", "d2", "d3"} {
		if _, err := h.CreateDevice(id); err != nil {
			t.Fatal(err)
		}
	}
	patchTags(t, c, "d1", map[string]any{"site": "a", "ring": "canary"})
	patchTags(t, c, "d2", map[string]any{"site": "a"})
	patchTags(t, c, "d3", map[string]any{"site": "b"})

	if _, err := c.CreateConfiguration(ctx, deviceConfig("base", "*", 1, map[string]any{
		"properties.desired.ntp":   map[string]any{"server": "base"},
		"properties.desired.motd":  "hello",
		"properties.desired.debug": false,
	})); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateConfiguration(ctx, deviceConfig("site-a", "tags.site = 'a'", 10, map[string]any{
		"properties.desired.ntp": map[string]any{"server": "site-a"},
	})); err != nil {
		t.Fatal(err)
	}
	waitDesired(t, c, "d1", "ntp.server", `"site-a"`)
	waitDesired(t, c, "d2", "ntp.server", `"site-a"`)
	waitDesired(t, c, "d3", "ntp.server", `"base"`)
	waitDesired(t, c, "d1", "motd", `"hello"`)
	waitStatus(t, c, "d1", "base", ConfigApplied) // motd and debug are base's
	waitStatus(t, c, "d1", "site-a", ConfigApplied)
	if s := configStatus(t, c, "d3", "site-a"); s != "" {
		t.Errorf("d3 is not targeted by site-a, status %q", s)
	}

	// A tie of priority goes to the most recently created.
	if _, err := c.CreateConfiguration(ctx, deviceConfig("canary", "tags.ring = 'canary'", 10, map[string]any{
		"properties.desired.ntp":  map[string]any{"server": "canary"},
		"properties.desired.motd": nil, // null removes the property
	})); err != nil {
		t.Fatal(err)
	}
	waitDesired(t, c, "d1", "ntp.server", `"canary"`)
	waitDesired(t, c, "d1", "motd", "")
	waitStatus(t, c, "d1", "site-a", ConfigTargeted)
	waitDesired(t, c, "d2", "ntp.server", `"site-a"`)

	// A device whose tags change leaves one target and enters another.
	patchTags(t, c, "d2", map[string]any{"site": "b"})
	waitDesired(t, c, "d2", "ntp.server", `"base"`)
	waitStatus(t, c, "d2", "site-a", "")
	patchTags(t, c, "d3", map[string]any{"site": "a"})
	waitDesired(t, c, "d3", "ntp.server", `"site-a"`)

	// Deleting the winner falls back to the next configuration; deleting
	// the last one removes its settings.
	if err := c.DeleteConfiguration(ctx, "canary", ""); err != nil {
		t.Fatal(err)
	}
	waitDesired(t, c, "d1", "ntp.server", `"site-a"`)
	waitDesired(t, c, "d1", "motd", `"hello"`)
	if err := c.DeleteConfiguration(ctx, "site-a", ""); err != nil {
		t.Fatal(err)
	}
	waitDesired(t, c, "d1", "ntp.server", `"base"`)
	if err := c.DeleteConfiguration(ctx, "base", ""); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"d1", "d2", "d3"} {
		waitDesired(t, c, id, "ntp", "")
		waitDesired(t, c, id, "motd", "")
		testutil.Eventually(t, id+" without configurations", func() bool {
			tw, _ := c.GetTwin(ctx, id)
			return len(tw.Configurations) == 0
		})
	}
}

// A device-level desired patch on a path a configuration holds wins until
// that path's winner changes; the configuration does not write it back on
// every evaluation.
func TestConfigurationAndDirectPatch(t *testing.T) {
	h := startHub(t, Options{})
	c := serviceClient(t, h)
	ctx := context.Background()
	h.CreateDevice("d1")
	patchTags(t, c, "d1", map[string]any{"site": "a"})
	if _, err := c.CreateConfiguration(ctx, deviceConfig("low", "*", 1, map[string]any{"properties.desired.level": "low"})); err != nil {
		t.Fatal(err)
	}
	waitDesired(t, c, "d1", "level", `"low"`)
	if _, err := c.PatchTwin(ctx, "d1", iothub.TwinPatch{Desired: map[string]any{"level": "manual", "own": 1}}, ""); err != nil {
		t.Fatal(err)
	}
	// A reported patch and a tag change re-evaluate the twin; the winner
	// is unchanged, so the direct value stays.
	patchTags(t, c, "d1", map[string]any{"site": "b"})
	if _, err := c.CreateConfiguration(ctx, deviceConfig("other", "tags.none = 1", 5, map[string]any{"properties.desired.level": "x"})); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, h)
	waitDesired(t, c, "d1", "level", `"manual"`)
	if _, err := c.CreateConfiguration(ctx, deviceConfig("high", "tags.site = 'b'", 5, map[string]any{"properties.desired.level": "high"})); err != nil {
		t.Fatal(err)
	}
	waitDesired(t, c, "d1", "level", `"high"`)
	waitDesired(t, c, "d1", "own", "1")
}

// waitIdle waits until the configuration engine has nothing pending: a
// change is scheduled before its REST call returns.
func waitIdle(t testing.TB, h *Hub) {
	t.Helper()
	testutil.Eventually(t, "configuration evaluation", func() bool {
		_, pending := h.ADMPasses()
		return !pending
	})
}

// A connected device receives the content as a desired patch over MQTT;
// its reported properties move it into a target and drive the metrics and
// the twins' queryable statuses.
func TestConfigurationReportedTargetsAndMetrics(t *testing.T) {
	h := startHub(t, Options{})
	c := serviceClient(t, h)
	ctx := context.Background()
	cs1, _ := h.CreateDevice("d1")
	h.CreateDevice("d2")
	d := mustDial(t, h, cs1)
	d.subscribe("$iothub/twin/res/#", "$iothub/twin/PATCH/properties/desired/#")

	_, err := c.CreateConfiguration(ctx, iothub.Configuration{
		ID: "arm", TargetCondition: "properties.reported.arch = 'arm64'", Priority: 1,
		Content: iothub.ConfigurationContent{DeviceContent: map[string]any{"properties.desired.pkgs": map[string]any{"htop": "present"}}},
		Metrics: iothub.ConfigurationMetrics{Queries: map[string]string{
			"ready": "SELECT deviceId FROM devices WHERE configurations.[[arm]].status = 'Applied' AND properties.reported.pkgs.status = 'Ready'",
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := d.patchReported(`{"arch":"arm64"}`); st != "204" {
		t.Fatalf("reported patch: %s", st)
	}
	m := d.next(topicDesiredNotify)
	var delta map[string]any
	json.Unmarshal(m.Payload(), &delta)
	if jsonString(delta["pkgs"]) != `{"htop":"present"}` || !strings.Contains(m.Topic(), "$version=") {
		t.Fatalf("desired notification %s %s", m.Topic(), m.Payload())
	}
	waitStatus(t, c, "d1", "arm", ConfigApplied)

	metrics := func() (targeted, applied, ready int64) {
		cfg, err := c.GetConfiguration(ctx, "arm")
		if err != nil {
			t.Fatal(err)
		}
		return cfg.SystemMetrics.Results["targetedCount"], cfg.SystemMetrics.Results["appliedCount"], cfg.Metrics.Results["ready"]
	}
	testutil.Eventually(t, "targeted 1, applied 1, ready 0", func() bool {
		a, b, r := metrics()
		return a == 1 && b == 1 && r == 0
	})
	d.patchReported(`{"pkgs":{"status":"Ready"}}`)
	testutil.Eventually(t, "ready 1", func() bool { _, _, r := metrics(); return r == 1 })

	rows, _, err := h.Query("SELECT deviceId FROM devices WHERE configurations.[[arm]].status = 'Applied'")
	if err != nil || len(rows) != 1 || rows[0]["deviceId"] != "d1" {
		t.Errorf("query by status: %v %v", rows, err)
	}

	// Leaving the target removes the content and the status.
	d.patchReported(`{"arch":"amd64"}`)
	m = d.next(topicDesiredNotify)
	json.Unmarshal(m.Payload(), &delta)
	if v, ok := delta["pkgs"]; !ok || v != nil {
		t.Errorf("leaving the target: notification %s, want pkgs: null", m.Payload())
	}
	testutil.Eventually(t, "targeted 0, applied 0, ready 0", func() bool {
		a, b, r := metrics()
		return a == 0 && b == 0 && r == 0
	})
	if s := configStatus(t, c, "d1", "arm"); s != "" {
		t.Errorf("status after leaving: %q", s)
	}
	// Deleting a device drops it from the counts.
	d.patchReported(`{"arch":"arm64"}`)
	testutil.Eventually(t, "targeted 1", func() bool { a, _, _ := metrics(); return a == 1 })
	if err := h.DeleteDevice("d1"); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, "targeted 0 after delete", func() bool { a, b, r := metrics(); return a == 0 && b == 0 && r == 0 })
}

func TestConfigurationModuleContent(t *testing.T) {
	h := startHub(t, Options{})
	c := serviceClient(t, h)
	ctx := context.Background()
	h.CreateDevice("d1")
	h.CreateModule("d1", "agent")
	h.CreateModule("d1", "other")
	if _, err := c.PatchModuleTwin(ctx, "d1", "agent", iothub.TwinPatch{Tags: map[string]any{"role": "agent"}}, ""); err != nil {
		t.Fatal(err)
	}
	_, err := c.CreateConfiguration(ctx, iothub.Configuration{
		ID: "agents", Priority: 1, TargetCondition: "from devices.modules where tags.role = 'agent'",
		Content: iothub.ConfigurationContent{ModuleContent: map[string]any{"properties.desired.interval": 30}},
	})
	if err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, "module twin content", func() bool {
		tw, _ := c.GetModuleTwin(ctx, "d1", "agent")
		return jsonString(tw.Properties.Desired["interval"]) == "30" && tw.Configurations["agents"] != nil
	})
	waitIdle(t, h)
	for _, check := range []func() (*iothub.Twin, error){
		func() (*iothub.Twin, error) { return c.GetModuleTwin(ctx, "d1", "other") },
		func() (*iothub.Twin, error) { return c.GetTwin(ctx, "d1") },
	} {
		tw, err := check()
		if err != nil || tw.Properties.Desired["interval"] != nil || len(tw.Configurations) != 0 {
			t.Errorf("untargeted twin %s/%s changed: %v %v", tw.DeviceID, tw.ModuleID, tw.Properties.Desired, err)
		}
	}
	cfg, _ := c.GetConfiguration(ctx, "agents")
	if cfg.SystemMetrics.Results["appliedCount"] != 1 || !strings.Contains(cfg.SystemMetrics.Queries["targetedCount"], "from devices.modules where tags.role") {
		t.Errorf("system metrics %+v", cfg.SystemMetrics)
	}
}

func TestConfigurationTestQueriesAndApplyContent(t *testing.T) {
	h := startHub(t, Options{})
	c := serviceClient(t, h)
	ctx := context.Background()
	res, err := c.TestQueries(ctx, "tags.site = 'a'", map[string]string{"ok": "SELECT deviceId FROM devices", "bad": "SELECT FROM"})
	if err != nil {
		t.Fatal(err)
	}
	if res.TargetConditionError != "" || res.CustomMetricQueryErrors["ok"] != "" || res.CustomMetricQueryErrors["bad"] == "" || res.OK() {
		t.Errorf("test queries %+v", res)
	}
	if res, _ := c.TestQueries(ctx, "tags.site = ", nil); res.TargetConditionError == "" {
		t.Errorf("bad condition passes: %+v", res)
	}

	cs, _ := h.CreateDevice("d1")
	h.CreateModule("d1", "m1")
	d := mustDial(t, h, cs)
	d.subscribe("$iothub/twin/res/#", "$iothub/twin/PATCH/properties/desired/#")
	err = c.ApplyConfigurationContent(ctx, "d1", iothub.ConfigurationContent{
		DeviceContent:  map[string]any{"properties.desired.a.b": 1},
		ModulesContent: map[string]map[string]any{"m1": {"properties.desired": map[string]any{"x": "y"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if m := d.next(topicDesiredNotify); string(m.Payload()) == "" || !strings.Contains(string(m.Payload()), `"a":{"b":1}`) {
		t.Errorf("notification %s", m.Payload())
	}
	waitDesired(t, c, "d1", "a.b", "1")
	mt, _ := c.GetModuleTwin(ctx, "d1", "m1")
	if mt.Properties.Desired["x"] != "y" {
		t.Errorf("module desired %v", mt.Properties.Desired)
	}
	if err := c.ApplyConfigurationContent(ctx, "nope", iothub.ConfigurationContent{DeviceContent: map[string]any{"properties.desired.a": 1}}); !iothub.IsNotFound(err) {
		t.Errorf("unknown device: %v", err)
	}
	if err := c.ApplyConfigurationContent(ctx, "d1", iothub.ConfigurationContent{ModulesContent: map[string]map[string]any{"m9": {"properties.desired": map[string]any{}}}}); !iothub.IsNotFound(err) {
		t.Errorf("unknown module: %v", err)
	}
}

// Configurations, twins' statuses and ownership survive a restart of a
// hub with a directory.
func TestConfigurationPersistence(t *testing.T) {
	dir := t.TempDir()
	h := startHub(t, Options{Dir: dir})
	c := serviceClient(t, h)
	ctx := context.Background()
	h.CreateDevice("d1")
	created, err := c.CreateConfiguration(ctx, deviceConfig("base", "*", 3, map[string]any{"properties.desired.v": 1}))
	if err != nil {
		t.Fatal(err)
	}
	waitStatus(t, c, "d1", "base", ConfigApplied)
	waitIdle(t, h)
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	h2 := startHub(t, Options{Dir: dir})
	c2 := serviceClient(t, h2)
	got, err := c2.GetConfiguration(ctx, "base")
	if err != nil || got.ETag != created.ETag || got.Priority != 3 {
		t.Fatalf("after restart: %+v %v", got, err)
	}
	waitStatus(t, c2, "d1", "base", ConfigApplied)
	testutil.Eventually(t, "counts rebuilt", func() bool {
		g, _ := c2.GetConfiguration(ctx, "base")
		return g.SystemMetrics.Results["appliedCount"] == 1
	})
	tw, _ := c2.GetTwin(ctx, "d1")
	v := tw.Properties.Desired["$version"]
	// The restart's evaluation finds nothing to change.
	waitIdle(t, h2)
	tw, _ = c2.GetTwin(ctx, "d1")
	if tw.Properties.Desired["$version"] != v {
		t.Errorf("desired rewritten after restart: %v -> %v", v, tw.Properties.Desired["$version"])
	}
	if err := c2.DeleteConfiguration(ctx, "base", ""); err != nil {
		t.Fatal(err)
	}
	waitDesired(t, c2, "d1", "v", "")
}

// With ADMInterval the hub evaluates on its period, like the service;
// creating a configuration is still evaluated at once.
func TestConfigurationInterval(t *testing.T) {
	h := startHub(t, Options{ADMInterval: time.Hour})
	c := serviceClient(t, h)
	ctx := context.Background()
	h.CreateDevice("d1")
	if _, err := c.CreateConfiguration(ctx, deviceConfig("site", "tags.site = 'a'", 1, map[string]any{"properties.desired.v": 1})); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, h)
	patchTags(t, c, "d1", map[string]any{"site": "a"})
	if _, pending := h.ADMPasses(); !pending {
		t.Fatal("a tag change is not scheduled")
	}
	if d := desiredOf(t, c, "d1"); d["v"] != nil {
		t.Fatalf("evaluated before the interval: %v", d)
	}
	// A new configuration runs a pass, which takes the scheduled twin too.
	if _, err := c.CreateConfiguration(ctx, deviceConfig("other", "tags.none = 1", 1, map[string]any{"properties.desired.w": 1})); err != nil {
		t.Fatal(err)
	}
	waitDesired(t, c, "d1", "v", "1")
}

// Reported patches, tag changes and configuration changes race; once the
// engine is idle every twin holds exactly its winners' content, statuses
// and counts.
func TestConfigurationConcurrentChanges(t *testing.T) {
	h := startHub(t, Options{})
	const n = 40
	for i := 0; i < n; i++ {
		if _, err := h.CreateDevice(fmt.Sprintf("d%02d", i)); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan struct{})
	errs := make(chan error, 4)
	go func() {
		defer close(done)
		for round := 0; round < 30; round++ {
			for i := 0; i < n; i++ {
				key := fmt.Sprintf("d%02d", i)
				if _, err := h.patchReported(key, map[string]any{"arch": []string{"arm", "x86"}[(i+round)%2]}); err != nil {
					errs <- err
					return
				}
				if _, err := h.UpdateTwin(key, "", TwinPatch{Tags: map[string]any{"site": fmt.Sprintf("s%d", (i+round)%3)}}, false, ""); err != nil {
					errs <- err
					return
				}
			}
		}
	}()
	for round := 0; round < 10; round++ {
		for _, c := range []Configuration{
			{ID: "arm", TargetCondition: "properties.reported.arch = 'arm'", Priority: 2,
				Content: ConfigurationContent{DeviceContent: map[string]any{"properties.desired.v": "arm"}}},
			{ID: "site0", TargetCondition: "tags.site = 's0'", Priority: 5,
				Content: ConfigurationContent{DeviceContent: map[string]any{"properties.desired.v": "site0", "properties.desired.w": 1}}},
			{ID: "all", TargetCondition: "*", Priority: 1,
				Content: ConfigurationContent{DeviceContent: map[string]any{"properties.desired.v": "all"}}},
		} {
			if _, err := h.PutConfiguration(c, "*"); err != nil {
				t.Fatal(err)
			}
		}
		if round%3 == 2 {
			if err := h.DeleteConfiguration("site0", ""); err != nil {
				t.Fatal(err)
			}
		}
	}
	<-done
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	waitIdle(t, h)
	_, haveSite0 := h.GetConfiguration("site0")
	counts := map[string]int64{}
	for i := 0; i < n; i++ {
		tw, err := h.Twin(fmt.Sprintf("d%02d", i), "")
		if err != nil {
			t.Fatal(err)
		}
		site, arch := tw.Tags["site"], tw.Properties.Reported["arch"]
		want, wantW := "all", false
		switch {
		case site == "s0" && haveSite0 == nil:
			want, wantW = "site0", true
		case arch == "arm":
			want = "arm"
		}
		if tw.Properties.Desired["v"] != want || (tw.Properties.Desired["w"] != nil) != wantW {
			t.Errorf("%s (site %v, arch %v): desired %v, want v=%s w=%v", tw.DeviceID, site, arch, tw.Properties.Desired, want, wantW)
		}
		for id, st := range tw.Configurations {
			if st.Status == ConfigApplied {
				counts[id]++
			}
		}
	}
	for _, c := range h.ListConfigurations(0) {
		if got := c.SystemMetrics.Results["appliedCount"]; got != counts[c.ID] {
			t.Errorf("%s appliedCount %d, twins say %d", c.ID, got, counts[c.ID])
		}
	}
}

// Only changes that a condition or metric reads schedule an evaluation.
func TestConfigurationIndexSkipsUnreadChanges(t *testing.T) {
	h := startHub(t, Options{ADMInterval: time.Hour}) // keeps scheduled twins visible
	h.CreateDevice("d1")
	if _, err := h.PutConfiguration(Configuration{ID: "c", TargetCondition: "tags.site = 'a' AND properties.reported.arch = 'arm'", Priority: 1,
		Content: ConfigurationContent{DeviceContent: map[string]any{"properties.desired.v": 1}},
		Metrics: ConfigurationMetrics{Queries: map[string]string{"ok": "SELECT deviceId FROM devices WHERE properties.reported.health.ok = true"}},
	}, ""); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, h)
	for _, step := range []struct {
		name      string
		change    func() error
		scheduled bool
	}{
		{"reported counter", func() error { _, err := h.patchReported("d1", map[string]any{"counter": 1.0}); return err }, false},
		{"tag owner", func() error {
			_, err := h.UpdateTwin("d1", "", TwinPatch{Tags: map[string]any{"owner": "x"}}, false, "")
			return err
		}, false},
		{"desired", func() error {
			_, err := h.UpdateTwin("d1", "", TwinPatch{Properties: &struct {
				Desired map[string]any `json:"desired,omitempty"`
			}{Desired: map[string]any{"x": 1.0}}}, false, "")
			return err
		}, false},
		{"reported arch", func() error { _, err := h.patchReported("d1", map[string]any{"arch": "arm"}); return err }, true},
		{"reported health (a metric)", func() error {
			_, err := h.patchReported("d1", map[string]any{"health": map[string]any{"ok": true}})
			return err
		}, true},
		{"tag site", func() error {
			_, err := h.UpdateTwin("d1", "", TwinPatch{Tags: map[string]any{"site": "a"}}, false, "")
			return err
		}, true},
	} {
		if err := step.change(); err != nil {
			t.Fatal(err)
		}
		if _, pending := h.ADMPasses(); pending != step.scheduled {
			t.Errorf("%s: scheduled %v, want %v", step.name, pending, step.scheduled)
		}
		h.mu.Lock()
		clear(h.adm.dirty)
		h.mu.Unlock()
	}
}

// A configurations.json that does not load stops New with the file and
// entry named; nothing is overwritten.
func TestConfigurationBadFile(t *testing.T) {
	dir := t.TempDir()
	h := startHub(t, Options{Dir: dir})
	if _, err := h.PutConfiguration(Configuration{ID: "c", TargetCondition: "*", Content: ConfigurationContent{DeviceContent: map[string]any{"properties.desired.v": 1}}}, ""); err != nil {
		t.Fatal(err)
	}
	h.Close()
	path := filepath.Join(dir, "configurations.json")
	bad := []byte(`[{"id":"c","targetCondition":"tags.x = ","content":{"deviceContent":{"properties.desired.v":1}},"seq":1}]`)
	if err := os.WriteFile(path, bad, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := New(Options{Dir: dir})
	if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "entry 0 (c)") {
		t.Fatalf("New with a bad configurations.json: %v", err)
	}
	if got, _ := os.ReadFile(path); string(got) != string(bad) {
		t.Error("the bad file was rewritten")
	}
}
