// Package reboot provides the "reboot" section: the device's reboot policy.
//
//	"reboot": {
//	  "at": "2026-12-24T03:00:00+01:00",
//	  "daily": "04:30",
//	  "maintenanceWindow": { "start": "02:00", "duration": "2h", "days": ["Sat", "Sun"] },
//	  "whenRequired": "window"
//	}
//
// A reboot happens at a single scheduled time (at), every day at a time
// (daily), when the direct method reboot.now asks (after its delay), and,
// when a provider's change latched "reboot required", at the next opening
// of the maintenance window (whenRequired: window, the default when a
// window is set), at once (immediately) or never (the default without a
// window: the latch is only reported). Times of day are in the agent's
// local time zone.
//
// The provider never sleeps: it asks the runtime to reconcile it again
// when the next reboot is due (Env.Requeue). Before a reboot it records
// the request time, reason and boot id in <state-dir>/reboot.json
// (atomically); after the boot (the boot id changed) the reboot is
// reported done with its duration, and the runtime's latch clears. On a
// sandbox root a reboot is recorded and reported, never executed; on "/"
// it runs `systemctl reboot --message=…`, or `shutdown -r now …` where
// that fails.
package reboot

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/twinlet/twinlet/internal/atomicfile"
	"github.com/twinlet/twinlet/providers"
)

// ID is the section id.
const ID = "reboot"

// StateFile is the provider's record in the state directory.
const StateFile = "reboot.json"

// DefaultCatchUp is how late a scheduled or daily reboot that the agent
// missed (it was not running) is still carried out.
const DefaultCatchUp = time.Hour

// LatchInterval is the least time between a reboot twinlet carried out and
// the next one a latched "reboot required" asks for, so that a change that
// latches again after every boot cannot reboot the device in a loop.
const LatchInterval = 30 * time.Minute

// Values of whenRequired.
const (
	WhenWindow      = "window"
	WhenImmediately = "immediately"
	WhenNever       = "never"
)

func init() {
	providers.Register(providers.Info{ID: ID, Kind: providers.Object, New: New, RebootPolicy: true,
		Timeout: time.Minute, Methods: map[string]providers.Method{"now": nowMethod}})
}

// New returns the reboot provider.
func New() providers.Provider { return Provider{} }

// Provider implements the reboot section.
type Provider struct{}

// Clock is a time of day.
type Clock struct{ Hour, Minute int }

func (c Clock) String() string { return fmt.Sprintf("%02d:%02d", c.Hour, c.Minute) }

// on returns the clock's time on the day of t, in t's location.
func (c Clock) on(t time.Time, days int) time.Time {
	y, m, d := t.Date()
	return time.Date(y, m, d+days, c.Hour, c.Minute, 0, 0, t.Location())
}

// Window is a maintenance window.
type Window struct {
	Start    Clock
	Duration time.Duration
	// Days the window opens on; all false means every day.
	Days [7]bool
}

func (w Window) opensOn(t time.Time) bool {
	for _, d := range w.Days {
		if d {
			return w.Days[t.Weekday()]
		}
	}
	return true
}

// openAt reports whether the window is open at now, and the start of the
// opening it is in.
func (w Window) openAt(now time.Time) (time.Time, bool) {
	for k := 0; k >= -1; k-- {
		s := w.Start.on(now, k)
		if w.opensOn(s) && !now.Before(s) && now.Before(s.Add(w.Duration)) {
			return s, true
		}
	}
	return time.Time{}, false
}

// next returns the next opening after now.
func (w Window) next(now time.Time) time.Time {
	for k := 0; k <= 8; k++ {
		if s := w.Start.on(now, k); s.After(now) && w.opensOn(s) {
			return s
		}
	}
	return time.Time{}
}

// Spec is the decoded section.
type Spec struct {
	At           *time.Time
	Daily        *Clock
	Window       *Window
	WhenRequired string
	CatchUp      time.Duration
}

