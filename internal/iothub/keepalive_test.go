package iothub_test

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/twinlet/twinlet/internal/iothub"
	"github.com/twinlet/twinlet/internal/iothub/iothubtest"
	"github.com/twinlet/twinlet/internal/testutil"
)

// TestKeepAlivePingsAQuietConnection: with a 2 s keep-alive, which the
// hub enforces (it drops a client quiet for 1.5 × its keep-alive), an
// idle device pings and stays connected; once its pings stop, the hub
// drops it and it reconnects. That the hub drops it shows the CONNECT
// packet carried the keep-alive although paho was told none.
func TestKeepAlivePingsAQuietConnection(t *testing.T) {
	h := iothubtest.StartHub(t)
	var answered atomic.Int64
	c, _ := startDevice(t, h, "d1", func(cfg *iothub.DeviceConfig) {
		cfg.KeepAlive = 2 * time.Second
		cfg.AfterPing = func() { answered.Add(1) }
	})
	testutil.Eventually(t, "two pings", func() bool { return c.KeepAlivePings() >= 2 })
	testutil.Eventually(t, "AfterPing for an answered ping", func() bool { return answered.Load() >= 1 })
	if n := c.Reconnects.Load(); n != 1 {
		t.Fatalf("%d connects while pinging, want 1", n)
	}
	c.MuteKeepAlive()
	testutil.Eventually(t, "the hub to drop the silent device and the device to reconnect", func() bool {
		return c.Reconnects.Load() > 1 && c.Connected()
	})
}
