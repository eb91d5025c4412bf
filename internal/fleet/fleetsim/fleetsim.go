// Package fleetsim runs a fleet of lightweight twinlet agents in one
// process, for benchmarks and tests of fleet-wide operations: each device
// is the real IoT Hub device client (MQTT over TLS) and the real reconciler
// with a small set of providers on its own root directory (a temp dir or
// tmpfs). Nothing is faked; only the process is shared.
package fleetsim

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/twinlet/twinlet/internal/agent"
	"github.com/twinlet/twinlet/internal/iothub"
	"github.com/twinlet/twinlet/providers"
	"github.com/twinlet/twinlet/reconciler"
)

// Options configure a fleet.
type Options struct {
	// Dir holds one root and one state directory per device.
	Dir string
	// Addr is the hub's MQTT address (host:port); CAPEM the CA to trust.
	Addr  string
	CAPEM []byte
	// Sections are the provider sections each device runs (for example
	// {"files"}); empty: every registered provider.
	Sections []string
	// Coalesce is the agent's reporting window (default the agent's).
	Coalesce time.Duration
	// Parallel bounds how many devices connect at once (default 32).
	Parallel int
	// Logger; nil discards.
	Logger *slog.Logger
}

// Fleet is a running set of simulated devices. Stop ends it.
type Fleet struct {
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	agents  []*agent.Agent
	roots   []string
	stopped sync.Once
}

// Start builds one agent per connection string and runs them until Stop.
// It returns once every device is connected, or with the first error
// (after stopping the ones already started).
func Start(ctx context.Context, devices []iothub.ConnectionString, o Options) (*Fleet, error) {
	if o.Parallel <= 0 {
		o.Parallel = 32
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	var infos []providers.Info
	for _, id := range o.Sections {
		info, ok := providers.Lookup(id)
		if !ok {
			return nil, fmt.Errorf("fleetsim: no provider %q", id)
		}
		infos = append(infos, info)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	f := &Fleet{cancel: cancel}
	for i, cs := range devices {
		dir := filepath.Join(o.Dir, fmt.Sprintf("d%06d", i))
		a, run, err := build(dir, cs, infos, o)
		if err != nil {
			f.Stop()
			return nil, fmt.Errorf("fleetsim: device %s: %w", cs.DeviceID, err)
		}
		f.agents = append(f.agents, a)
		f.roots = append(f.roots, filepath.Join(dir, "root"))
		f.wg.Add(1)
		go func() { defer f.wg.Done(); run(runCtx) }()
		// Let at most Parallel connections be in flight.
		if i >= o.Parallel {
			if err := waitConnected(ctx, f.agents[i-o.Parallel]); err != nil {
				f.Stop()
				return nil, err
			}
		}
	}
	for _, a := range f.agents {
		if err := waitConnected(ctx, a); err != nil {
			f.Stop()
			return nil, err
		}
	}
	return f, nil
}

// waitConnected polls until the agent's client is connected or ctx ends.
func waitConnected(ctx context.Context, a *agent.Agent) error {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for !a.Client().Connected() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("fleetsim: waiting for devices to connect: %w", ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

func build(dir string, cs iothub.ConnectionString, infos []providers.Info, o Options) (*agent.Agent, func(context.Context), error) {
	root, state := filepath.Join(dir, "root"), filepath.Join(dir, "state")
	for _, d := range []string{root, state} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, nil, err
		}
	}
	var a *agent.Agent
	var mu sync.Mutex
	r, err := reconciler.New(reconciler.Options{Root: root, StateDir: state, Providers: infos, Logger: o.Logger,
		OnReport: func(doc []byte) {
			mu.Lock()
			ag := a
			mu.Unlock()
			if ag != nil {
				ag.Notify(doc)
			}
		}})
	if err != nil {
		return nil, nil, err
	}
	cfg := iothub.DeviceConfig{HostName: cs.HostName, DeviceID: cs.DeviceID, Signer: iothub.KeySigner{Key: cs.SharedAccessKey},
		CAPEM: o.CAPEM, Addr: o.Addr, Logger: o.Logger}
	ag, err := agent.New(r, cfg, agent.Options{StateDir: state, Coalesce: o.Coalesce, Logger: o.Logger})
	if err != nil {
		return nil, nil, err
	}
	mu.Lock()
	a = ag
	mu.Unlock()
	run := func(ctx context.Context) {
		var wg sync.WaitGroup
		wg.Add(2)
		go func() {
			defer wg.Done()
			r.Run(ctx, reconciler.RunOptions{Resync: time.Hour, PolicyPoll: time.Hour})
		}()
		go func() {
			defer wg.Done()
			if err := ag.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
				o.Logger.Error("agent stopped", "device", cs.DeviceID, "err", err)
			}
		}()
		wg.Wait()
	}
	return ag, run, nil
}

// Root is the root directory device i acts on.
func (f *Fleet) Root(i int) string { return f.roots[i] }

// Len is the number of devices.
func (f *Fleet) Len() int { return len(f.agents) }

// Stop stops every device and waits for them.
func (f *Fleet) Stop() {
	f.stopped.Do(func() {
		f.cancel()
		f.wg.Wait()
	})
}