var dayNames = map[string]time.Weekday{"Sun": time.Sunday, "Mon": time.Monday, "Tue": time.Tuesday, "Wed": time.Wednesday, "Thu": time.Thursday, "Fri": time.Friday, "Sat": time.Saturday}

func parseClock(s string) (Clock, error) {
	h, m, ok := strings.Cut(s, ":")
	hh, err1 := strconv.Atoi(h)
	mm, err2 := strconv.Atoi(m)
	if !ok || len(h) != 2 || len(m) != 2 || err1 != nil || err2 != nil || hh > 23 || mm > 59 || hh < 0 || mm < 0 {
		return Clock{}, fmt.Errorf("%q is not a time of day HH:MM (00:00 to 23:59)", s)
	}
	return Clock{hh, mm}, nil
}

// Decode implements providers.Provider.
func (Provider) Decode(env *providers.Env, raw json.RawMessage) (providers.Spec, error) {
	var in struct {
		At     string `json:"at"`
		Daily  string `json:"daily"`
		Window *struct {
			Start    string   `json:"start"`
			Duration string   `json:"duration"`
			Days     []string `json:"days"`
		} `json:"maintenanceWindow"`
		WhenRequired string `json:"whenRequired"`
		CatchUp      string `json:"catchUp"`
	}
	errs := &providers.InvalidError{}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		return nil, providers.Invalid("", "%v", err)
	}
	spec := Spec{CatchUp: DefaultCatchUp}
	if in.At != "" {
		t, err := time.Parse(time.RFC3339, in.At)
		if err != nil {
			errs.Add("/at", "%q is not an RFC 3339 time (2026-12-24T03:00:00+01:00)", in.At)
		} else {
			spec.At = &t
		}
	}
	if in.Daily != "" {
		c, err := parseClock(in.Daily)
		if err != nil {
			errs.Add("/daily", "%v", err)
		} else {
			spec.Daily = &c
		}
	}
	if in.Window != nil {
		w := &Window{}
		c, err := parseClock(in.Window.Start)
		if err != nil {
			errs.Add("/maintenanceWindow/start", "%v", err)
		}
		w.Start = c
		d, err := time.ParseDuration(in.Window.Duration)
		switch {
		case err != nil:
			errs.Add("/maintenanceWindow/duration", "%q is not a duration (90m, 2h)", in.Window.Duration)
		case d < time.Minute || d > 24*time.Hour:
			errs.Add("/maintenanceWindow/duration", "must be 1m to 24h")
		}
		w.Duration = d
		for i, name := range in.Window.Days {
			wd, ok := dayNames[name]
			if !ok {
				errs.Add(fmt.Sprintf("/maintenanceWindow/days/%d", i), "%q is not a day (Mon, Tue, Wed, Thu, Fri, Sat, Sun)", name)
				continue
			}
			w.Days[wd] = true
		}
		spec.Window = w
	}
	switch in.WhenRequired {
	case "":
		spec.WhenRequired = WhenNever
		if in.Window != nil {
			spec.WhenRequired = WhenWindow
		}
	case WhenWindow:
		if in.Window == nil {
			errs.Add("/whenRequired", "window needs a maintenanceWindow")
		}
		spec.WhenRequired = in.WhenRequired
	case WhenImmediately, WhenNever:
		spec.WhenRequired = in.WhenRequired
	default:
		errs.Add("/whenRequired", "must be window, immediately or never")
	}
	if in.CatchUp != "" {
		d, err := time.ParseDuration(in.CatchUp)
		if err != nil || d < 0 || d > 7*24*time.Hour {
			errs.Add("/catchUp", "%q is not a duration from 0s to 168h", in.CatchUp)
		}
		spec.CatchUp = d
	}
	if err := errs.OrNil(); err != nil {
		return nil, err
	}
	return spec, nil
}

// Request is a reboot.now waiting for its time.
type Request struct {
	DueAt       time.Time `json:"dueAt"`
	RequestedAt time.Time `json:"requestedAt"`
	Reason      string    `json:"reason"`
}

