package main

import (
	"context"
	"flag"
	"fmt"
	"time"

	"github.com/twinlet/twinlet/internal/iothub"
)

func init() {
	register(&command{name: "apply", args: "-f DIR", nargs: 0, setup: applyCmd})
	register(&command{name: "diff", args: "-f DIR", nargs: 0, setup: diffCmd})
}

// fleetFlags are the flags of apply and diff.
type fleetFlags struct {
	dir string
}

func (f *fleetFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.dir, "f", "", "the fleet repository: a directory of FleetConfig and DeviceConfig YAML files")
}

func (f *fleetFlags) check(cmd string) error {
	if f.dir == "" {
		return usagef("%s: -f DIR (the fleet repository) is required", cmd)
	}
	return nil
}

func applyCmd(fs *flag.FlagSet) runFunc {
	var ff fleetFlags
	ff.register(fs)
	prune := fs.Bool("prune", false, "delete managed configurations whose FleetConfig left the repository")
	dryRun := fs.Bool("dry-run", false, "print what would change and send nothing")
	wait := fs.Duration("wait", 5*time.Minute, "how long to wait for new content to reach the devices of the content it replaces")
	every := fs.Duration("interval", time.Second, "how often to poll the hub while waiting")
	return func(ctx context.Context, c *cli, _ []string) error {
		if err := ff.check("apply"); err != nil {
			return err
		}
		repo, err := loadRepo(ff.dir)
		if err != nil {
			return err
		}
		sc, err := c.client()
		if err != nil {
			return err
		}
		defer sc.Close()
		p, err := planFleet(ctx, sc, repo)
		if err != nil {
			return err
		}
		if *dryRun {
			if p.empty() {
				fmt.Fprintf(c.stdout, "the hub matches %s\n", ff.dir)
				return nil
			}
			p.render(c.stdout, *prune)
			fmt.Fprintln(c.stdout, "dry run: nothing sent")
			return nil
		}
		if p.empty() {
			fmt.Fprintf(c.stdout, "the hub matches %s\n", ff.dir)
			return nil
		}
		// The hub checks every query before anything is written.
		for _, cr := range p.creates {
			if err := testQueries(ctx, sc, cr.want, cr.cfg.Pos); err != nil {
				return err
			}
		}
		for _, u := range p.updates {
			if err := testQueries(ctx, sc, u.want, u.want.ID); err != nil {
				return err
			}
		}
		// Tags first: they decide which configurations reach a device.
		for _, d := range p.devices {
			if _, err := sc.PatchTwin(ctx, d.dev.ID, d.patch, ""); err != nil {
				return fmt.Errorf("%s: device %s: %w", d.dev.Pos, d.dev.ID, err)
			}
			fmt.Fprintf(c.stdout, "patched device %s (%d change(s))\n", d.dev.ID, len(d.changes))
		}
		created := map[string]*iothub.Configuration{}
		for _, cr := range p.creates {
			out, err := sc.CreateConfiguration(ctx, *cr.want)
			if err != nil {
				return fmt.Errorf("%s: %w", cr.cfg.Pos, err)
			}
			created[out.ID] = out
			fmt.Fprintf(c.stdout, "created configuration %s (priority %d, target %s)\n", out.ID, out.Priority, out.TargetCondition)
		}
		for _, u := range p.updates {
			if _, err := sc.UpdateConfiguration(ctx, *u.want); err != nil {
				return err
			}
			fmt.Fprintf(c.stdout, "updated configuration %s: %d change(s)\n", u.want.ID, len(u.changes))
		}
		deadline := time.Now().Add(*wait)
		for _, r := range p.retires {
			if r.waitRollout {
				fmt.Fprintf(c.stdout, "kept configuration %s until the rollout of %s completes (twinctl rollout run)\n", r.old.ID, r.newID)
				continue
			}
			newCfg := created[r.newID]
			if newCfg == nil {
				newCfg = p.current[r.newID]
			}
			fmt.Fprintf(c.stdout, "waiting for %s to reach the devices of %s\n", r.newID, r.old.ID)
			if err := retire(ctx, sc, newCfg, r.old, *every, deadline); err != nil {
				return err
			}
			fmt.Fprintf(c.stdout, "deleted configuration %s (replaced by %s)\n", r.old.ID, r.newID)
		}
		for _, e := range p.extra {
			if !*prune {
				fmt.Fprintf(c.stdout, "left configuration %s (not in the repository; --prune deletes it)\n", e.ID)
				continue
			}
			if err := sc.DeleteConfiguration(ctx, e.ID, ""); err != nil && !iothub.IsNotFound(err) {
				return err
			}
			fmt.Fprintf(c.stdout, "deleted configuration %s (not in the repository)\n", e.ID)
		}
		return nil
	}
}

// testQueries has the hub check a configuration's target condition and
// metric queries.
func testQueries(ctx context.Context, sc *iothub.ServiceClient, cfg *iothub.Configuration, where string) error {
	res, err := sc.TestQueries(ctx, cfg.TargetCondition, cfg.Metrics.Queries)
	if err != nil {
		return err
	}
	if res.OK() {
		return nil
	}
	if res.TargetConditionError != "" {
		return fmt.Errorf("%s: targetCondition %q: %s; nothing sent", where, cfg.TargetCondition, res.TargetConditionError)
	}
	for _, k := range sortedKeys(res.CustomMetricQueryErrors) {
		if e := res.CustomMetricQueryErrors[k]; e != "" {
			return fmt.Errorf("%s: metric %s: %s; nothing sent", where, k, e)
		}
	}
	return nil
}

// differsError makes diff exit 2 after printing the diff.
type differsError struct{}

func (differsError) Error() string { return "" }
func (differsError) ExitCode() int { return 2 }

func diffCmd(fs *flag.FlagSet) runFunc {
	var ff fleetFlags
	ff.register(fs)
	return func(ctx context.Context, c *cli, _ []string) error {
		if err := ff.check("diff"); err != nil {
			return err
		}
		repo, err := loadRepo(ff.dir)
		if err != nil {
			return err
		}
		sc, err := c.client()
		if err != nil {
			return err
		}
		defer sc.Close()
		p, err := planFleet(ctx, sc, repo)
		if err != nil {
			return err
		}
		if p.empty() {
			fmt.Fprintf(c.stdout, "the hub matches %s\n", ff.dir)
			return nil
		}
		p.render(c.stdout, false)
		return differsError{}
	}
}
