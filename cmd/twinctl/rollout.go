package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/twinlet/twinlet/internal/fleet"
	"github.com/twinlet/twinlet/internal/iothub"
)

func init() {
	register(&command{name: "rollout status", args: "NAME", nargs: 1, setup: rolloutStatusCmd})
	register(&command{name: "rollout run", args: "NAME", nargs: 1, setup: rolloutRunCmd})
}

// rolloutFailed makes rollout exit 3: failures crossed the threshold.
type rolloutFailed struct{ msg string }

func (e *rolloutFailed) Error() string { return e.msg }
func (e *rolloutFailed) ExitCode() int { return 3 }

// progress is where a configuration's rollout stands (fleet.Status).
type progress = fleet.Progress

// findConfig returns the configuration with id name, or the newest
// managed one of FleetConfig name, with every managed one of that name.
func findConfig(ctx context.Context, sc *iothub.ServiceClient, name string) (*iothub.Configuration, []*iothub.Configuration, error) {
	list, err := sc.ListConfigurations(ctx, 100)
	if err != nil {
		return nil, nil, err
	}
	var same []*iothub.Configuration
	var found *iothub.Configuration
	for i := range list {
		c := &list[i]
		if c.ID == name {
			found = c
		}
		if fleet.Managed(c) && fleet.Name(c) == name {
			same = append(same, c)
		}
	}
	if found != nil {
		if fleet.Managed(found) {
			same = nil
			for i := range list {
				if fleet.Managed(&list[i]) && fleet.Name(&list[i]) == fleet.Name(found) {
					same = append(same, &list[i])
				}
			}
		}
		return found, same, nil
	}
	for _, c := range same {
		if found == nil || newer(c, found) {
			found = c
		}
	}
	if found == nil {
		return nil, nil, fmt.Errorf("no configuration %q on the hub", name)
	}
	return found, same, nil
}

func newer(a, b *iothub.Configuration) bool {
	if a.CreatedTimeUTC == nil || b.CreatedTimeUTC == nil {
		return a.ID > b.ID
	}
	return a.CreatedTimeUTC.After(*b.CreatedTimeUTC)
}

func statusOf(ctx context.Context, sc *iothub.ServiceClient, cfg *iothub.Configuration) (*progress, error) {
	return fleet.Status(ctx, sc, cfg)
}

// isTerminal reports whether w is a terminal (for the live bar).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// reporter prints progress: a bar redrawn in place on a terminal, a plain
// line whenever the numbers change otherwise.
type reporter struct {
	w    io.Writer
	tty  bool
	last string
	open bool // a bar is on the current line
}

func (r *reporter) show(p *progress) {
	l := p.Line()
	if r.tty {
		fmt.Fprintf(r.w, "\r\033[K%s %s", p.Bar(30), l)
		r.open = true
		return
	}
	if l != r.last {
		fmt.Fprintln(r.w, l)
		r.last = l
	}
}

func (r *reporter) say(format string, args ...any) {
	r.done()
	fmt.Fprintf(r.w, format+"\n", args...)
	r.last = ""
}

func (r *reporter) done() {
	if r.open {
		fmt.Fprintln(r.w)
		r.open = false
	}
}

func rolloutStatusCmd(fs *flag.FlagSet) runFunc {
	watch := fs.Bool("watch", false, "follow the rollout until every device is Ready or Failed")
	every := fs.Duration("interval", time.Second, "how often to poll the hub with --watch")
	maxFailed := fs.String("max-failed", "", "failure threshold (count or share such as 5%); default the rollout's maxFailed, else 0")
	return func(ctx context.Context, c *cli, args []string) error {
		var th *fleet.Threshold
		if *maxFailed != "" {
			t, err := fleet.ParseThreshold(*maxFailed)
			if err != nil {
				return usagef("--max-failed: %v", err)
			}
			th = &t
		}
		sc, err := c.client()
		if err != nil {
			return err
		}
		defer sc.Close()
		rep := &reporter{w: c.stdout, tty: isTerminal(c.stdout) && c.g.output == ""}
		defer rep.done()
		for {
			cfg, _, err := findConfig(ctx, sc, args[0])
			if err != nil {
				return err
			}
			p, err := statusOf(ctx, sc, cfg)
			if err != nil {
				return err
			}
			limit := fleet.Threshold{}
			if th != nil {
				limit = *th
			} else if plan, _, _ := fleet.RolloutPlan(cfg); plan != nil {
				limit = plan.MaxFailed
			}
			if ok, err := c.emit(p); ok {
				if err != nil {
					return err
				}
			} else {
				rep.show(p)
			}
			if limit.Exceeded(int(p.Failed), int(p.Applied)) {
				rep.done()
				return &rolloutFailed{fmt.Sprintf("%s: %d of %d devices failed, more than %s", p.ID, p.Failed, p.Applied, limit)}
			}
			if !*watch || p.Settled() {
				return nil
			}
			if err := pause(ctx, *every); err != nil {
				return err
			}
		}
	}
}

