package extprov

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/twinlet/twinlet/internal/backoff"
	"github.com/twinlet/twinlet/providers"
	"github.com/twinlet/twinlet/providers/plugin"
)

// stopGrace is how long a process has to exit after its stdin closes.
const stopGrace = 2 * time.Second

// client owns the process of one manifest: it starts it on use, keeps it
// for its keep-alive, relaunches it after a failure no sooner than its
// backoff allows, and stops it on close.
type client struct {
	m    *Manifest
	log  *slog.Logger
	opts *Options

	startMu sync.Mutex // one start at a time

	mu        sync.Mutex
	p         *proc
	starting  *proc // a process whose session is opening
	active    int
	idle      *time.Timer
	failures  int       // consecutive failures of the process
	notBefore time.Time // no relaunch before
	last      *Failure  // the last failure, for list and messages
	starts    int
	closed    bool
	stops     sync.WaitGroup // processes being stopped
}

// errClosed is returned by calls after Close.
var errClosed = errors.New("external provider: the agent is stopping")

// session returns a live process, starting one (and opening its session)
// when there is none. The caller holds an active reference until release.
// One start at a time: callers that arrive while a process starts wait
// for its session to open.
func (c *client) session(ctx context.Context) (*proc, error) {
	c.startMu.Lock()
	defer c.startMu.Unlock()
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, errClosed
	}
	if c.idle != nil {
		c.idle.Stop()
		c.idle = nil
	}
	if c.p != nil && c.p.alive() {
		c.active++
		p := c.p
		c.mu.Unlock()
		return p, nil
	}
	if c.p != nil {
		c.reapLocked(c.p)
		c.p = nil
	}
	if now := c.opts.now(); now.Before(c.notBefore) {
		f := *c.last
		f.Message = fmt.Sprintf("%s; relaunched no sooner than %s (backoff after %d failure(s))", f.Message, c.notBefore.UTC().Format(time.RFC3339), c.failures)
		c.mu.Unlock()
		return nil, &f
	}
	p, err := start(c.m, c.log, c.opts.Trace)
	if err != nil {
		c.failedLocked(&Failure{Reason: ReasonCrashed, Message: err.Error()})
		f := c.last
		c.mu.Unlock()
		return nil, f
	}
	c.starts++
	c.starting = p
	c.log.Info("provider started", "pid", p.cmd.Process.Pid, "executable", c.m.Executable)
	c.mu.Unlock()

	err = c.initialize(ctx, p)

	c.mu.Lock()
	defer c.mu.Unlock()
	c.starting = nil
	switch {
	case c.closed: // close reaped it
		return nil, errClosed
	case err != nil:
		var f *Failure
		if !errors.As(err, &f) {
			f = &Failure{Reason: ReasonProtocol, Message: err.Error()}
		}
		c.failedLocked(f)
		c.reapLocked(p)
		return nil, err
	}
	c.p = p
	c.active++
	return p, nil
}

// reapLocked kills a process that is no longer used and waits for it in
// the background (close waits for those too).
func (c *client) reapLocked(p *proc) {
	c.stops.Add(1)
	go func() {
		defer c.stops.Done()
		p.kill()
		<-p.done
	}()
}

// initialize opens the session and checks the provider's protocol version.
func (c *client) initialize(ctx context.Context, p *proc) error {
	raw, err := p.call(ctx, plugin.MethodInitialize, plugin.InitializeParams{
		ProtocolVersion: plugin.ProtocolVersion, AgentVersion: c.opts.AgentVersion, Section: c.m.Section}, nil)
	if err != nil {
		return providerError(plugin.MethodInitialize, err)
	}
	var res plugin.InitializeResult
	if err := json.Unmarshal(raw, &res); err != nil {
		return fmt.Errorf("initialize: result: %v", err)
	}
	major, err := plugin.Major(res.ProtocolVersion)
	if err != nil {
		return fmt.Errorf("initialize: %v", err)
	}
	if major != plugin.ProtocolMajor {
		return &versionError{fmt.Sprintf("the provider speaks protocol version %s; this agent speaks version %d only (update the agent or the provider)", res.ProtocolVersion, plugin.ProtocolMajor)}
	}
	return nil
}

