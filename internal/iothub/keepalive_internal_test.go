package iothub

import (
	"bytes"
	"io"
	"log/slog"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.mqtt.golang/packets"
)

func connectPacket(t *testing.T, keepalive uint16) []byte {
	t.Helper()
	cp := packets.NewControlPacket(packets.Connect).(*packets.ConnectPacket)
	cp.ProtocolName, cp.ProtocolVersion = "MQTT", 4
	cp.ClientIdentifier, cp.Keepalive = "d1", keepalive
	cp.UsernameFlag, cp.Username = true, "h/d1/?api-version=2021-04-12"
	var b bytes.Buffer
	if err := cp.Write(&b); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// TestWithKeepAlive: the CONNECT paho writes with a keep-alive of 0 goes
// out with ours and is otherwise the same; anything else is refused.
func TestWithKeepAlive(t *testing.T) {
	in := connectPacket(t, 0)
	orig := append([]byte(nil), in...)
	out, err := withKeepAlive(in, 120*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(in, orig) {
		t.Fatal("the caller's buffer was changed")
	}
	p, err := packets.ReadPacket(bytes.NewReader(out))
	if err != nil {
		t.Fatal(err)
	}
	cp := p.(*packets.ConnectPacket)
	if cp.Keepalive != 120 || cp.ClientIdentifier != "d1" || cp.Username != "h/d1/?api-version=2021-04-12" {
		t.Fatalf("patched CONNECT = %v", cp)
	}
	// A long packet (a SAS token as password) has a two-byte length.
	long := packets.NewControlPacket(packets.Connect).(*packets.ConnectPacket)
	long.ProtocolName, long.ProtocolVersion, long.ClientIdentifier = "MQTT", 4, "d1"
	long.PasswordFlag, long.Password = true, bytes.Repeat([]byte("x"), 300)
	var b bytes.Buffer
	long.Write(&b)
	out, err = withKeepAlive(b.Bytes(), 2*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if p, err := packets.ReadPacket(bytes.NewReader(out)); err != nil || p.(*packets.ConnectPacket).Keepalive != 7200 {
		t.Fatalf("long CONNECT: %v %v", p, err)
	}
	for name, bad := range map[string][]byte{
		"pingreq":  pingreq,
		"short":    {0x10},
		"mqtt 3.1": append([]byte{0x10, 0x0e, 0x00, 0x06}, "MQIsdp\x03\x02\x00\x00"...),
	} {
		if _, err := withKeepAlive(bad, time.Minute); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestKeepConnGivesUpOnASilentHub: a hub that reads the ping and never
// answers is given up on after the timeout: the connection is closed,
// so paho's reader fails and the client reconnects.
func TestKeepConnGivesUpOnASilentHub(t *testing.T) {
	device, hub := net.Pipe()
	defer hub.Close()
	k := newKeepConn(device, 200*time.Millisecond, 300*time.Millisecond, slog.New(slog.DiscardHandler))
	got := make(chan []byte, 1)
	go func() { b, _ := io.ReadAll(hub); got <- b }() // reads everything, answers nothing
	if _, err := k.Write(connectPacket(t, 0)); err != nil {
		t.Fatal(err)
	}
	// paho's reader: blocked until the connection is closed.
	if _, err := k.Read(make([]byte, 1)); err == nil {
		t.Fatal("read on a given-up connection succeeded")
	}
	b := <-got
	if !bytes.HasSuffix(b, pingreq) || k.pings.Load() != 1 {
		t.Fatalf("wrote %x with %d pings, want the CONNECT and one ping", b, k.pings.Load())
	}
}

// TestKeepConnPingsAtTheTickAfterTraffic: traffic both ways after the
// timer was armed does not cost the idle device a second wake: the tick
// that finds the connection quiet for a quarter of the keep-alive pings
// then, instead of arming the timer again for three quarters after the
// traffic and pinging at that next wake.
func TestKeepConnPingsAtTheTickAfterTraffic(t *testing.T) {
	device, hub := net.Pipe()
	defer hub.Close()
	k := newKeepConn(device, 4*time.Second, time.Minute, slog.New(slog.DiscardHandler))
	defer k.Close()
	go readAll(k) // paho's reader
	go func() {   // the hub: takes the CONNECT, answers, reads on
		b := make([]byte, 256)
		hub.Read(b)
		time.Sleep(500 * time.Millisecond)        // well after the timer was armed
		hub.Write([]byte{0x20, 0x02, 0x00, 0x00}) // CONNACK
		io.Copy(io.Discard, hub)
	}()
	if _, err := k.Write(connectPacket(t, 0)); err != nil { // arms the timer for 3 s
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	if _, err := k.Write([]byte{0x40, 0x02, 0x00, 0x01}); err != nil { // a PUBACK
		t.Fatal(err)
	}
	waitFor(t, "no ping", func() bool { return k.pings.Load() > 0 })
	if n := k.ticks.Load(); n != 1 {
		t.Fatalf("the timer fired %d times for the first ping, want 1", n)
	}
}

// TestKeepConnNeverMovesAPendingTimerLater: the answer to a ping takes
// the timer from the answer's deadline to the next ping by letting it
// fire at once, never by Reset to the later time, which the Go runtime
// would still wake up for at the old deadline (30 s after every ping
// with the defaults).
func TestKeepConnNeverMovesAPendingTimerLater(t *testing.T) {
	device, hub := net.Pipe()
	defer hub.Close()
	var answered atomic.Int64
	k := newKeepConn(device, 2*time.Second, time.Minute, slog.New(slog.DiscardHandler))
	k.afterPing = func() { answered.Add(1) }
	defer k.Close()
	go readAll(k) // paho's reader
	go func() {   // the hub: answers every PINGREQ with a PINGRESP
		b := make([]byte, 256)
		for {
			n, err := hub.Read(b)
			if err != nil {
				return
			}
			if bytes.Equal(b[:n], pingreq) {
				hub.Write([]byte{0xd0, 0x00})
			}
		}
	}()
	if _, err := k.Write(connectPacket(t, 0)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "fewer than 2 pings answered", func() bool { return answered.Load() >= 2 })
	if n := k.movedLater.Load(); n != 0 {
		t.Fatalf("a pending timer was moved later %d times", n)
	}
}

// TestKeepConnAfterPingOnceTheAnswerIsRead: AfterPing runs when the
// packet that answered a ping has been read whole and paho's reader
// comes back for the next one, not while paho is still reading the
// answer; read a byte at a time, as paho reads a packet's header, and
// whatever the packet (a PUBLISH with a two-byte length answers too).
func TestKeepConnAfterPingOnceTheAnswerIsRead(t *testing.T) {
	device, hub := net.Pipe()
	defer hub.Close()
	var calls atomic.Int64
	k := newKeepConn(device, time.Hour, time.Minute, slog.New(slog.DiscardHandler))
	k.afterPing = func() { calls.Add(1) }
	defer k.Close()
	publish := append([]byte{0x30, 0x83, 0x01}, bytes.Repeat([]byte{'x'}, 131)...) // remaining length 131
	go func() {
		hub.Write([]byte{0xd0, 0x00}) // PINGRESP
		hub.Write(publish)
		hub.Write([]byte{0x40, 0x02, 0x00, 0x01}) // PUBACK
	}()
	read := func(n int, callsBefore, callsAfter int64) {
		t.Helper()
		b := make([]byte, n)
		k.pingSent.Store(1) // a ping is outstanding when the packet starts
		if got := calls.Load(); got != callsBefore {
			t.Fatalf("before a %d-byte read: %d AfterPing calls, want %d", n, got, callsBefore)
		}
		if _, err := io.ReadFull(k, b); err != nil {
			t.Fatal(err)
		}
		if got := calls.Load(); got != callsAfter {
			t.Fatalf("after a %d-byte read: %d AfterPing calls, want %d", n, got, callsAfter)
		}
	}
	read(1, 0, 0) // PINGRESP's type: the answer, not yet read whole
	read(1, 0, 0) // its length, 0: read whole
	read(1, 0, 1) // paho back for the next packet: AfterPing first
	k.pingSent.Store(0)
	b := make([]byte, 2+131)
	if _, err := io.ReadFull(k, b); err != nil { // the rest of the PUBLISH
		t.Fatal(err)
	}
	if calls.Load() != 1 {
		t.Fatalf("%d AfterPing calls before the PUBLISH that answered was read whole", calls.Load())
	}
	read(1, 1, 2) // the PUBACK's first byte: the PUBLISH was read whole
}

// TestKeepConnTickLeavesTheAnswerToRead: a tick that fires while paho's
// reader is between noting the read and taking the outstanding ping (the
// answer is in, pingSent is not yet taken) leaves the ping to Read, which
// then counts the answer and calls AfterPing once it has been read whole.
// The tick used to clear pingSent itself, and the answer's AfterPing was
// lost (a flaky CI failure of the test above).
func TestKeepConnTickLeavesTheAnswerToRead(t *testing.T) {
	device, hub := net.Pipe()
	defer hub.Close()
	var calls atomic.Int64
	k := newKeepConn(device, time.Hour, time.Minute, slog.New(slog.DiscardHandler))
	k.afterPing = func() { calls.Add(1) }
	defer k.Close()
	go hub.Write([]byte{0xd0, 0x00, 0x40, 0x02, 0x00, 0x01}) // PINGRESP, PUBACK
	sent := time.Now().Add(-time.Second).UnixNano()
	k.pingSent.Store(sent)
	k.lastRead.Store(time.Now().UnixNano()) // Read noted the answer ...
	k.tick()                                // ... and the timer fired just then
	if k.pingSent.Load() != sent {
		t.Fatal("the tick took the outstanding ping from Read")
	}
	if _, err := io.ReadFull(k, make([]byte, 2)); err != nil { // the PINGRESP
		t.Fatal(err)
	}
	if !k.answered.Load() && k.ticks.Load() < 2 {
		t.Fatal("Read did not count the answer")
	}
	if _, err := io.ReadFull(k, make([]byte, 1)); err != nil { // paho back for the PUBACK
		t.Fatal(err)
	}
	if calls.Load() != 1 {
		t.Fatalf("%d AfterPing calls, want 1", calls.Load())
	}
}

// readAll reads from k until it fails, as paho's reader does.
func readAll(k *keepConn) {
	b := make([]byte, 64)
	for {
		if _, err := k.Read(b); err != nil {
			return
		}
	}
}

// waitFor fails with msg when cond is not true within 30 s.
func waitFor(t *testing.T, msg string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal(msg)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
