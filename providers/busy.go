package providers

import (
	"fmt"
	"time"
)

// BusyError reports that something else holds what a provider needs (the
// dpkg lock held by an unattended upgrade, an administrator's apt-get).
// It is neither invalid input nor a failure of twinlet: the reconciler
// reports the section as Waiting with Reason and retries with its backoff,
// no sooner than RetryAfter.
type BusyError struct {
	// Reason is a PascalCase word for __status.reason ("LockHeld"); empty
	// means "Busy".
	Reason string
	// RetryAfter, when not zero, is the least time to wait before trying
	// again.
	RetryAfter time.Duration
	// Err says what is busy and who holds it.
	Err error
}

func (e *BusyError) Error() string {
	if e.Err == nil {
		return "busy"
	}
	return fmt.Sprintf("busy: %v", e.Err)
}

func (e *BusyError) Unwrap() error { return e.Err }
