package fleet

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/twinlet/twinlet/internal/iothub"
)

// Progress is where a configuration's rollout stands: what `twinctl
// rollout status` prints and the console draws.
type Progress struct {
	ID        string `json:"id"`
	Name      string `json:"name"`
	Stage     int    `json:"stage,omitempty"`  // 1-based; 0: no staged rollout
	Stages    int    `json:"stages,omitempty"` // number of stages
	StageName string `json:"stageName,omitempty"`
	State     string `json:"state,omitempty"` // Progressing, Halted, Complete
	Reason    string `json:"reason,omitempty"`
	// Expected is the number of devices the current target condition
	// selects; Targeted and Applied come from the hub's system metrics.
	Expected int   `json:"expected"`
	Targeted int64 `json:"targeted"`
	Applied  int64 `json:"applied"`
	Ready    int64 `json:"ready"`
	Failed   int64 `json:"failed"`
	Pending  int64 `json:"pending"`
}

// Settled reports whether the hub has evaluated every device of the
// target and none is still pending.
func (p *Progress) Settled() bool {
	return int(p.Targeted) >= p.Expected && p.Pending == 0 && p.Ready+p.Failed >= p.Applied
}

// Line is the progress as one line of text.
func (p *Progress) Line() string {
	var b strings.Builder
	b.WriteString(p.ID)
	if p.Stages > 0 {
		fmt.Fprintf(&b, " stage %d/%d %s", p.Stage, p.Stages, p.StageName)
	}
	fmt.Fprintf(&b, ": targeted %d, applied %d, Ready %d, Failed %d, pending %d", p.Targeted, p.Applied, p.Ready, p.Failed, p.Pending)
	return b.String()
}

// Bar renders the progress as a text bar of width cells.
func (p *Progress) Bar(width int) string {
	total := max(p.Applied, int64(p.Expected), 1)
	ready := int(int64(width) * p.Ready / total)
	failed := int(int64(width) * p.Failed / total)
	if p.Failed > 0 && failed == 0 {
		failed = 1
	}
	ready = min(ready, width-failed)
	return "[" + strings.Repeat("#", ready) + strings.Repeat("x", failed) + strings.Repeat(".", width-ready-failed) + "]"
}

// Status computes the rollout progress of a configuration from its
// metrics, with one count query when a rollout stage is narrower than
// the whole target.
func Status(ctx context.Context, sc *iothub.ServiceClient, cfg *iothub.Configuration) (*Progress, error) {
	p := &Progress{ID: cfg.ID, Name: Name(cfg)}
	if plan, stage, err := RolloutPlan(cfg); err != nil {
		return nil, err
	} else if plan != nil {
		p.Stage, p.Stages, p.StageName = stage+1, len(plan.Stages), plan.Stages[stage].Name
		p.State, p.Reason = cfg.Labels[LabelRollout], cfg.Labels[LabelReason]
	}
	// The eligible metric counts the whole target; only a rollout stage
	// narrower than it needs a query of its own (a scan of every twin).
	if v, ok := cfg.Metrics.Results[MetricEligible]; ok && strings.TrimSpace(BaseTarget(cfg)) == strings.TrimSpace(cfg.TargetCondition) {
		p.Expected = int(v)
	} else {
		n, err := Count(ctx, sc, cfg.TargetCondition)
		if err != nil {
			return nil, err
		}
		p.Expected = n
	}
	p.Targeted = cfg.SystemMetrics.Results["targetedCount"]
	p.Applied = cfg.SystemMetrics.Results["appliedCount"]
	p.Ready = cfg.Metrics.Results[MetricReady]
	p.Failed = cfg.Metrics.Results[MetricFailed]
	p.Pending = cfg.Metrics.Results[MetricPending]
	return p, nil
}

// Count runs SELECT COUNT() over the devices matching cond ("*" or "":
// every device).
func Count(ctx context.Context, sc *iothub.ServiceClient, cond string) (int, error) {
	q := "SELECT COUNT() AS n FROM devices"
	if c := strings.TrimSpace(cond); c != "*" && c != "" {
		q += " WHERE " + c
	}
	for row, err := range sc.Query(ctx, q, 0) {
		if err != nil {
			return 0, err
		}
		var r struct{ N json.Number }
		dec := json.NewDecoder(bytes.NewReader(row))
		dec.UseNumber()
		if err := dec.Decode(&r); err != nil {
			return 0, fmt.Errorf("query %q: %w", q, err)
		}
		n, err := strconv.Atoi(r.N.String())
		if err != nil {
			return 0, fmt.Errorf("query %q: count %q: %w", q, r.N, err)
		}
		return n, nil
	}
	return 0, nil
}
