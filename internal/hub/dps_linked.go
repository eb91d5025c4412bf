package hub

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
)

// The MQTT listener of a hub with linked hubs: it completes the TLS
// handshake, reads the server name the device asked for (SNI) and hands
// the connection to the broker of that hub. Each linked hub has a broker,
// a hook and a registry of its own, so nothing of one hub reaches a device
// of another, even one with the same device id.

// handshakeTimeout bounds a TLS handshake on the MQTT listener.
const handshakeTimeout = 10 * time.Second

// sniListener is the MQTT listener of the hub that owns the sockets.
type sniListener struct {
	h    *Hub
	id   string
	addr string
	cfg  *tls.Config

	mu     sync.Mutex
	ln     net.Listener
	closed bool
	log    *slog.Logger
	wg     sync.WaitGroup // handshakes in flight
}

func newSNIListener(h *Hub, id, addr string, cfg *tls.Config) *sniListener {
	return &sniListener{h: h, id: id, addr: addr, cfg: cfg}
}

func (l *sniListener) ID() string       { return l.id }
func (l *sniListener) Protocol() string { return "tcp" }

func (l *sniListener) Address() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ln != nil {
		return l.ln.Addr().String()
	}
	return l.addr
}

func (l *sniListener) Init(log *slog.Logger) error {
	ln, err := net.Listen("tcp", l.addr)
	if err != nil {
		return err
	}
	l.mu.Lock()
	l.ln, l.log = ln, log
	l.mu.Unlock()
	return nil
}

// Serve accepts until Close; the broker runs it in its own goroutine.
func (l *sniListener) Serve(establish listeners.EstablishFn) {
	for {
		c, err := l.ln.Accept()
		if err != nil {
			return
		}
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			c.Close()
			return
		}
		l.wg.Add(1)
		l.mu.Unlock()
		go func() {
			defer l.wg.Done()
			l.dispatch(c, establish)
		}()
	}
}

func (l *sniListener) dispatch(raw net.Conn, establish listeners.EstablishFn) {
	tc := tls.Server(raw, l.cfg)
	ctx, cancel := context.WithTimeout(context.Background(), handshakeTimeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		raw.Close()
		return
	}
	l.mu.Lock()
	closed := l.closed
	l.mu.Unlock()
	if closed {
		tc.Close()
		return
	}
	target := l.h
	if c := l.h.hubByHost(tc.ConnectionState().ServerName); c != nil {
		target = c
	}
	if target == l.h {
		if err := establish(l.id, tc); err != nil {
			l.log.Debug("mqtt connection ended", "error", err)
		}
		return
	}
	target.mqttChild.establish(tc)
}

func (l *sniListener) Close(closeClients listeners.CloseFn) {
	l.mu.Lock()
	already := l.closed
	l.closed = true
	ln := l.ln
	l.mu.Unlock()
	if !already {
		closeClients(l.id)
	}
	if ln != nil {
		_ = ln.Close()
	}
}

// childListener feeds a linked hub's broker with the connections the
// owner's listener handed over.
type childListener struct {
	id string

	mu     sync.Mutex
	fn     listeners.EstablishFn
	done   chan struct{}
	closed bool
	log    *slog.Logger
}

func (l *childListener) ID() string       { return l.id }
func (l *childListener) Protocol() string { return "tcp" }
func (l *childListener) Address() string  { return "(shared)" }

func (l *childListener) Init(log *slog.Logger) error {
	l.mu.Lock()
	l.log = log
	l.mu.Unlock()
	return nil
}

// Serve keeps the establish function and waits for Close.
func (l *childListener) Serve(establish listeners.EstablishFn) {
	l.mu.Lock()
	l.fn = establish
	done := l.done
	l.mu.Unlock()
	<-done
}

// establish runs a handed-over connection in the caller's goroutine.
func (l *childListener) establish(c net.Conn) {
	l.mu.Lock()
	fn, closed := l.fn, l.closed
	l.mu.Unlock()
	if fn == nil || closed {
		c.Close()
		return
	}
	if err := fn(l.id, c); err != nil {
		l.log.Debug("mqtt connection ended", "error", err)
	}
}

func (l *childListener) Close(closeClients listeners.CloseFn) {
	l.mu.Lock()
	already := l.closed
	l.closed = true
	l.mu.Unlock()
	if !already {
		closeClients(l.id)
		close(l.done)
	}
}

// startChildMQTT gives a linked hub a broker fed by the owner's listener.
func (h *Hub) startChildMQTT() error {
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumClientWritesPending = 64
	caps.MaximumMessageExpiryInterval = 0
	caps.MinimumProtocolVersion = 4
	caps.ReceiveMaximum = 256
	h.mqtt = mqtt.New(&mqtt.Options{
		Logger:                   h.log.With("component", "mqtt"),
		InlineClient:             true,
		Capabilities:             caps,
		ClientNetWriteBufferSize: 2048,
		ClientNetReadBufferSize:  2048,
		SysTopicResendInterval:   1 << 30,
	})
	if err := h.mqtt.AddHook(&deviceHook{h: h}, nil); err != nil {
		return fmt.Errorf("mqtt hook: %w", err)
	}
	h.mqttChild = &childListener{id: "mqtts-" + strings.ToLower(h.hostname), done: make(chan struct{})}
	if err := h.mqtt.AddListener(h.mqttChild); err != nil {
		return fmt.Errorf("mqtt listener of %s: %w", h.hostname, err)
	}
	return h.mqtt.Serve()
}
