package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/twinlet/twinlet/internal/fleet"
	"github.com/twinlet/twinlet/internal/iothub"
)

func init() {
	register(&command{name: "get configs", nargs: 0, setup: getConfigs})
	register(&command{name: "get devices", nargs: 0, setup: getDevices})
}

// configRow is one configuration as get configs shows it.
type configRow struct {
	ID              string `json:"id"`
	Name            string `json:"name,omitempty"`
	Managed         bool   `json:"managed"`
	Priority        int    `json:"priority"`
	TargetCondition string `json:"targetCondition"`
	Targeted        int64  `json:"targeted"`
	Applied         int64  `json:"applied"`
	Ready           *int64 `json:"ready,omitempty"`
	Failed          *int64 `json:"failed,omitempty"`
	Pending         *int64 `json:"pending,omitempty"`
	Rollout         string `json:"rollout,omitempty"`
}

func metric(m map[string]int64, k string) *int64 {
	v, ok := m[k]
	if !ok {
		return nil
	}
	return &v
}

func getConfigs(fs *flag.FlagSet) runFunc {
	target := fs.String("target", "", "only configurations that reach a device matching this condition")
	return func(ctx context.Context, c *cli, _ []string) error {
		sc, err := c.client()
		if err != nil {
			return err
		}
		defer sc.Close()
		list, err := sc.ListConfigurations(ctx, 100)
		if err != nil {
			return err
		}
		sort.Slice(list, func(i, j int) bool {
			if list[i].Priority != list[j].Priority {
				return list[i].Priority > list[j].Priority
			}
			return list[i].ID < list[j].ID
		})
		var rows []configRow
		for i := range list {
			cfg := &list[i]
			if *target != "" {
				n, err := count(ctx, sc, "("+*target+") AND IS_DEFINED(configurations.[["+cfg.ID+"]].status)")
				if err != nil {
					return fmt.Errorf("--target: %w", err)
				}
				if n == 0 {
					continue
				}
			}
			r := configRow{ID: cfg.ID, Managed: fleet.Managed(cfg), Priority: cfg.Priority, TargetCondition: cfg.TargetCondition,
				Targeted: cfg.SystemMetrics.Results["targetedCount"], Applied: cfg.SystemMetrics.Results["appliedCount"]}
			if r.Managed {
				r.Name = fleet.Name(cfg)
				r.Ready = metric(cfg.Metrics.Results, fleet.MetricReady)
				r.Failed = metric(cfg.Metrics.Results, fleet.MetricFailed)
				r.Pending = metric(cfg.Metrics.Results, fleet.MetricPending)
				r.Rollout = rolloutLabel(cfg)
			}
			rows = append(rows, r)
		}
		if ok, err := c.emit(rows); ok {
			return err
		}
		n := func(p *int64) string {
			if p == nil {
				return "-"
			}
			return strconv.FormatInt(*p, 10)
		}
		var cells [][]string
		for _, r := range rows {
			cells = append(cells, []string{r.ID, r.Name, strconv.Itoa(r.Priority), strconv.FormatInt(r.Targeted, 10),
				strconv.FormatInt(r.Applied, 10), n(r.Ready), n(r.Failed), n(r.Pending), r.Rollout, r.TargetCondition})
		}
		return table(c.stdout, []string{"ID", "NAME", "PRIORITY", "TARGETED", "APPLIED", "READY", "FAILED", "PENDING", "ROLLOUT", "TARGET"}, cells)
	}
}

// rolloutLabel summarises a rollout's state: "2/3 berlin Progressing".
func rolloutLabel(cfg *iothub.Configuration) string {
	plan, stage, err := fleet.RolloutPlan(cfg)
	if err != nil || plan == nil {
		return ""
	}
	return fmt.Sprintf("%d/%d %s %s", stage+1, len(plan.Stages), plan.Stages[stage].Name, cfg.Labels[fleet.LabelRollout])
}

// deviceRow is one device as get devices shows it.
type deviceRow struct {
	DeviceID        string            `json:"deviceId"`
	ConnectionState string            `json:"connectionState,omitempty"`
	State           string            `json:"state,omitempty"`
	Ready           any               `json:"ready,omitempty"`
	FailedSections  string            `json:"failedSections,omitempty"`
	Configurations  map[string]string `json:"configurations,omitempty"`
}

func getDevices(fs *flag.FlagSet) runFunc {
	target := fs.String("target", "", "only devices matching this condition (tags.site='berlin')")
	return func(ctx context.Context, c *cli, _ []string) error {
		sc, err := c.client()
		if err != nil {
			return err
		}
		defer sc.Close()
		q := "SELECT * FROM devices"
		if t := strings.TrimSpace(*target); t != "" && t != "*" {
			q += " WHERE " + t
		}
		var rows []deviceRow
		for raw, err := range sc.Query(ctx, q, 0) {
			if err != nil {
				return err
			}
			var t iothub.Twin
			if err := json.Unmarshal(raw, &t); err != nil {
				return fmt.Errorf("query: %w", err)
			}
			r := deviceRow{DeviceID: t.DeviceID, ConnectionState: t.ConnectionState}
			if sum, ok := t.Properties.Reported["__summary"].(map[string]any); ok {
				r.State, _ = sum["state"].(string)
				r.Ready = sum["ready"]
				r.FailedSections, _ = sum["failedSections"].(string)
			}
			for id, v := range t.Configurations {
				if m, ok := v.(map[string]any); ok {
					if r.Configurations == nil {
						r.Configurations = map[string]string{}
					}
					r.Configurations[id], _ = m["status"].(string)
				}
			}
			rows = append(rows, r)
		}
		sort.Slice(rows, func(i, j int) bool { return rows[i].DeviceID < rows[j].DeviceID })
		if ok, err := c.emit(rows); ok {
			return err
		}
		var cells [][]string
		for _, r := range rows {
			var cfgs []string
			for _, id := range sortedKeys(r.Configurations) {
				cfgs = append(cfgs, id+"="+r.Configurations[id])
			}
			ready := ""
			if r.Ready != nil {
				ready = scalar(r.Ready)
			}
			cells = append(cells, []string{r.DeviceID, r.ConnectionState, r.State, ready, r.FailedSections, strings.Join(cfgs, ",")})
		}
		return table(c.stdout, []string{"DEVICE", "CONNECTION", "STATE", "READY", "FAILED", "CONFIGURATIONS"}, cells)
	}
}