func rolloutRunCmd(fs *flag.FlagSet) runFunc {
	every := fs.Duration("interval", time.Second, "how often to poll the hub")
	timeout := fs.Duration("timeout", 30*time.Minute, "give up (the rollout stays where it is) after this long")
	return func(ctx context.Context, c *cli, args []string) error {
		sc, err := c.client()
		if err != nil {
			return err
		}
		defer sc.Close()
		rep := &reporter{w: c.stdout, tty: isTerminal(c.stdout)}
		defer rep.done()
		deadline := time.Now().Add(*timeout)
		cfg, _, err := findConfig(ctx, sc, args[0])
		if err != nil {
			return err
		}
		plan, stage, err := fleet.RolloutPlan(cfg)
		if err != nil {
			return err
		}
		if plan == nil {
			return fmt.Errorf("%s has no staged rollout (spec.rollout.stages)", cfg.ID)
		}
		switch cfg.Labels[fleet.LabelRollout] {
		case fleet.RolloutHalted:
			rep.say("resuming %s at stage %d/%d %s (halted: %s)", cfg.ID, stage+1, len(plan.Stages), plan.Stages[stage].Name, cfg.Labels[fleet.LabelReason])
		case fleet.RolloutComplete:
		default:
			if stage > 0 {
				rep.say("resuming %s at stage %d/%d %s", cfg.ID, stage+1, len(plan.Stages), plan.Stages[stage].Name)
			}
		}
		base := fleet.BaseTarget(cfg)
		for {
			cfg, same, err := findConfig(ctx, sc, cfg.ID)
			if err != nil {
				return err
			}
			plan, stage, err = fleet.RolloutPlan(cfg)
			if err != nil {
				return err
			}
			p, err := statusOf(ctx, sc, cfg)
			if err != nil {
				return err
			}
			rep.show(p)
			st := plan.Stages[stage]
			if plan.MaxFailed.Exceeded(int(p.Failed), int(p.Applied)) {
				reason := fmt.Sprintf("stage %s: %d of %d devices failed, more than maxFailed %s", st.Name, p.Failed, p.Applied, plan.MaxFailed)
				if err := setRollout(ctx, sc, cfg.ID, fleet.RolloutHalted, reason, stage, ""); err != nil {
					return err
				}
				rep.say("halted %s at stage %d/%d %s: %d of %d devices failed, more than maxFailed %s; fix them and run again to resume",
					cfg.ID, stage+1, len(plan.Stages), st.Name, p.Failed, p.Applied, plan.MaxFailed)
				return &rolloutFailed{fmt.Sprintf("rollout of %s halted", cfg.ID)}
			}
			if cfg.Labels[fleet.LabelRollout] == fleet.RolloutHalted {
				if err := setRollout(ctx, sc, cfg.ID, fleet.RolloutProgressing, "", stage, ""); err != nil {
					return err
				}
				continue
			}
			evaluated := int(p.Targeted) >= p.Expected
			readyEnough := float64(p.Ready)*100 >= st.MinReady*float64(p.Applied)
			if evaluated && readyEnough && (p.Applied > 0 || p.Expected == 0) {
				if stage == len(plan.Stages)-1 {
					if cfg.Labels[fleet.LabelRollout] != fleet.RolloutComplete {
						if err := setRollout(ctx, sc, cfg.ID, fleet.RolloutComplete, "", stage, ""); err != nil {
							return err
						}
					}
					for _, o := range same {
						if o.ID == cfg.ID {
							continue
						}
						rep.say("waiting for %s to reach the devices of %s", cfg.ID, o.ID)
						if err := retire(ctx, sc, cfg, o, *every, deadline); err != nil {
							return err
						}
						rep.say("deleted configuration %s (replaced by %s)", o.ID, cfg.ID)
					}
					rep.say("rollout of %s complete: %d of %d devices Ready", cfg.ID, p.Ready, p.Applied)
					return nil
				}
				next := stage + 1
				target := fleet.StageTarget(base, plan.Stages, next)
				if err := setRollout(ctx, sc, cfg.ID, fleet.RolloutProgressing, "", next, target); err != nil {
					return err
				}
				rep.say("stage %d/%d %s: %d of %d devices Ready; widening to stage %d/%d %s",
					stage+1, len(plan.Stages), st.Name, p.Ready, p.Applied, next+1, len(plan.Stages), plan.Stages[next].Name)
				continue
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("rollout of %s: timed out at stage %d/%d %s (%s); run again to resume", cfg.ID, stage+1, len(plan.Stages), st.Name, p.Line())
			}
			if err := pause(ctx, *every); err != nil {
				return err
			}
		}
	}
}

// setRollout records the rollout's state in the configuration's labels
// (and, when target is not empty, widens its target), with If-Match so
// that two runs never both move it.
func setRollout(ctx context.Context, sc *iothub.ServiceClient, id, state, reason string, stage int, target string) error {
	cfg, err := sc.GetConfiguration(ctx, id)
	if err != nil {
		return err
	}
	labels := map[string]string{}
	for k, v := range cfg.Labels {
		labels[k] = v
	}
	labels[fleet.LabelRollout] = state
	labels[fleet.LabelStage] = fmt.Sprint(stage)
	if reason != "" {
		if len(reason) > 128 {
			reason = reason[:125] + "..."
		}
		labels[fleet.LabelReason] = reason
	} else {
		delete(labels, fleet.LabelReason)
	}
	cfg.Labels = labels
	if target != "" {
		cfg.TargetCondition = target
	}
	if _, err := sc.UpdateConfiguration(ctx, *cfg); err != nil {
		var se *iothub.ServiceError
		if errors.As(err, &se) && se.StatusCode == 412 {
			return fmt.Errorf("%s changed while the rollout ran (another twinctl?): %w", id, err)
		}
		return err
	}
	return nil
}