// Reboot is one reboot twinlet carried out (or recorded, in a sandbox).
type Reboot struct {
	RequestedAt time.Time `json:"requestedAt"`
	Reason      string    `json:"reason"`
	// By says what asked: "reboot.now", "at", "daily", or the sections
	// whose latched "reboot required" it serves.
	By []string `json:"by"`
	// BootID is the boot the reboot ended.
	BootID string `json:"bootId"`
	// Recorded is set on a sandbox root: the reboot was recorded, never
	// executed. Executed is set once the reboot command succeeded.
	Recorded bool     `json:"recorded,omitempty"`
	Executed bool     `json:"executed,omitempty"`
	Command  []string `json:"command,omitempty"`
	// Set once the next boot is seen.
	CompletedAt     *time.Time `json:"completedAt,omitempty"`
	NewBootID       string     `json:"newBootId,omitempty"`
	DurationSeconds *int64     `json:"durationSeconds,omitempty"`
}

// recMu serializes the read-modify-write of the record between Apply and
// reboot.now, which may run at the same time. It is held for a few file
// operations, never across a command.
var recMu sync.Mutex

// record is <state-dir>/reboot.json.
type record struct {
	Request   *Request `json:"request,omitempty"`
	Rebooting *Reboot  `json:"rebooting,omitempty"`
	Last      *Reboot  `json:"last,omitempty"`
}

func loadRecord(env *providers.Env) (*record, error) {
	b, err := os.ReadFile(filepath.Join(env.StateDir, StateFile))
	if errors.Is(err, fs.ErrNotExist) {
		return &record{}, nil
	}
	if err != nil {
		return nil, err
	}
	rec := &record{}
	if err := json.Unmarshal(b, rec); err != nil {
		// A corrupt record must not keep the device from rebooting ever
		// again: start over.
		env.Logger.Warn("reboot record is corrupt; starting over", "file", filepath.Join(env.StateDir, StateFile), "err", err)
		return &record{}, nil
	}
	return rec, nil
}

func saveRecord(env *providers.Env, rec *record) error {
	b, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(env.StateDir, 0o700); err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(env.StateDir, StateFile), append(b, '\n'), 0o600)
}

// Pending is the reboot that is waiting or under way.
type Pending struct {
	// State is Scheduled (waiting for its time or window), Rebooting (the
	// command ran; waiting for the boot) or Recorded (a sandbox: recorded
	// instead of executed, waiting for the boot id to change).
	State  string   `json:"state"`
	Reason string   `json:"reason"`
	By     []string `json:"by,omitempty"`
	At     string   `json:"at,omitempty"`
	Since  string   `json:"since,omitempty"`
}

// Scheduled is what the single scheduled time came to.
type Scheduled struct {
	At string `json:"at"`
	// State is Scheduled, Done (the device booted since) or Missed (the
	// agent was not running within catchUp of it).
	State string `json:"state"`
}

// Observed is what the provider reports.
type Observed struct {
	BootID       string `json:"bootId"`
	LastBootTime string `json:"lastBootTime,omitempty"`
	// RebootRequired and RequiredBy are the runtime's latch: the sections
	// whose applied changes asked for a reboot.
	RebootRequired bool       `json:"rebootRequired"`
	RequiredBy     []string   `json:"requiredBy,omitempty"`
	WhenRequired   string     `json:"whenRequired"`
	Pending        *Pending   `json:"pending,omitempty"`
	NextReboot     string     `json:"nextReboot,omitempty"`
	NextReason     string     `json:"nextReason,omitempty"`
	WindowOpen     *bool      `json:"windowOpen,omitempty"`
	NextWindow     string     `json:"nextWindow,omitempty"`
	Scheduled      *Scheduled `json:"scheduled,omitempty"`
	LastReboot     *Reboot    `json:"lastReboot,omitempty"`

	rec      *record
	complete *Reboot // rec.Rebooting, completed by the boot seen now
	due      *due
}

