package hub

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"strconv"
	"testing"

	"github.com/twinlet/twinlet/internal/testutil"
)

// TestLargePacketsThroughReadBuffer sends the largest packets IoT Hub
// takes (a 256 KiB device-to-cloud message, a reported section close to
// 32 KiB) through the broker's small per-connection read buffer
// (ClientNetReadBufferSize), and checks that they arrive whole, byte for
// byte, and that the twin read back holds them.
func TestLargePacketsThroughReadBuffer(t *testing.T) {
	h := startHub(t, Options{})
	cs, _ := h.CreateDevice("d1")
	d := mustDial(t, h, cs)
	d.subscribe("$iothub/twin/res/#")

	body := make([]byte, 256*1024)
	if _, err := rand.Read(body); err != nil {
		t.Fatal(err)
	}
	d.publish("devices/d1/messages/events/", 1, body)
	testutil.Eventually(t, "the 256 KiB message", func() bool { return len(h.Events(0)) == 1 })
	if ev := h.Events(0); !bytes.Equal(ev[0].Body, body) {
		t.Fatalf("the message arrived as %d bytes, not the %d sent", len(ev[0].Body), len(body))
	}

	// Seven values of 4,000 characters: about 28 KiB of reported section,
	// under the 32 KiB limit, in one patch.
	want := map[string]string{}
	for i := 0; i < 7; i++ {
		raw := make([]byte, 3000)
		if _, err := rand.Read(raw); err != nil {
			t.Fatal(err)
		}
		want["k"+strconv.Itoa(i)] = base64.StdEncoding.EncodeToString(raw)
	}
	patch, _ := json.Marshal(want)
	if st, _ := d.patchReported(string(patch)); st != "204" {
		t.Fatalf("a %d-byte reported patch: status %s", len(patch), st)
	}
	reported, _ := d.getTwin()["reported"].(map[string]any)
	for k, v := range want {
		if reported[k] != v {
			t.Fatalf("reported.%s read back differs (%d characters sent)", k, len(v))
		}
	}
}
