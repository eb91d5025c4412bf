package backoff

import (
	"context"
	"testing"
	"time"
)

func TestDelay(t *testing.T) {
	for n, want := range map[int]time.Duration{1: time.Second, 3: 4 * time.Second, 50: 10 * time.Second} {
		for range 20 {
			d := Delay(time.Second, 10*time.Second, n)
			if d < want*8/10 || d > want*12/10 {
				t.Fatalf("Delay(n=%d) = %v, want %v ±20%%", n, d, want)
			}
		}
	}
}

func TestSleepStopsWithContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if Sleep(ctx, time.Hour) {
		t.Fatal("Sleep ignored a cancelled context")
	}
	if !Sleep(context.Background(), time.Millisecond) {
		t.Fatal("Sleep did not sleep")
	}
}
