package hub

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

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
