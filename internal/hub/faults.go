package hub

import (
	"encoding/json"
	"fmt"
	"sync"
	"time"
)

// Faults is what the hub injects; the zero value injects nothing.
// Throttle shares are between 0 and 1 and deterministic: a share of 0.25
// throttles exactly every fourth request of that kind.
type Faults struct {
	// Delay holds every twin reply and REST response this long.
	Delay time.Duration
	// ThrottleTwinGet answers this share of twin GETs with 429.
	ThrottleTwinGet float64
	// ThrottleReportedPatch answers this share of reported patches with 429.
	ThrottleReportedPatch float64
	// ThrottleREST answers this share of service REST requests with 429.
	ThrottleREST float64
	// RejectConnects refuses this share of otherwise valid CONNECTs.
	RejectConnects float64
}

// faultsJSON is the admin endpoint's form of Faults.
type faultsJSON struct {
	Delay                 string  `json:"delay"`
	ThrottleTwinGet       float64 `json:"throttleTwinGet"`
	ThrottleReportedPatch float64 `json:"throttleReportedPatch"`
	ThrottleREST          float64 `json:"throttleRest"`
	RejectConnects        float64 `json:"rejectConnects"`
}

// MarshalJSON writes Delay as a Go duration string.
func (f Faults) MarshalJSON() ([]byte, error) {
	return json.Marshal(faultsJSON{f.Delay.String(), f.ThrottleTwinGet, f.ThrottleReportedPatch, f.ThrottleREST, f.RejectConnects})
}

// UnmarshalJSON reads the form MarshalJSON writes.
func (f *Faults) UnmarshalJSON(b []byte) error {
	var j faultsJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	var d time.Duration
	if j.Delay != "" {
		var err error
		if d, err = time.ParseDuration(j.Delay); err != nil {
			return fmt.Errorf("delay: %w", err)
		}
	}
	*f = Faults{d, j.ThrottleTwinGet, j.ThrottleReportedPatch, j.ThrottleREST, j.RejectConnects}
	return f.validate()
}

func (f Faults) validate() error {
	if f.Delay < 0 {
		return fmt.Errorf("delay %s is negative: %w", f.Delay, ErrInvalid)
	}
	for name, v := range map[string]float64{
		"throttleTwinGet": f.ThrottleTwinGet, "throttleReportedPatch": f.ThrottleReportedPatch,
		"throttleRest": f.ThrottleREST, "rejectConnects": f.RejectConnects,
	} {
		if v < 0 || v > 1 {
			return fmt.Errorf("%s %v is not between 0 and 1: %w", name, v, ErrInvalid)
		}
	}
	return nil
}

type op int

const (
	opTwinGet op = iota
	opReportedPatch
	opREST
	opConnect
	numOps
)

type faultState struct {
	mu    sync.Mutex
	f     Faults
	count [numOps]uint64
}

func (s *faultState) set(f Faults) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.f = f
	s.count = [numOps]uint64{}
}

func (s *faultState) get() Faults {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.f
}

// admit counts a request of kind o and reports whether it may proceed.
func (s *faultState) admit(o op) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	var share float64
	switch o {
	case opTwinGet:
		share = s.f.ThrottleTwinGet
	case opReportedPatch:
		share = s.f.ThrottleReportedPatch
	case opREST:
		share = s.f.ThrottleREST
	case opConnect:
		share = s.f.RejectConnects
	}
	if share <= 0 {
		return true
	}
	s.count[o]++
	n := s.count[o]
	// Throttle request n when the running quota n*share crosses an integer.
	return uint64(float64(n)*share) == uint64(float64(n-1)*share)
}

func (s *faultState) delay() {
	s.mu.Lock()
	d := s.f.Delay
	s.mu.Unlock()
	if d > 0 {
		// Fault injection: hold this reply on purpose.
		time.Sleep(d)
	}
}

// SetFaults replaces the injected faults; the zero Faults turns injection
// off. Throttle counters restart.
func (h *Hub) SetFaults(f Faults) error {
	if err := f.validate(); err != nil {
		return err
	}
	h.faults.set(f)
	h.log.Info("faults set", "faults", f)
	return nil
}

// CurrentFaults returns the injected faults.
func (h *Hub) CurrentFaults() Faults { return h.faults.get() }
