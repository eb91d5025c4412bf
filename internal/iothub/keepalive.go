package iothub

import (
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// keepConn is the device connection with the MQTT keep-alive done here
// instead of in paho. paho checks its keep-alive every 5 s whatever the
// interval is, so an idle agent woke up 12 times a minute for nothing;
// keepConn arms one timer, three quarters of the keep-alive after the
// connect or the last ping's answer, so an idle device wakes up once
// every 180 s (with the default keep-alive of 240 s) to ping. Traffic
// does not move the timer; the tick pings unless the connection is busy
// right now (see tick).
//
// paho is told a keep-alive of 0 (so it runs no keep-alive of its own)
// and keepConn writes the real one into the CONNECT packet on its way
// out, so the hub still knows when to give up on the device (IoT Hub:
// 1.5 × the keep-alive). A PINGREQ is written between paho's packets: each
// of paho's packets is one Write, and a tls.Conn serialises Writes, as
// paho's own keep-alive relies on too. paho reads the PINGRESP and
// drops it.
type keepConn struct {
	net.Conn
	every   time.Duration // the keep-alive
	timeout time.Duration // how long a ping may go unanswered
	log     *slog.Logger

	connectSent atomic.Bool
	lastWrite   atomic.Int64 // unix ns
	lastRead    atomic.Int64
	pingSent    atomic.Int64 // 0: none outstanding
	pings       atomic.Int64 // for tests
	ticks       atomic.Int64 // for tests: timer firings
	movedLater  atomic.Int64 // for tests: a pending timer Reset to a later time
	answered    atomic.Bool  // the last ping was answered; the next tick arms the next one
	mute        atomic.Bool  // tests: stop pinging
	afterPing   func()       // DeviceConfig.AfterPing

	// The reader's (paho's) side only: the MQTT framing of what it read,
	// so that afterPing runs once the answer has been read whole.
	rstate, rlen, rmul  int
	answering, afterDue bool

	mu     sync.Mutex
	timer  *time.Timer
	due    time.Time // when the pending timer fires; zero once it has
	closed bool
}

// pingreq is an MQTT 3.1.1 PINGREQ packet.
var pingreq = []byte{0xc0, 0x00}

func newKeepConn(conn net.Conn, every, timeout time.Duration, log *slog.Logger) *keepConn {
	k := &keepConn{Conn: conn, every: every, timeout: timeout, log: log}
	now := time.Now().UnixNano()
	k.lastWrite.Store(now)
	k.lastRead.Store(now)
	return k
}

// Write writes one of paho's packets; the first one, CONNECT, gets the
// keep-alive, and starts the timer.
func (k *keepConn) Write(b []byte) (int, error) {
	first := k.connectSent.CompareAndSwap(false, true)
	out := b
	if first {
		var err error
		if out, err = withKeepAlive(b, k.every); err != nil {
			return 0, err
		}
	}
	n, err := k.Conn.Write(out)
	if n > 0 {
		k.lastWrite.Store(time.Now().UnixNano())
	}
	if first {
		if err == nil {
			k.arm(k.every * 3 / 4)
		}
		if n == len(out) {
			n = len(b)
		} else {
			n = min(n, len(b))
		}
	}
	return n, err
}

// Read notes that the hub said something: any packet answers a ping,
// and the timer goes from the answer's deadline to the next ping: it
// fires at once, in this wake, and the tick arms it for the next ping.
// Not Reset to the next ping straight away: the Go runtime leaves a
// timer moved later at its old place in the timer heap, and its old
// deadline as the time to wake up, until that time comes
// (runtime/time.go, timer.modify: "The corresponding heap[i].when is
// updated later"), which woke the idle agent 30 s after every ping for
// nothing. A timer that has fired is out of the heap, and the tick adds
// it back at the right place.
//
// afterPing runs when paho comes back for the packet after the answer,
// before this Read waits for it: the answer has been read whole and
// handed on by then, so less of what the wake touches comes back after
// the callback's unmap (unmapping in the Read that brought the answer's
// first byte left about 0.25 MiB more resident, BenchmarkIdleAgent -v).
func (k *keepConn) Read(b []byte) (int, error) {
	if k.afterDue {
		k.afterDue = false
		if k.afterPing != nil {
			k.afterPing()
		}
	}
	n, err := k.Conn.Read(b)
	if n > 0 {
		k.lastRead.Store(time.Now().UnixNano())
		if k.pingSent.Swap(0) != 0 {
			k.answered.Store(true)
			k.arm(0)
			k.answering = true
		}
		if k.frame(b[:n]) && k.answering {
			k.answering, k.afterDue = false, true
		}
	}
	return n, err
}

// frame follows the MQTT framing (a type byte, the remaining length in
// one to four bytes of seven bits, the rest) of what paho reads, which
// may come a byte at a time, and reports whether a packet ended in b.
func (k *keepConn) frame(b []byte) (ended bool) {
	for len(b) > 0 {
		switch k.rstate {
		case 0: // the fixed header's first byte
			k.rstate, k.rlen, k.rmul = 1, 0, 1
			b = b[1:]
		case 1: // the remaining length, 1 to 4 bytes
			c := b[0]
			b = b[1:]
			k.rlen += int(c&0x7f) * k.rmul
			k.rmul *= 128
			if c&0x80 == 0 || k.rmul >= 128*128*128*128 {
				k.rstate = 2
				if k.rlen == 0 {
					k.rstate, ended = 0, true
				}
			}
		case 2: // the rest
			m := min(k.rlen, len(b))
			k.rlen -= m
			b = b[m:]
			if k.rlen == 0 {
				k.rstate, ended = 0, true
			}
		}
	}
	return ended
}

// Close stops the timer and closes the connection.
func (k *keepConn) Close() error {
	k.mu.Lock()
	k.closed = true
	if k.timer != nil {
		k.timer.Stop()
	}
	k.mu.Unlock()
	return k.Conn.Close()
}

func (k *keepConn) arm(d time.Duration) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		return
	}
	due := time.Now().Add(d)
	if !k.due.IsZero() && due.After(k.due) {
		k.movedLater.Add(1)
	}
	k.due = due
	if k.timer == nil {
		k.timer = time.AfterFunc(d, k.tick)
		return
	}
	k.timer.Reset(d)
}

