package reconciler

import (
	"encoding/json"
	"strconv"
	"time"

	"github.com/twinlet/twinlet/providers"
)

// The state vocabulary of a section's __status.state and of __summary.
const (
	StateReady       = "Ready"
	StateReconciling = "Reconciling"
	StateWaiting     = "Waiting"
	StateFailed      = "Failed"
)

// Reasons, PascalCase, for __status.reason.
const (
	ReasonApplied            = "Applied"
	ReasonUnchanged          = "Unchanged"
	ReasonInvalid            = "Invalid"
	ReasonConflict           = "Conflict"
	ReasonApplyFailed        = "ApplyFailed"
	ReasonObserveFailed      = "ObserveFailed"
	ReasonNotConverged       = "NotConverged"
	ReasonDependencyNotReady = "DependencyNotReady"
	ReasonProviderBug        = "ProviderBug"
	ReasonPending            = "ChangesPending"
	// ReasonInProgress: a long Apply is under way; see Status.Progress.
	ReasonInProgress = "InProgress"
	// ReasonForbidden: a twin value lies outside the cloud scope.
	ReasonForbidden = "Forbidden"
	// ReasonInterrupted: a change that must not run twice was in flight
	// when the agent stopped; it is not run again.
	ReasonInterrupted = "Interrupted"
	// ReasonBusy: something else holds what the provider needs (a
	// providers.BusyError without a reason of its own); retried.
	ReasonBusy = "Busy"
	// ReasonProviderCrashed: an external provider's process exited while
	// it was called (the message carries its stderr tail); it is
	// relaunched with backoff and the section reconciled from a fresh
	// Observe.
	ReasonProviderCrashed = "ProviderCrashed"
	// ReasonProviderTimeout: an external provider's call did not answer
	// within its timeout; its process was killed.
	ReasonProviderTimeout = "ProviderTimeout"
	// ReasonProviderRefused: the section's external provider was refused
	// at start (its manifest's location and reason are in the message).
	ReasonProviderRefused = "ProviderRefused"
)

// Progress is how far a long Apply has come (providers.Env.Progress).
type Progress struct {
	Step  string `json:"step"`
	Done  int    `json:"done"`
	Total int    `json:"total"`
}

// Status is a section's reported __status.
type Status struct {
	State              string `json:"state"`
	Reason             string `json:"reason"`
	Message            string `json:"message,omitempty"`
	DesiredVersion     int64  `json:"desiredVersion"`
	DeploymentID       string `json:"deploymentId,omitempty"`
	InterfaceVersion   string `json:"interfaceVersion,omitempty"`
	Source             string `json:"source,omitempty"`
	LastTransitionTime string `json:"lastTransitionTime"`
	Changes            int    `json:"changes"`
	// Conflicts lists desired values that a higher layer overrode.
	Conflicts []string `json:"conflicts,omitempty"`
	// Progress is set while a long Apply reports progress.
	Progress *Progress `json:"progress,omitempty"`
}

// ErrorItem is one entry of a section's __errors.
type ErrorItem struct {
	Pointer string `json:"pointer"`
	Message string `json:"message"`
	// At says where the bad value came from: file:line:col for local
	// policy, "twin" for the twin.
	At string `json:"at,omitempty"`
}

// Summary is the reported __summary.
type Summary struct {
	State          string `json:"state"`
	DesiredVersion int64  `json:"desiredVersion"`
	Ready          int    `json:"ready"`
	Failed         int    `json:"failed"`
	FailedSections string `json:"failedSections"`
	RebootRequired bool   `json:"rebootRequired"`
	// RebootRequiredBy lists the sections that asked for the latched
	// reboot, comma-separated (a string, so ADM queries can count it).
	RebootRequiredBy string   `json:"rebootRequiredBy"`
	PolicyHash       string   `json:"policyHash"`
	AgentVersion     string   `json:"agentVersion"`
	LastReconcile    string   `json:"lastReconcile"`
	PolicyErrors     []string `json:"policyErrors,omitempty"`
	// Counters are the providers' summary counters (SummaryCounter),
	// summed over sections and reported as further __summary fields
	// (certificatesExpiring), so that an ADM metric query can count
	// devices fleet-wide.
	Counters map[string]int `json:"-"`
}

// MarshalJSON reports the counters as fields of __summary next to the
// fixed ones; a counter named like a fixed field is dropped.
func (s Summary) MarshalJSON() ([]byte, error) {
	type plain Summary
	b, err := json.Marshal(plain(s))
	if err != nil || len(s.Counters) == 0 {
		return b, err
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	for k, v := range s.Counters {
		if _, fixed := m[k]; !fixed {
			m[k] = json.RawMessage(strconv.Itoa(v))
		}
	}
	return json.Marshal(m)
}

// SectionResult is the outcome of one reconcile of one section.
type SectionResult struct {
	ID     string
	Status Status
	Errors []ErrorItem
	// Plan is what was (or, in a dry run, would be) changed.
	Plan []providers.Change
	// Observed is the section's reported body.
	Observed json.RawMessage
	// Counters are the provider's __summary counters for this result.
	Counters map[string]int
	// RebootRequired is set when an applied change asked for a reboot.
	RebootRequired bool
	// Retry is set for transient failures.
	Retry bool
	// retryAfter is the least delay before the retry (a BusyError's).
	retryAfter time.Duration
	// Absent is set when nothing desires the section any more.
	Absent bool
	// inputHash identifies the desired input this result is for.
	inputHash string
	// observedValue is the provider's last verified observation, whole,
	// for the sections that depend on this one (Env.DependencyObserved).
	observedValue providers.Observed
}
