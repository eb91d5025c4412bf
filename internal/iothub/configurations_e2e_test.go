package iothub_test

import (
	"context"
	"testing"

	"github.com/twinlet/twinlet/internal/iothub"
	"github.com/twinlet/twinlet/internal/iothub/iothubtest"
	"github.com/twinlet/twinlet/internal/testutil"
)

// The configuration methods against the embedded twinhub over real TLS:
// the request shapes, etags and error mapping the service client relies
// on; the hub's semantics are tested in internal/hub.
func TestServiceConfigurationsE2E(t *testing.T) {
	ctx := context.Background()
	h := iothubtest.StartHub(t)
	sc := iothubtest.ServiceClient(t, h, "iothubowner")
	if _, err := sc.CreateDevice(ctx, iothub.Device{DeviceID: "d1"}); err != nil {
		t.Fatal(err)
	}
	cfg, err := sc.CreateConfiguration(ctx, iothub.Configuration{
		ID: "base", TargetCondition: "*", Priority: 1,
		Content: iothub.ConfigurationContent{DeviceContent: map[string]any{"properties.desired.v": 1}},
		Metrics: iothub.ConfigurationMetrics{Queries: map[string]string{"all": "SELECT deviceId FROM devices"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.SchemaVersion != "1.0" || cfg.ETag == "" {
		t.Errorf("created %+v", cfg)
	}
	serviceError(t, func() error { _, err := sc.CreateConfiguration(ctx, *cfg); return err }(), 409, "ConfigurationAlreadyExists")

	testutil.Eventually(t, "metrics count the device", func() bool {
		got, err := sc.GetConfiguration(ctx, "base")
		return err == nil && got.SystemMetrics.Results["appliedCount"] == 1 && got.Metrics.Results["all"] == 1
	})
	tw, err := sc.GetTwin(ctx, "d1")
	if err != nil || tw.Properties.Desired["v"] != float64(1) || tw.Configurations["base"] == nil {
		t.Fatalf("twin %+v %v", tw, err)
	}

	cfg.Priority = 5
	upd, err := sc.UpdateConfiguration(ctx, *cfg)
	if err != nil || upd.Priority != 5 || upd.ETag == cfg.ETag {
		t.Fatalf("update: %+v %v", upd, err)
	}
	serviceError(t, func() error { _, err := sc.UpdateConfiguration(ctx, *cfg); return err }(), 412, "")
	list, err := sc.ListConfigurations(ctx, 10)
	if err != nil || len(list) != 1 || list[0].ID != "base" {
		t.Fatalf("list %v %v", list, err)
	}
	res, err := sc.TestQueries(ctx, "tags.x = ", map[string]string{"m": "SELECT deviceId FROM devices"})
	if err != nil || res.TargetConditionError == "" || res.OK() {
		t.Errorf("test queries %+v %v", res, err)
	}
	if err := sc.ApplyConfigurationContent(ctx, "d1", iothub.ConfigurationContent{DeviceContent: map[string]any{"properties.desired.w": "x"}}); err != nil {
		t.Fatal(err)
	}
	serviceError(t, sc.DeleteConfiguration(ctx, "base", cfg.ETag), 412, "")
	if err := sc.DeleteConfiguration(ctx, "base", upd.ETag); err != nil {
		t.Fatal(err)
	}
	serviceError(t, func() error { _, err := sc.GetConfiguration(ctx, "base"); return err }(), 404, "ConfigurationNotFound")
}