// due is a reboot to carry out now.
type due struct {
	reason string
	by     []string
	bootID string
	retry  bool // a reboot whose command never succeeded in this boot
}

const rfc = time.RFC3339

// bootInfo reads the boot id and the boot time under the root; "" and
// the zero time when they cannot be read (a sandbox).
func bootInfo(env *providers.Env, now time.Time) (string, time.Time, error) {
	root, err := env.OpenRoot()
	if err != nil {
		return "", time.Time{}, err
	}
	defer root.Close()
	id, err := root.ReadFileIfExists("proc/sys/kernel/random/boot_id")
	if err != nil {
		return "", time.Time{}, err
	}
	var boot time.Time
	stat, _ := root.ReadFileIfExists("proc/stat")
	for _, line := range strings.Split(string(stat), "\n") {
		if v, ok := strings.CutPrefix(line, "btime "); ok {
			if n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil {
				boot = time.Unix(n, 0)
			}
		}
	}
	if boot.IsZero() {
		up, _ := root.ReadFileIfExists("proc/uptime")
		if f := strings.Fields(string(up)); len(f) > 0 {
			if s, err := strconv.ParseFloat(f[0], 64); err == nil {
				boot = now.Add(-time.Duration(s * float64(time.Second))).Truncate(time.Second)
			}
		}
	}
	return strings.TrimSpace(string(id)), boot, nil
}