// versionError is a provider that speaks another major version.
type versionError struct{ msg string }

func (e *versionError) Error() string { return e.msg }

// failedLocked counts a failure and sets the relaunch backoff.
func (c *client) failedLocked(f *Failure) {
	c.failures++
	c.last = f
	c.notBefore = c.opts.now().Add(backoff.Delay(c.opts.RestartBackoff, c.opts.MaxRestartBackoff, c.failures))
	c.log.Warn("provider failed", "reason", f.Reason, "err", f.Error(), "failures", c.failures)
}

// release ends a call on p: a failure of the process counts against the
// backoff; the last active call arms the keep-alive timer.
func (c *client) release(p *proc, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.active--
	var f *Failure
	switch {
	case errors.As(err, &f) && c.p == p:
		c.p = nil
		c.failedLocked(f)
		c.reapLocked(p)
	case err == nil:
		c.failures = 0
	}
	if c.active > 0 || c.p != p || c.closed {
		return
	}
	if c.m.keepAlive <= 0 {
		c.stopLocked()
		return
	}
	c.idle = time.AfterFunc(c.m.keepAlive, c.expire)
}

// expire stops an idle process.
func (c *client) expire() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.active == 0 && c.idle != nil {
		c.idle = nil
		c.stopLocked()
	}
}

func (c *client) stopLocked() {
	if c.p == nil {
		return
	}
	p := c.p
	c.p = nil
	c.stops.Add(1)
	go func() {
		defer c.stops.Done()
		p.stop(stopGrace)
		c.log.Debug("provider stopped", "pid", p.cmd.Process.Pid)
	}()
}

// close stops the process and waits for it; calls after close fail.
func (c *client) close() {
	c.mu.Lock()
	c.closed = true
	if c.idle != nil {
		c.idle.Stop()
		c.idle = nil
	}
	if c.starting != nil {
		c.reapLocked(c.starting)
	}
	c.stopLocked()
	c.mu.Unlock()
	c.stops.Wait()
}

// call runs one protocol call, starting the process when needed, and maps
// the provider's error objects to the providers package's errors.
func (c *client) call(ctx context.Context, method string, params, result any, progress func(plugin.ProgressParams)) error {
	p, err := c.session(ctx)
	if err != nil {
		return err // it names the step that failed (initialize, start)
	}
	raw, err := p.call(ctx, method, params, progress)
	c.release(p, err)
	if err != nil {
		return providerError(method, err)
	}
	if result != nil {
		if err := json.Unmarshal(raw, result); err != nil {
			// A result of the wrong shape is the provider's bug, not the
			// process's: the session goes on.
			return &Failure{Reason: ReasonProtocol, Message: fmt.Sprintf("protocol: %s: result: %v", method, err)}
		}
	}
	return nil
}

// errStale marks a call that referred to an observation or plan of an
// earlier provider process.
var errStale = errors.New("stale handle")

// providerError turns a protocol error object into the error the
// reconciler knows: Invalid (terminal), a method's status, or transient.
func providerError(method string, err error) error {
	var pe *plugin.Error
	if !errors.As(err, &pe) {
		return err
	}
	switch pe.Code {
	case plugin.CodeInvalid:
		var d plugin.InvalidData
		if json.Unmarshal(pe.Data, &d) == nil && len(d.Errors) > 0 {
			inv := &providers.InvalidError{}
			for _, fe := range d.Errors {
				inv.Errors = append(inv.Errors, providers.FieldError(fe))
			}
			return inv
		}
		return providers.Invalid("", "%s", pe.Message)
	case plugin.CodeMethodError:
		var d plugin.MethodErrorData
		_ = json.Unmarshal(pe.Data, &d)
		if d.Status == 0 {
			d.Status = 500
		}
		return &providers.MethodError{Status: d.Status, Message: pe.Message}
	case plugin.CodeStale:
		return fmt.Errorf("%s: %s: %w", method, pe.Message, errStale)
	case -32700, -32600, -32601, -32602:
		return &Failure{Reason: ReasonProtocol, Message: fmt.Sprintf("protocol: %s: %s (code %d)", method, pe.Message, pe.Code)}
	}
	return fmt.Errorf("%s: %s", method, pe.Message)
}