// tick runs when the connection may have been quiet for the keep-alive
// or a ping may have gone unanswered for too long.
func (k *keepConn) tick() {
	k.ticks.Add(1)
	k.mu.Lock()
	k.due = time.Time{} // fired: no longer in the runtime's timer heap
	k.mu.Unlock()
	if k.answered.Swap(false) {
		k.arm(k.every * 3 / 4)
		return
	}
	now := time.Now()
	if sent := k.pingSent.Load(); sent != 0 {
		if k.lastRead.Load() < sent {
			if wait := time.Duration(sent + int64(k.timeout) - now.UnixNano()); wait > 0 {
				k.arm(wait)
				return
			}
			// The hub is gone: closing makes paho's reader fail, and the
			// client reconnects as for any lost connection.
			k.log.Warn("no answer to a keep-alive ping; reconnecting", "waited", k.timeout.String())
			k.Close()
			return
		}
		// The answer is being read: Read stores lastRead before it
		// takes pingSent, and arms the timer at once when it does.
		// Clearing pingSent here would take the answer from it, and
		// its AfterPing with it.
		return
	}
	// MQTT wants a packet within every keep-alive; ping after three
	// quarters of it, so that a ping on a slow link is not late. A
	// connection that had traffic since the timer was armed, but none
	// for a quarter of the keep-alive, is pinged now rather than at
	// three quarters after that traffic: the agent is awake for this
	// tick anyway, and waiting would cost a second wake for the same
	// ping (moving the timer later when the traffic came would too: the
	// runtime keeps a timer's old deadline as the time to wake up until
	// it is reached). Only a connection busy right now waits.
	quiet := min(k.lastWrite.Load(), k.lastRead.Load())
	if wait := time.Duration(quiet + int64(k.every/4) - now.UnixNano()); wait > 0 {
		k.arm(time.Duration(quiet + int64(k.every*3/4) - now.UnixNano()))
		return
	}
	if k.mute.Load() {
		k.arm(k.every)
		return
	}
	k.pingSent.Store(now.UnixNano())
	k.pings.Add(1)
	// Armed before writing: a write stuck on a dead network is ended by
	// the next tick closing the connection. The next ping is due before
	// the answer's deadline when the keep-alive is the shorter.
	k.arm(min(k.timeout, k.every*3/4))
	if _, err := k.Write(pingreq); err != nil {
		k.log.Debug("keep-alive ping", "err", err)
	}
}

// withKeepAlive returns a copy of an MQTT 3.1.1 CONNECT packet with its
// keep-alive set to every (whole seconds, 1 to 65535).
func withKeepAlive(b []byte, every time.Duration) ([]byte, error) {
	bad := func(why string) error {
		return fmt.Errorf("iothub: the first packet is not an MQTT 3.1.1 CONNECT (%s)", why)
	}
	if len(b) < 2 || b[0] != 0x10 {
		return nil, bad("packet type")
	}
	i := 1
	for ; i < len(b) && i <= 4; i++ {
		if b[i]&0x80 == 0 {
			break
		}
	}
	i++ // past the remaining length
	const name = "\x00\x04MQTT\x04"
	if len(b) < i+len(name)+3 || string(b[i:i+len(name)]) != name {
		return nil, bad("protocol name or level")
	}
	at := i + len(name) + 1 // past the connect flags
	// Whole seconds; below one second the hub is told one (and gets a
	// ping more often than it asked for).
	secs := min(max(int64(every/time.Second), 1), 65535)
	out := append([]byte(nil), b...)
	out[at], out[at+1] = byte(secs>>8), byte(secs)
	return out, nil
}
