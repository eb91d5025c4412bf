// Package backoff is the one retry-delay policy of twinlet: exponential
// with jitter, so that a fleet never retries in step.
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Delay returns the delay before retry n (1 for the first): base doubled
// n-1 times, capped at max, with ±20% jitter.
func Delay(base, max time.Duration, n int) time.Duration {
	d := base
	for i := 1; i < n && d < max; i++ {
		d *= 2
	}
	d = min(d, max)
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}

// Sleep waits for d or until ctx ends; it reports whether d passed.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
