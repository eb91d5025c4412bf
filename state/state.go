// Package state persists what the agent must remember across restarts: the
// last good desired section, the items twinlet created (so that prune never
// deletes what it did not create), the changes that must run once while
// they run (so that a crash never runs them twice), the reboot-required
// latch, the last reported document and the hashes and versions it saw. Every write is atomic (temp file, fsync,
// rename, fsync dir), so a kill at any moment leaves the old or the new
// state, never a torn one.
package state

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/twinlet/twinlet/internal/atomicfile"
)

// FileName is the state file inside the state directory.
const FileName = "state.json"

// ReportedFile is the reported document written for humans and tools.
const ReportedFile = "reported.json"

// formatVersion is bumped when the layout changes incompatibly.
const formatVersion = 1

// Section is what the agent remembers about one section.
type Section struct {
	// LastGood is the last merged desired section that passed validation.
	LastGood json.RawMessage `json:"lastGood,omitempty"`
	// Validated identifies the pair of schema and merged section that last
	// passed validation (a digest of both): the same section under the
	// same schema is not validated again, even by a new process.
	Validated string `json:"validated,omitempty"`
	// Sources are the layers and files LastGood came from.
	Sources []string `json:"sources,omitempty"`
	// Managed lists the keys (Change.Key) twinlet created and has not
	// deleted since, sorted.
	Managed []string `json:"managed,omitempty"`
	// InFlight lists the keys of the section's Once changes being
	// applied: each is recorded (and the state saved) before Apply and
	// removed after Apply returns. A key still here when the agent starts
	// was cut off by a crash or a kill.
	InFlight []string `json:"inFlight,omitempty"`
	// Interrupted lists the keys of Once changes that were in flight when
	// the agent stopped. They are handed to the provider
	// (providers.Env.Interrupted) and never applied again; they are
	// forgotten when nothing desires the section any more.
	Interrupted []string `json:"interrupted,omitempty"`
}

// RebootLatch is the latched "reboot required": which sections asked for
// a reboot, and the boot id of the system when they did. It is cleared
// when the boot id changes (the system rebooted) or when a reboot provider
// clears it.
type RebootLatch struct {
	BootID string   `json:"bootId"`
	By     []string `json:"by"`
}

// AddKey adds k to a sorted list of keys and reports whether it was new.
func AddKey(list *[]string, k string) bool {
	i := sort.SearchStrings(*list, k)
	if i < len(*list) && (*list)[i] == k {
		return false
	}
	*list = append(*list, "")
	copy((*list)[i+1:], (*list)[i:])
	(*list)[i] = k
	return true
}

// RemoveKey removes k from a sorted list of keys and reports whether it
// was there.
func RemoveKey(list *[]string, k string) bool {
	i := sort.SearchStrings(*list, k)
	if i >= len(*list) || (*list)[i] != k {
		return false
	}
	*list = append((*list)[:i], (*list)[i+1:]...)
	if len(*list) == 0 {
		*list = nil
	}
	return true
}

// Interrupt moves every section's in-flight keys to its interrupted ones,
// as a start after a crash must, and reports whether there were any.
func (s *State) Interrupt() bool {
	any := false
	for _, sec := range s.Sections {
		for _, k := range sec.InFlight {
			AddKey(&sec.Interrupted, k)
			any = true
		}
		sec.InFlight = nil
	}
	return any
}

// State is the whole persisted state.
type State struct {
	Format   int                 `json:"format"`
	Sections map[string]*Section `json:"sections"`
	// TwinVersion is the last desired $version applied.
	TwinVersion int64 `json:"twinVersion,omitempty"`
	// TwinDesired is the last full desired document received from the
	// twin, so that a restart while offline keeps enforcing it.
	TwinDesired map[string]json.RawMessage `json:"twinDesired,omitempty"`
	// PolicyHash is the hash of the policy files last read.
	PolicyHash string `json:"policyHash,omitempty"`
	// Reported is the last reported document.
	Reported json.RawMessage `json:"reported,omitempty"`
	// Reboot is the reboot-required latch; nil when no reboot is needed.
	Reboot *RebootLatch `json:"reboot,omitempty"`
}

// Section returns the state of a section, creating it.
func (s *State) Section(id string) *Section {
	if s.Sections == nil {
		s.Sections = map[string]*Section{}
	}
	sec := s.Sections[id]
	if sec == nil {
		sec = &Section{}
		s.Sections[id] = sec
	}
	return sec
}

// ManagedSet returns a section's managed keys as a set.
func (sec *Section) ManagedSet() map[string]bool {
	m := make(map[string]bool, len(sec.Managed))
	for _, k := range sec.Managed {
		m[k] = true
	}
	return m
}

// SetManaged stores a set of managed keys, sorted.
func (sec *Section) SetManaged(m map[string]bool) {
	out := make([]string, 0, len(m))
	for k, ok := range m {
		if ok {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	sec.Managed = out
}

// Store reads and writes the state of one state directory.
type Store struct {
	Dir  string
	last []byte // what is on disk, to skip writes that change nothing
}

// Load reads the state. A missing file is a fresh start. A corrupt file is
// also a fresh start, returned together with a warning that says so; the
// corrupt file is kept aside as state.json.corrupt for inspection.
func (st *Store) Load() (*State, error) {
	path := filepath.Join(st.Dir, FileName)
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return &State{Format: formatVersion, Sections: map[string]*Section{}}, nil
	}
	if err != nil {
		return &State{Format: formatVersion, Sections: map[string]*Section{}}, fmt.Errorf("state %s unreadable, starting fresh: %w", path, err)
	}
	var s State
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&s); err != nil || s.Format != formatVersion {
		_ = os.Rename(path, path+".corrupt")
		why := "unknown format"
		if err != nil {
			why = err.Error()
		}
		return &State{Format: formatVersion, Sections: map[string]*Section{}}, fmt.Errorf("state %s is corrupt (%s), kept as %s.corrupt, starting fresh", path, why, FileName)
	}
	if s.Sections == nil {
		s.Sections = map[string]*Section{}
	}
	st.last = data
	return &s, nil
}

// Save writes the state atomically when it differs from what is on disk.
func (st *Store) Save(s *State) error {
	data, err := Encode(s)
	if err != nil {
		return err
	}
	return st.Write(data)
}

// Encode renders the state as Save writes it, so that a caller can take a
// snapshot under its lock and write it (fsync) outside.
func Encode(s *State) ([]byte, error) {
	s.Format = formatVersion
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("state: %w", err)
	}
	return data, nil
}

// Write writes an encoded state atomically when it differs from what is on
// disk. Writes must not run concurrently.
func (st *Store) Write(data []byte) error {
	if bytes.Equal(data, st.last) {
		return nil
	}
	if err := os.MkdirAll(st.Dir, 0o700); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	if err := atomicfile.Write(filepath.Join(st.Dir, FileName), data, 0o600); err != nil {
		return fmt.Errorf("state: %w", err)
	}
	st.last = data
	return nil
}

// WriteReported writes the reported document atomically.
func (st *Store) WriteReported(doc []byte) error {
	if err := os.MkdirAll(st.Dir, 0o700); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	return atomicfile.Write(filepath.Join(st.Dir, ReportedFile), doc, 0o644)
}