// Observe implements providers.Provider. It also asks the runtime to come
// back when the next reboot is due.
func (Provider) Observe(ctx context.Context, env *providers.Env, spec providers.Spec) (providers.Observed, error) {
	s := spec.(Spec)
	now := env.Now()
	bootID, bootTime, err := bootInfo(env, now)
	if err != nil {
		return nil, fmt.Errorf("observe reboot: %w", err)
	}
	rec, err := loadRecord(env)
	if err != nil {
		return nil, fmt.Errorf("observe reboot: %w", err)
	}
	o := &Observed{BootID: bootID, WhenRequired: s.WhenRequired, rec: rec, LastReboot: rec.Last}
	if !bootTime.IsZero() {
		o.LastBootTime = bootTime.UTC().Format(rfc)
	}
	o.RequiredBy = env.RebootRequiredBy()
	o.RebootRequired = len(o.RequiredBy) > 0

	// since: the last time the device booted or twinlet rebooted it; a
	// schedule that lies before it has been served.
	since := bootTime
	rebooting := rec.Rebooting
	if rebooting != nil && rebooting.BootID != bootID {
		done := *rebooting
		at := now
		if bootTime.After(done.RequestedAt) {
			at = bootTime
		}
		d := int64(at.Sub(done.RequestedAt).Round(time.Second) / time.Second)
		done.CompletedAt, done.NewBootID, done.DurationSeconds = &at, bootID, &d
		o.complete, o.LastReboot = &done, &done
		rebooting = nil
	}
	for _, r := range []*Reboot{rec.Last, rec.Rebooting} {
		if r != nil && r.RequestedAt.After(since) {
			since = r.RequestedAt
		}
	}

	var next time.Time
	var nextReason string
	consider := func(t time.Time, reason string) {
		if next.IsZero() || t.Before(next) {
			next, nextReason = t, reason
		}
	}
	var d *due
	ask := func(reason string, by ...string) {
		if d == nil {
			d = &due{reason: reason, bootID: bootID}
		}
		d.by = append(d.by, by...)
	}
	if rebooting != nil {
		state := "Rebooting"
		if rebooting.Recorded {
			state = "Recorded"
		}
		o.Pending = &Pending{State: state, Reason: rebooting.Reason, By: rebooting.By, Since: rebooting.RequestedAt.UTC().Format(rfc)}
		if !rebooting.Recorded && !rebooting.Executed {
			// The agent stopped between recording and running the
			// command: run it again.
			d = &due{reason: rebooting.Reason, by: rebooting.By, bootID: bootID, retry: true}
		}
	} else {
		if r := rec.Request; r != nil {
			if !now.Before(r.DueAt) {
				ask(r.Reason, "reboot.now")
			} else {
				consider(r.DueAt, r.Reason)
			}
		}
		if s.At != nil {
			at := *s.At
			sch := &Scheduled{At: at.UTC().Format(rfc), State: "Scheduled"}
			switch {
			case at.After(now):
				consider(at, "scheduled for "+at.Format(rfc))
			case !at.After(since):
				sch.State = "Done"
			case now.Sub(at) <= s.CatchUp:
				ask("scheduled for "+at.Format(rfc), "at")
			default:
				sch.State = "Missed"
			}
			o.Scheduled = sch
		}
		if s.Daily != nil {
			last := s.Daily.on(now, 0)
			if last.After(now) {
				last = s.Daily.on(now, -1)
			}
			if last.After(since) && now.Sub(last) <= s.CatchUp {
				ask("daily at "+s.Daily.String(), "daily")
			}
			nt := s.Daily.on(now, 0)
			if !nt.After(now) {
				nt = s.Daily.on(now, 1)
			}
			consider(nt, "daily at "+s.Daily.String())
		}
		if s.Window != nil {
			_, open := s.Window.openAt(now)
			o.WindowOpen = &open
			o.NextWindow = s.Window.next(now).UTC().Format(rfc)
		}
		if o.RebootRequired {
			reason := "required by " + strings.Join(o.RequiredBy, ", ")
			// A change that latches again after every boot must not
			// reboot the device in a loop.
			guard := time.Time{}
			if rec.Last != nil {
				guard = rec.Last.RequestedAt.Add(LatchInterval)
			}
			switch {
			case s.WhenRequired == WhenNever:
			case now.Before(guard):
				consider(guard, reason+" (not sooner than "+LatchInterval.String()+" after the last reboot)")
			case s.WhenRequired == WhenImmediately:
				ask(reason, o.RequiredBy...)
			case *o.WindowOpen:
				ask(reason+" (maintenance window)", o.RequiredBy...)
			default:
				consider(s.Window.next(now), reason+" (maintenance window)")
			}
		}
		if d != nil {
			o.Pending = &Pending{State: "Due", Reason: d.reason, By: d.by, At: now.UTC().Format(rfc)}
		} else if !next.IsZero() {
			o.Pending = &Pending{State: "Scheduled", Reason: nextReason, At: next.UTC().Format(rfc)}
		}
	}
	o.due = d
	if !next.IsZero() {
		o.NextReboot, o.NextReason = next.UTC().Format(rfc), nextReason
		env.Requeue(next.Sub(now))
	}
	return o, nil
}

// op is what Apply does.
type op struct {
	complete *Reboot
	reboot   *due
}

// Plan implements providers.Provider.
func (Provider) Plan(spec providers.Spec, observed providers.Observed) ([]providers.Change, error) {
	o := observed.(*Observed)
	var out []providers.Change
	if c := o.complete; c != nil {
		out = append(out, providers.Change{Action: providers.Update, Item: "lastReboot",
			Before: "rebooting since " + c.RequestedAt.UTC().Format(rfc),
			After:  fmt.Sprintf("done: booted %s after %ds", c.NewBootID, *c.DurationSeconds), Data: op{complete: c}})
	}
	if d := o.due; d != nil {
		after := "reboot now: " + d.reason
		if d.retry {
			after += " (again: the command did not run)"
		}
		before := "running"
		if o.LastBootTime != "" {
			before += " since " + o.LastBootTime
		}
		out = append(out, providers.Change{Action: providers.Update, Item: "reboot", Before: before, After: after, Data: op{reboot: d}})
	}
	return out, nil
}

