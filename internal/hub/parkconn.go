package hub

import (
	"crypto/tls"
	"errors"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// parkConn is the TLS connection the broker reads a device from. It reads
// exactly as its *tls.Conn does (the same bytes, errors and deadlines),
// but waits for the device's next packet with a shallow stack.
//
// An idle connection spends its life in the broker's reader goroutine,
// parked until the device sends something. Parked in tls.Conn.Read
// (readRecordOrCCS, readFromUntil, bytes.Buffer.ReadFrom, netFD.Read, the
// poller) those frames use over 4 KiB, so the runtime, which halves a
// stack at a collection only while under a quarter of it is in use, keeps
// a 16 KiB stack per device. parkConn instead first takes what crypto/tls
// already holds (a deadline in the past makes tls.Conn.Read return
// buffered records and leave a partial one buffered: a timeout is a
// temporary error there), then waits for the socket to become readable
// through syscall.RawConn, a few small frames, and only then calls
// tls.Conn.Read with the caller's deadline, which finds data (or the
// error) waiting and returns without parking.
type parkConn struct {
	*tls.Conn
	raw syscall.RawConn

	mu sync.Mutex
	rd time.Time // the read deadline the caller set
}

// pastDeadline is a read deadline that has always expired: a read under it
// returns only what is already buffered.
var pastDeadline = time.Unix(1, 0)

// newParkConn wraps tc, whose transport is raw; it returns tc itself when
// raw offers no raw file descriptor to wait on.
func newParkConn(tc *tls.Conn, raw net.Conn) net.Conn {
	sc, ok := raw.(syscall.Conn)
	if !ok {
		return tc
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return tc
	}
	return &parkConn{Conn: tc, raw: rc}
}

// tlsConnOf returns the TLS connection under a broker connection, if any.
func tlsConnOf(c net.Conn) (*tls.Conn, bool) {
	switch c := c.(type) {
	case *tls.Conn:
		return c, true
	case *parkConn:
		return c.Conn, true
	}
	return nil, false
}

// SetDeadline sets the read deadline parkConn honours and the TLS
// connection's write deadline.
func (c *parkConn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.Conn.SetWriteDeadline(t)
}

// SetReadDeadline sets the deadline for Read, waiting included.
func (c *parkConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.rd = t
	return c.Conn.SetReadDeadline(t)
}

// restoreDeadline puts the caller's read deadline back on the socket.
func (c *parkConn) restoreDeadline() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.Conn.SetReadDeadline(c.rd)
}

// Read reads like tls.Conn.Read.
func (c *parkConn) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return c.Conn.Read(b)
	}
	for {
		// What crypto/tls holds already: decrypted bytes, whole records.
		// Under the past deadline the socket itself is not read.
		c.mu.Lock()
		err := c.Conn.SetReadDeadline(pastDeadline)
		c.mu.Unlock()
		if err != nil {
			// A closed socket: tls.Conn.Read still hands out what it
			// holds, then says so.
			return c.Conn.Read(b)
		}
		n, err := c.Conn.Read(b)
		// Fails only on a closed socket, which the next read reports.
		_ = c.restoreDeadline()
		if err == nil || !isTimeout(err) {
			return n, err
		}
		if n > 0 {
			// Data, then a timeout while crypto/tls looked for a
			// close_notify behind it in a partial record: the data is
			// the answer, the rest comes with the next read.
			return n, nil
		}
		// Nothing buffered: wait until the socket has bytes, EOF or an
		// error, under the caller's deadline.
		if err := c.raw.Read(readable); err != nil {
			// A timeout or a closed connection: tls.Conn.Read meets the
			// same condition at once and reports it as it always has.
			return c.Conn.Read(b)
		}
		n, err = c.Conn.Read(b)
		if n > 0 || err != nil {
			return n, err
		}
	}
}

// readable is the syscall.RawConn read function of parkConn: done when
// the socket has something for a read (data, EOF or an error), so that
// the poller parks the goroutine until then. It asks poll(2) rather than
// reading with MSG_PEEK, which would take a pending error (a reset) off
// the socket before crypto/tls sees it.
func readable(fd uintptr) bool {
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(pfd, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		// On any other failure let the read itself report.
		return err != nil || (n > 0 && pfd[0].Revents != 0)
	}
}

// isTimeout reports whether err is a deadline's.
func isTimeout(err error) bool {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
