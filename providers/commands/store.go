package commands

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/twinlet/twinlet/internal/atomicfile"
)

// The records of runs live in <state>/commands/results.json, written
// atomically under an exclusive lock of <state>/commands/lock. A run is
// recorded (Running, with the agent process that owns it) before its
// process starts, and its result replaces the record when it ends; a
// commandId that has a record is never run again. A Running record whose
// owner is gone was cut off by a kill: it is reported Interrupted, and
// written so by the next change of the file.

const (
	storeDir  = "commands"
	storeFile = "results.json"
	lockFile  = "lock"
	// DefaultKeep is how many results are kept with their output.
	DefaultKeep = 50
	// seenMax is how many commandIds are remembered after their results
	// were dropped, so that an old request is still never run again.
	seenMax = 4096
)

// Record is what is kept of one run.
type Record struct {
	CommandID string `json:"commandId"`
	Name      string `json:"name"`
	// Origin says who asked: twin (or local) for a run of the section's
	// runs, method for commands.run.
	Origin string `json:"origin"`
	Result
	// DurationMs is the run's duration in milliseconds.
	DurationMs *int64 `json:"durationMs,omitempty"`
	// RequestTime is when commands.run accepted a Pending run.
	RequestTime *time.Time `json:"requestTime,omitempty"`
	// EndTime is when the run ended (or was found interrupted).
	EndTime *time.Time `json:"endTime,omitempty"`
	// Owner is the agent process running it, while Running.
	Owner *Owner `json:"owner,omitempty"`
}

// Owner identifies an agent process across pid reuse.
type Owner struct {
	PID   int    `json:"pid"`
	Start uint64 `json:"start"` // start time in clock ticks after boot
	Boot  string `json:"boot"`  // the boot id
}

type seenID struct {
	CommandID string `json:"commandId"`
	State     string `json:"state"`
}

type storeDoc struct {
	Format  int       `json:"format"`
	Results []*Record `json:"results"`
	Seen    []seenID  `json:"seen,omitempty"`
}

// store is the results file of one state directory.
type store struct {
	dir  string
	keep int
}

func newStore(stateDir string, keep int) *store {
	if keep <= 0 {
		keep = DefaultKeep
	}
	return &store{dir: filepath.Join(stateDir, storeDir), keep: keep}
}

// errSeen says a commandId has a record already.
var errSeen = errors.New("commandId already used")

// load reads the file; a missing file is empty.
func (s *store) load() (*storeDoc, error) {
	b, err := os.ReadFile(filepath.Join(s.dir, storeFile))
	if errors.Is(err, os.ErrNotExist) {
		return &storeDoc{Format: 1}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("command results: %w", err)
	}
	var doc storeDoc
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("command results %s: %w", filepath.Join(s.dir, storeFile), err)
	}
	return &doc, nil
}

// update changes the file under the lock: f sees the current records and
// may return an error to write nothing. Records of dead owners become
// Interrupted, and old results beyond keep are dropped (their ids stay
// remembered).
func (s *store) update(f func(doc *storeDoc) error) error {
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return fmt.Errorf("command results: %w", err)
	}
	lf, err := os.OpenFile(filepath.Join(s.dir, lockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("command results: %w", err)
	}
	defer lf.Close()
	if err := syscall.Flock(int(lf.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("command results: lock: %w", err)
	}
	defer syscall.Flock(int(lf.Fd()), syscall.LOCK_UN)
	doc, err := s.load()
	if err != nil {
		// A torn file cannot happen (atomic writes); a corrupt one is an
		// error, never silently replaced: its ids would run again.
		return err
	}
	if err := f(doc); err != nil {
		return err
	}
	now := time.Now().UTC()
	for _, r := range doc.Results {
		if r.State == Running && !r.Owner.alive() {
			markInterrupted(r, now)
		}
	}
	// Drop the oldest finished results beyond keep.
	finished := 0
	for _, r := range doc.Results {
		if r.State != Running && r.State != Pending {
			finished++
		}
	}
	if over := finished - s.keep; over > 0 {
		kept := doc.Results[:0]
		for _, r := range doc.Results {
			if over > 0 && r.State != Running && r.State != Pending {
				doc.Seen = append(doc.Seen, seenID{r.CommandID, r.State})
				over--
				continue
			}
			kept = append(kept, r)
		}
		doc.Results = kept
		if len(doc.Seen) > seenMax {
			doc.Seen = doc.Seen[len(doc.Seen)-seenMax:]
		}
	}
	b, err := json.MarshalIndent(doc, "", " ")
	if err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(s.dir, storeFile), b, 0o600)
}

func markInterrupted(r *Record, now time.Time) {
	r.State = Interrupted
	r.Error = "the agent stopped while the command ran (killed, crashed or rebooted); it is not run again"
	r.Owner = nil
	if r.EndTime == nil {
		r.EndTime = &now
	}
}

// find returns the record of id and whether the id was ever used.
func (doc *storeDoc) find(id string) (*Record, bool) {
	for _, r := range doc.Results {
		if r.CommandID == id {
			return r, true
		}
	}
	for _, s := range doc.Seen {
		if s.CommandID == id {
			return nil, true
		}
	}
	return nil, false
}

// claim records a new run of id: Pending (commands.run without wait) or
// Running (owned by this process). An id used before is errSeen.
func (s *store) claim(rec *Record) error {
	return s.update(func(doc *storeDoc) error {
		if _, used := doc.find(rec.CommandID); used {
			return errSeen
		}
		if rec.State == Running {
			rec.Owner = self()
		}
		doc.Results = append(doc.Results, rec)
		return nil
	})
}

// start turns the Pending record of id into Running, owned by this
// process, or claims id as Running when it has no record (a run of the
// section's runs). Anything else is errSeen: it ran, or runs, already.
func (s *store) start(rec *Record) error {
	return s.update(func(doc *storeDoc) error {
		old, used := doc.find(rec.CommandID)
		switch {
		case old != nil && old.State == Pending:
			rec.Origin, rec.RequestTime = old.Origin, old.RequestTime
			rec.Owner = self()
			*old = *rec
			return nil
		case used:
			return errSeen
		}
		rec.Owner = self()
		doc.Results = append(doc.Results, rec)
		return nil
	})
}

// finish records the result of a run that start or claim recorded.
func (s *store) finish(id string, res Result) error {
	return s.update(func(doc *storeDoc) error {
		r, _ := doc.find(id)
		if r == nil {
			return fmt.Errorf("command results: no record of %s", id)
		}
		r.Result = res
		d := res.Duration.Milliseconds()
		end := res.StartTime.Add(res.Duration)
		r.DurationMs, r.EndTime, r.Owner = &d, &end, nil
		return nil
	})
}

// self is this process as an owner of runs.
func self() *Owner {
	pid := os.Getpid()
	return &Owner{PID: pid, Start: procStart(pid), Boot: bootID()}
}

// alive reports whether the owner process still runs: same boot, same
// pid, same start time.
func (o *Owner) alive() bool {
	if o == nil || o.PID <= 0 {
		return false
	}
	if o.Boot != bootID() {
		return false
	}
	st := procStart(o.PID)
	return st != 0 && st == o.Start
}

// procStart reads a process's start time (field 22 of /proc/<pid>/stat);
// 0 when it does not exist.
func procStart(pid int) uint64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); the start time is field 22.
	if len(f) < 20 {
		return 0
	}
	if f[0] == "Z" || f[0] == "X" {
		return 0 // a zombie runs nothing
	}
	v, _ := strconv.ParseUint(f[19], 10, 64)
	return v
}

func bootID() string {
	b, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	return strings.TrimSpace(string(b))
}