// Apply implements providers.Provider.
func (Provider) Apply(ctx context.Context, env *providers.Env, c providers.Change) error {
	o, ok := c.Data.(op)
	if !ok {
		return fmt.Errorf("apply reboot/%s: not a change of this provider", c.Item)
	}
	recMu.Lock()
	locked := true
	defer func() {
		if locked {
			recMu.Unlock()
		}
	}()
	rec, err := loadRecord(env)
	if err != nil {
		return fmt.Errorf("apply reboot: %w", err)
	}
	if o.complete != nil {
		if rec.Rebooting == nil || rec.Rebooting.BootID != o.complete.BootID {
			return nil // recorded already
		}
		rec.Last, rec.Rebooting = o.complete, nil
		if err := saveRecord(env, rec); err != nil {
			return fmt.Errorf("apply reboot: record the completed reboot: %w", err)
		}
		env.Logger.Info("rebooted", "reason", o.complete.Reason, "seconds", *o.complete.DurationSeconds)
		return nil
	}
	d := o.reboot
	if r := rec.Rebooting; r != nil && r.BootID == d.bootID && (r.Recorded || r.Executed) {
		return nil // done in this boot already
	}
	// Record first, crash safely: after the boot the record says what
	// was asked and when.
	r := &Reboot{RequestedAt: env.Now(), Reason: d.reason, By: d.by, BootID: d.bootID, Recorded: !env.IsHostRoot()}
	if old := rec.Rebooting; d.retry && old != nil {
		r.RequestedAt = old.RequestedAt
	}
	msg := "twinlet: " + d.reason
	if env.IsHostRoot() {
		r.Command = []string{"systemctl", "reboot", "--message=" + msg}
	}
	rec.Rebooting, rec.Request = r, nil
	if err := saveRecord(env, rec); err != nil {
		return fmt.Errorf("apply reboot: record the reboot: %w", err)
	}
	recMu.Unlock()
	locked = false
	if r.Recorded {
		env.Logger.Warn("reboot recorded, not executed (sandbox root)", "root", env.Root, "reason", d.reason)
		return nil
	}
	env.Logger.Warn("rebooting", "reason", d.reason, "by", strings.Join(d.by, ","))
	if _, err := env.Runner.Run(ctx, r.Command[0], r.Command[1:]...); err != nil {
		// Without systemd as init (or a systemctl without --message):
		// shutdown(8).
		fallback := []string{"shutdown", "-r", "now", msg}
		if _, err2 := env.Runner.Run(ctx, fallback[0], fallback[1:]...); err2 != nil {
			return fmt.Errorf("apply reboot: %w; %w", err, err2)
		}
		r.Command = fallback
	}
	recMu.Lock()
	defer recMu.Unlock()
	if rec, err = loadRecord(env); err != nil {
		return fmt.Errorf("apply reboot: %w", err)
	}
	if rec.Rebooting == nil {
		rec.Rebooting = r
	}
	rec.Rebooting.Executed, rec.Rebooting.Command = true, r.Command
	if err := saveRecord(env, rec); err != nil {
		return fmt.Errorf("apply reboot: record the reboot: %w", err)
	}
	return nil
}

// CloudScope implements providers.CloudScoper: the rules' Allow and Deny
// globs apply to the section's fields (at, daily, maintenanceWindow,
// whenRequired, catchUp); the name "now" stands for the direct method
// reboot.now, which obeys the same rules. By default the twin may do all.
func (Provider) CloudScope(rules providers.ScopeRules, twin json.RawMessage) []providers.FieldError {
	var section map[string]json.RawMessage
	if json.Unmarshal(twin, &section) != nil {
		return nil
	}
	var out []providers.FieldError
	names := make([]string, 0, len(section))
	for k := range section {
		if !providers.ReservedKeys[k] {
			names = append(names, k)
		}
	}
	sort.Strings(names)
	for _, k := range names {
		if why, no := rules.Forbids(k, '/'); no {
			out = append(out, providers.FieldError{Pointer: "/" + k, Message: why})
		}
	}
	return out
}
