package iothub

import (
	"strconv"
	"strings"
	"sync"
	"testing"
)

func newTestClient(t *testing.T) *DeviceClient {
	t.Helper()
	c, err := NewDeviceClient(DeviceConfig{HostName: "h", DeviceID: "d", Signer: KeySigner{Key: []byte("k")}})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestTwinReplyRacingDisconnect: a twin reply that arrives while the
// client disconnects must neither panic (send on a closed channel) nor
// block paho's goroutine.
func TestTwinReplyRacingDisconnect(t *testing.T) {
	c := newTestClient(t)
	for i := 0; i < 5000; i++ {
		rid := strconv.Itoa(i)
		c.mu.Lock()
		c.pending[rid] = make(chan twinReply, 1)
		c.mu.Unlock()
		var wg sync.WaitGroup
		wg.Add(2)
		go func() {
			defer wg.Done()
			c.onMessage(nil, message{topic: "$iothub/twin/res/200/?$rid=" + rid, payload: []byte("{}")})
		}()
		go func() { defer wg.Done(); c.disconnect() }()
		wg.Wait()
	}
}

func TestParseTwinVersion(t *testing.T) {
	cases := []struct {
		body string
		want int64
		err  string
	}{
		{`{"desired":{"$version":7,"a":1},"reported":{"$version":2}}`, 7, ""},
		{`{"desired":{"$version":"7"},"reported":{}}`, 0, "$version"},
		{`{"desired":{"$version":-1},"reported":{}}`, 0, "$version"},
		{`{"desired":{"a":1},"reported":{}}`, 0, "$version"},
		{`{"desired":{"$version":1.5},"reported":{}}`, 0, "$version"},
		{`[]`, 0, "get twin"},
	}
	for _, tc := range cases {
		_, _, v, err := parseTwin([]byte(tc.body))
		if tc.err == "" {
			if err != nil || v != tc.want {
				t.Errorf("%s: version %d, err %v", tc.body, v, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%s: err = %v, want one mentioning %q", tc.body, err, tc.err)
		}
	}
	for topic, want := range map[string]int64{
		"$iothub/twin/PATCH/properties/desired/?$version=12": 12,
		"$iothub/twin/PATCH/properties/desired/?$version=x":  -1,
		"$iothub/twin/PATCH/properties/desired/":             -1,
		"$iothub/twin/PATCH/properties/desired/?$version=0":  -1,
	} {
		v, err := topicVersion(topic)
		if want < 0 {
			if err == nil {
				t.Errorf("%s: version %d, no error", topic, v)
			}
		} else if err != nil || v != want {
			t.Errorf("%s: version %d, err %v", topic, v, err)
		}
	}
}

// TestDesiredQueueIsBounded: patches that pile up while the dispatcher is
// busy (a slow twin read, a slow callback) are replaced by one twin read
// beyond a bound, since a full read supersedes every patch before it.
func TestDesiredQueueIsBounded(t *testing.T) {
	c := newTestClient(t)
	for i := 1; i <= 10*maxQueuedPatches; i++ {
		c.onMessage(nil, message{topic: "$iothub/twin/PATCH/properties/desired/?$version=" + strconv.Itoa(i), payload: []byte(`{"a":1}`)})
	}
	c.qmu.Lock()
	n, syncs := len(c.queue), 0
	for _, e := range c.queue {
		if e.kind == evSync {
			syncs++
		}
	}
	c.qmu.Unlock()
	if n > maxQueuedPatches+1 || syncs == 0 {
		t.Fatalf("queue holds %d events (%d twin reads) after %d patches", n, syncs, 10*maxQueuedPatches)
	}
}
