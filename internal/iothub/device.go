package iothub

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/twinlet/twinlet/internal/backoff"
)

// APIVersion is the IoT Hub device API version sent in the MQTT username.
const APIVersion = "2021-04-12"

// DefaultKeepAlive is the device's MQTT keep-alive unless configured:
// the Azure IoT C SDK's (Python's is 60 s, Node's 180 s, Java's 230 s,
// C#'s 300 s). An idle device pings every 180 s, half as often as with
// the 120 s it had, and a NAT that forgets a connection quiet for 4
// minutes (the default idle timeout of Azure's NAT gateway and load
// balancer) still keeps it.
const DefaultKeepAlive = 240 * time.Second

// DeviceConfig configures a DeviceClient.
type DeviceConfig struct {
	// HostName, DeviceID and ModuleID name the identity.
	HostName, DeviceID, ModuleID string
	// Signer signs SAS tokens; nil when Certificate is set.
	Signer Signer
	// Certificate is an X.509 client certificate (CN = device id).
	Certificate *tls.Certificate
	// CAPEM adds CA certificates (PEM) to the system roots, for an
	// emulator or a proxy; TLS verification is always on.
	CAPEM []byte
	// Addr overrides the address dialed (default HostName:8883); the
	// server name checked stays HostName.
	Addr string
	// TokenLifetime is the SAS lifetime; the client reconnects with a
	// fresh token at 80% of it. Default one hour; expiries are whole
	// seconds, so use at least a few seconds (tests use 2s).
	TokenLifetime time.Duration
	// MinBackoff and MaxBackoff bound reconnect delays (defaults 1s, 60s).
	MinBackoff, MaxBackoff time.Duration
	// KeepAlive is the MQTT keep-alive (default DefaultKeepAlive): the
	// client pings after three quarters of it without traffic, the hub
	// drops the connection after 1.5 times it.
	KeepAlive time.Duration
	// AfterPing, when set, is called each time the hub answers a
	// keep-alive ping, on the connection's reader once the answer has
	// been read whole, as it comes back for the next packet: it must not
	// block. An idle agent hands back the pages the ping touched, in the
	// same wake.
	AfterPing func()
	// RequestTimeout bounds a twin request (default 30s).
	RequestTimeout time.Duration
	// Logger; nil discards.
	Logger *slog.Logger

	// OnTwin receives the full desired document after every connect,
	// and again whenever a gap in desired versions forced a re-read.
	OnTwin func(desired map[string]json.RawMessage, version int64, reported map[string]json.RawMessage)
	// OnDesired receives each desired patch newer than the last seen
	// version, in order.
	OnDesired func(patch map[string]json.RawMessage, version int64)
	// OnMethod answers a direct method with a status and a JSON body.
	OnMethod func(ctx context.Context, name string, payload []byte) (int, []byte)
	// OnConnection reports connection changes.
	OnConnection func(connected bool)
	// OnConnectResult, when set, receives the outcome of every connect
	// attempt: nil once connected, else the error (IsUnauthorized tells
	// a hub that refused the credentials). It must not block.
	OnConnectResult func(err error)
}

// StatusError is a non-success status from a twin request. A 4xx other
// than 429 is the caller's fault and must not be retried as is.
type StatusError struct {
	Op     string
	Status int
	Body   string
}

func (e *StatusError) Error() string {
	msg := fmt.Sprintf("%s: status %d", e.Op, e.Status)
	if e.Body != "" {
		b := e.Body
		if len(b) > 200 {
			b = b[:200] + "…"
		}
		msg += ": " + b
	}
	return msg
}

// Throttled reports a 429 answer.
func (e *StatusError) Throttled() bool { return e.Status == 429 }

// Retryable reports answers worth retrying later (429 and 5xx).
func (e *StatusError) Retryable() bool { return e.Status == 429 || e.Status >= 500 }

// ErrNotConnected is returned by requests made while offline.
var ErrNotConnected = errors.New("iothub: not connected")

type twinReply struct {
	status  int
	version int64
	err     error
	body    []byte
}

// maxQueuedPatches bounds the desired patches waiting for the dispatcher;
// beyond it they are replaced by one full twin read, which supersedes them.
const maxQueuedPatches = 1000

type evKind int

const (
	// evConnection reports a connection change (up).
	evConnection evKind = iota
	// evSync asks for a full twin read, after a connect or a gap.
	evSync
	// evPatch is a desired patch.
	evPatch
)

// event is what paho's goroutine hands to the dispatcher.
type event struct {
	kind  evKind
	up    bool
	patch desiredPatch
}

// DeviceClient is an IoT Hub device (or module) client over MQTT 3.1.1 and
// TLS. Run keeps it connected; requests fail fast with ErrNotConnected
// while it is offline.
//
// Every callback but OnMethod runs on one dispatcher goroutine that Run
// owns, never on paho's: paho's goroutine only queues what arrives, so the
// callbacks see connection changes, twin reads and desired patches in the
// order they happened, and desired versions only ever increase between two
// twin reads. Direct methods run on goroutines of their own (a method may
// take long), each with a context that Run cancels and waits for.
type DeviceClient struct {
	cfg DeviceConfig
	log *slog.Logger

	mu sync.Mutex
	// pubMu keeps Publish and Disconnect of one paho client apart: a
	// publish racing a disconnect is queued by paho and would block until
	// its write timeout.
	pubMu  sync.RWMutex
	client paho.Client
	// conn is the connection paho runs on, for its keep-alive counters.
	conn    *keepConn
	pending map[string]chan twinReply
	// lost is the current connection's loss channel; the dispatcher reports
	// a failed twin read on it, which makes Run reconnect.
	lost chan<- error
	// methodCtx is cancelled when Run stops; methods counts the direct
	// method handlers running (Add only under mu while methodCtx is live).
	methodCtx context.Context
	methods   sync.WaitGroup

	// The dispatcher's queue: paho's goroutine appends, the dispatcher
	// takes. qwake has room for one signal.
	qmu     sync.Mutex
	queue   []event
	patches int
	qwake   chan struct{}

	// lastVersion is the newest desired $version handed to the callbacks;
	// the dispatcher's alone.
	lastVersion int64

	rid       atomic.Uint64
	connected atomic.Bool
	// Reconnects counts successful connects (the first included), and
	// Renewals the reconnects made to renew the token; for tests and
	// metrics.
	Reconnects atomic.Int64
	Renewals   atomic.Int64
}

type desiredPatch struct {
	version int64
	body    []byte
}

// NewDeviceClient checks the configuration and returns a client; it does
// not connect (Run does).
func NewDeviceClient(cfg DeviceConfig) (*DeviceClient, error) {
	if cfg.HostName == "" || cfg.DeviceID == "" {
		return nil, errors.New("iothub device: HostName and DeviceID are required")
	}
	if cfg.Signer == nil && cfg.Certificate == nil {
		return nil, errors.New("iothub device: a Signer or a Certificate is required")
	}
	if cfg.TokenLifetime == 0 {
		cfg.TokenLifetime = time.Hour
	}
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff = time.Second
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = time.Minute
	}
	if cfg.KeepAlive == 0 {
		cfg.KeepAlive = DefaultKeepAlive
	}
	if cfg.RequestTimeout == 0 {
		cfg.RequestTimeout = 30 * time.Second
	}
	if cfg.Addr == "" {
		cfg.Addr = net.JoinHostPort(cfg.HostName, "8883")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &DeviceClient{cfg: cfg, log: log, pending: map[string]chan twinReply{}, qwake: make(chan struct{}, 1)}, nil
}

// Connected reports whether the client is connected now.
func (c *DeviceClient) Connected() bool { return c.connected.Load() }

func (c *DeviceClient) clientID() string {
	if c.cfg.ModuleID != "" {
		return c.cfg.DeviceID + "/" + c.cfg.ModuleID
	}
	return c.cfg.DeviceID
}

func (c *DeviceClient) username() string {
	return c.cfg.HostName + "/" + c.clientID() + "/?api-version=" + APIVersion
}

// Run connects and keeps the client connected until ctx ends: it
// reconnects with exponential backoff and jitter after a loss, and with a
// fresh token at 80% of the token's lifetime. After every connect it
// subscribes, reads the full twin (OnTwin) and then delivers desired
// patches newer than the twin it read (OnDesired). When Run returns, every
// goroutine it started (the dispatcher, method handlers, paho's) is gone.
func (c *DeviceClient) Run(ctx context.Context) error {
	methodCtx, cancelMethods := context.WithCancel(ctx)
	c.mu.Lock()
	c.methodCtx = methodCtx
	c.mu.Unlock()
	dispCtx, stopDispatch := context.WithCancel(context.Background())
	dispatched := make(chan struct{})
	go func() { defer close(dispatched); c.dispatch(ctx, dispCtx) }()
	defer func() {
		c.mu.Lock()
		cancelMethods()
		c.mu.Unlock()
		c.waitMethods()
		c.disconnect()
		stopDispatch()
		<-dispatched
	}()
	failures := 0
	for {
		lost := make(chan error, 1)
		renewAt, err := c.connect(ctx, lost)
		if c.cfg.OnConnectResult != nil && ctx.Err() == nil {
			c.cfg.OnConnectResult(err)
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			failures++
			d := c.backoff(failures)
			c.log.Warn("iothub connect failed", "err", err, "retry_in", d.Round(time.Millisecond).String())
			if !backoff.Sleep(ctx, d) {
				return nil
			}
			continue
		}
		connectedAt := time.Now()
		renew := time.NewTimer(time.Until(renewAt))
		reason := ""
		select {
		case <-ctx.Done():
			reason = "stop"
		case err := <-lost:
			reason = "lost"
			c.log.Warn("iothub connection lost", "err", err)
		case <-renew.C:
			reason = "renew"
			c.log.Info("iothub token renewal: reconnecting")
		}
		renew.Stop()
		if reason == "stop" {
			return nil
		}
		c.disconnect()
		switch reason {
		case "renew":
			c.Renewals.Add(1)
			failures = 0
		case "lost":
			// A connection that lasted resets the backoff; one the hub
			// drops at once (a hub refusing this client after the
			// CONNACK) keeps growing it, so there is no reconnect storm.
			if time.Since(connectedAt) >= c.cfg.MaxBackoff {
				failures = 0
			}
			failures++
			if !backoff.Sleep(ctx, c.backoff(failures)) {
				return nil
			}
		}
	}
}

// waitMethods waits for the method handlers, which were cancelled, for
// at most RequestTimeout: a handler that ignores its context is reported,
// not waited for forever.
func (c *DeviceClient) waitMethods() {
	done := make(chan struct{})
	go func() { defer close(done); c.methods.Wait() }()
	t := time.NewTimer(c.cfg.RequestTimeout)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		c.log.Error("direct method handlers still running after shutdown; not waiting for them")
	}
}

// backoff is exponential from MinBackoff to MaxBackoff with jitter.
func (c *DeviceClient) backoff(n int) time.Duration {
	return backoff.Delay(c.cfg.MinBackoff, c.cfg.MaxBackoff, n)
}

func (c *DeviceClient) tlsConfig() (*tls.Config, error) {
	roots, err := x509.SystemCertPool()
	if err != nil || roots == nil {
		roots = x509.NewCertPool()
	}
	if len(c.cfg.CAPEM) > 0 && !roots.AppendCertsFromPEM(c.cfg.CAPEM) {
		return nil, errors.New("iothub device: no certificate in the CA file")
	}
	tc := &tls.Config{ServerName: c.cfg.HostName, RootCAs: roots, MinVersion: tls.VersionTLS12}
	if c.cfg.Certificate != nil {
		tc.Certificates = []tls.Certificate{*c.cfg.Certificate}
	}
	return tc, nil
}

// dial opens the TLS connection paho speaks MQTT over, with the
// keep-alive of keepConn.
func (c *DeviceClient) dial(uri *url.URL, o paho.ClientOptions) (net.Conn, error) {
	d := &net.Dialer{Timeout: o.ConnectTimeout}
	conn, err := tls.DialWithDialer(d, "tcp", uri.Host, o.TLSConfig)
	if err != nil {
		return nil, err
	}
	k := newKeepConn(conn, c.cfg.KeepAlive, c.cfg.RequestTimeout, c.log)
	k.afterPing = c.cfg.AfterPing
	c.mu.Lock()
	c.conn = k
	c.mu.Unlock()
	return k, nil
}

// connect dials, subscribes and reads the twin. It returns when the
// token must be renewed.
func (c *DeviceClient) connect(ctx context.Context, lost chan<- error) (time.Time, error) {
	tc, err := c.tlsConfig()
	if err != nil {
		return time.Time{}, err
	}
	// A token's expiry is in whole seconds: renew at 80% of the lifetime
	// it really has, which matters for short lifetimes.
	now := time.Now()
	expiry := now.Add(c.cfg.TokenLifetime).Truncate(time.Second)
	renewAt := now.Add(expiry.Sub(now) * 8 / 10)
	opts := paho.NewClientOptions().
		AddBroker("tls://" + c.cfg.Addr).
		SetClientID(c.clientID()).
		SetUsername(c.username()).
		SetTLSConfig(tc).
		SetProtocolVersion(4).
		SetCleanSession(true).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetKeepAlive(0). // keepConn does it, see keepalive.go
		SetCustomOpenConnectionFn(c.dial).
		SetWriteTimeout(c.cfg.RequestTimeout).
		SetConnectTimeout(c.cfg.RequestTimeout).
		SetOrderMatters(true).
		SetConnectionLostHandler(func(_ paho.Client, err error) {
			c.setConnected(false)
			select {
			case lost <- err:
			default:
			}
		})
	if c.cfg.Signer != nil {
		tok, err := c.cfg.Signer.Sign(ctx, DeviceResource(c.cfg.HostName, c.cfg.DeviceID, c.cfg.ModuleID), expiry)
		if err != nil {
			return time.Time{}, fmt.Errorf("sign: %w", err)
		}
		opts.SetPassword(tok)
	} else {
		renewAt = time.Now().Add(24 * 365 * time.Hour) // certificates need no renewal
	}
	client := paho.NewClient(opts)
	tok := client.Connect()
	if err := wait(ctx, tok, c.cfg.RequestTimeout); err != nil {
		// Given up on: paho may still complete this connect later, so
		// disconnect it (paho aborts a connect in progress) and wait for
		// paho to let go (within its connect timeout), so that no connect
		// outlives Run.
		client.Disconnect(0)
		tok.WaitTimeout(c.cfg.RequestTimeout)
		return time.Time{}, fmt.Errorf("connect %s: %w", c.cfg.Addr, err)
	}
	c.mu.Lock()
	c.client = client
	c.lost = lost
	c.mu.Unlock()
	subs := map[string]byte{
		"$iothub/twin/res/#":                      1,
		"$iothub/twin/PATCH/properties/desired/#": 1,
	}
	if c.cfg.OnMethod != nil {
		subs["$iothub/methods/POST/#"] = 1
	}
	if err := wait(ctx, client.SubscribeMultiple(subs, c.onMessage), c.cfg.RequestTimeout); err != nil {
		c.disconnect()
		return time.Time{}, fmt.Errorf("subscribe: %w", err)
	}
	c.setConnected(true)
	c.Reconnects.Add(1)
	// The dispatcher reads the twin; a failure there is a lost connection.
	c.push(event{kind: evSync})
	return renewAt, nil
}

func (c *DeviceClient) setConnected(v bool) {
	if c.connected.Swap(v) != v && c.cfg.OnConnection != nil {
		c.push(event{kind: evConnection, up: v})
	}
}

func (c *DeviceClient) disconnect() {
	c.mu.Lock()
	client := c.client
	c.client, c.lost = nil, nil
	for rid, ch := range c.pending {
		close(ch)
		delete(c.pending, rid)
	}
	c.mu.Unlock()
	if client != nil {
		c.pubMu.Lock()
		client.Disconnect(250)
		c.pubMu.Unlock()
	}
	c.setConnected(false)
}

// publish publishes on client unless a disconnect is under way.
func (c *DeviceClient) publish(client paho.Client, topic string, qos byte, body []byte) paho.Token {
	c.pubMu.RLock()
	defer c.pubMu.RUnlock()
	return client.Publish(topic, qos, false, body)
}

func wait(ctx context.Context, tok paho.Token, timeout time.Duration) error {
	select {
	case <-tok.Done():
		return tok.Error()
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(timeout):
		return errors.New("timed out")
	}
}

// parseTwin decodes a twin document ({"desired":…,"reported":…}); the
// desired $version must be a positive integer, since every patch after it
// is ordered by it.
func parseTwin(body []byte) (desired, reported map[string]json.RawMessage, version int64, err error) {
	var twin struct {
		Desired  map[string]json.RawMessage `json:"desired"`
		Reported map[string]json.RawMessage `json:"reported"`
	}
	if err := json.Unmarshal(body, &twin); err != nil {
		return nil, nil, 0, fmt.Errorf("get twin: %w", err)
	}
	v, ok := twin.Desired["$version"]
	if !ok {
		return nil, nil, 0, errors.New("get twin: desired has no $version")
	}
	if err := json.Unmarshal(v, &version); err != nil || version < 1 {
		return nil, nil, 0, fmt.Errorf("get twin: desired $version %s is not a positive integer", v)
	}
	return twin.Desired, twin.Reported, version, nil
}

// topicVersion is the $version of a desired patch notification.
func topicVersion(topic string) (int64, error) {
	raw := topicQuery(topic).Get("$version")
	v, err := strconv.ParseInt(raw, 10, 64)
	if err != nil || v < 1 {
		return 0, fmt.Errorf("desired patch: $version %q is not a positive integer", raw)
	}
	return v, nil
}

// syncTwin reads the full twin and hands the desired document to OnTwin;
// the dispatcher's alone.
func (c *DeviceClient) syncTwin(ctx context.Context) error {
	body, err := c.GetTwin(ctx)
	if err != nil {
		return fmt.Errorf("get twin: %w", err)
	}
	desired, reported, version, err := parseTwin(body)
	if err != nil {
		return err
	}
	c.lastVersion = version
	if c.cfg.OnTwin != nil {
		c.cfg.OnTwin(desired, version, reported)
	}
	return nil
}

// GetTwin reads the twin's properties ({"desired":…,"reported":…}).
func (c *DeviceClient) GetTwin(ctx context.Context) ([]byte, error) {
	r, err := c.request(ctx, "$iothub/twin/GET/", nil)
	if err != nil {
		return nil, err
	}
	if r.status != 200 {
		return nil, &StatusError{Op: "get twin", Status: r.status, Body: string(r.body)}
	}
	return r.body, nil
}

// PatchReported sends a reported-properties patch and returns the new
// reported $version. A *StatusError says what the hub answered: 429
// (Throttled) and 5xx are worth a later retry, 400 is not.
func (c *DeviceClient) PatchReported(ctx context.Context, patch []byte) (int64, error) {
	r, err := c.request(ctx, "$iothub/twin/PATCH/properties/reported/", patch)
	if err != nil {
		return 0, err
	}
	if r.status != 204 && r.status != 200 {
		return 0, &StatusError{Op: "patch reported", Status: r.status, Body: string(r.body)}
	}
	return r.version, nil
}

func (c *DeviceClient) request(ctx context.Context, topicPrefix string, body []byte) (twinReply, error) {
	rid := strconv.FormatUint(c.rid.Add(1), 10)
	ch := make(chan twinReply, 1)
	c.mu.Lock()
	client := c.client
	if client == nil {
		c.mu.Unlock()
		return twinReply{}, ErrNotConnected
	}
	c.pending[rid] = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.pending, rid)
		c.mu.Unlock()
	}()
	if body == nil {
		body = []byte{}
	}
	if err := wait(ctx, c.publish(client, topicPrefix+"?$rid="+rid, 1, body), c.cfg.RequestTimeout); err != nil {
		return twinReply{}, fmt.Errorf("publish: %w", err)
	}
	t := time.NewTimer(c.cfg.RequestTimeout)
	defer t.Stop()
	select {
	case r, ok := <-ch:
		if !ok {
			return twinReply{}, ErrNotConnected
		}
		return r, r.err
	case <-ctx.Done():
		return twinReply{}, ctx.Err()
	case <-t.C:
		return twinReply{}, errors.New("twin request timed out")
	}
}

// topicQuery parses the "?k=v&…" tail of a topic.
func topicQuery(topic string) url.Values {
	i := strings.LastIndex(topic, "?")
	if i < 0 {
		return url.Values{}
	}
	v, _ := url.ParseQuery(topic[i+1:])
	return v
}

// onMessage runs on paho's goroutine: it routes a twin reply to its
// request and queues everything else for the dispatcher or a method
// goroutine; it never blocks and never calls a callback.
func (c *DeviceClient) onMessage(_ paho.Client, m paho.Message) {
	topic := m.Topic()
	switch {
	case strings.HasPrefix(topic, "$iothub/twin/res/"):
		rest := strings.TrimPrefix(topic, "$iothub/twin/res/")
		r := twinReply{body: m.Payload()}
		var err error
		if r.status, err = strconv.Atoi(rest[:strings.IndexAny(rest+"/", "/")]); err != nil {
			r.err = fmt.Errorf("twin reply %q: bad status", topic)
		}
		q := topicQuery(topic)
		if raw := q.Get("$version"); raw != "" && r.err == nil {
			if r.version, err = strconv.ParseInt(raw, 10, 64); err != nil {
				r.err = fmt.Errorf("twin reply: $version %q is not an integer", raw)
			}
		}
		// Under mu: disconnect closes these channels under mu too, so a
		// reply never meets a closed channel. The send never blocks.
		c.mu.Lock()
		if ch := c.pending[q.Get("$rid")]; ch != nil {
			select {
			case ch <- r:
			default:
			}
		}
		c.mu.Unlock()
	case strings.HasPrefix(topic, "$iothub/twin/PATCH/properties/desired/"):
		ver, err := topicVersion(topic)
		if err != nil {
			// It cannot be ordered: read the whole twin instead.
			c.log.Warn("desired patch ignored; re-reading the twin", "err", err)
			c.push(event{kind: evSync})
			return
		}
		c.push(event{kind: evPatch, patch: desiredPatch{version: ver, body: m.Payload()}})
	case strings.HasPrefix(topic, "$iothub/methods/POST/"):
		name := strings.TrimPrefix(topic, "$iothub/methods/POST/")
		if i := strings.Index(name, "/"); i >= 0 {
			name = name[:i]
		}
		rid := topicQuery(topic).Get("$rid")
		payload := m.Payload()
		c.mu.Lock()
		ctx := c.methodCtx
		if ctx == nil || ctx.Err() != nil {
			c.mu.Unlock()
			return // stopping: the hub times the call out
		}
		c.methods.Add(1)
		c.mu.Unlock()
		go func() {
			defer c.methods.Done()
			c.answerMethod(ctx, name, rid, payload)
		}()
	}
}

// push queues an event for the dispatcher. Past maxQueuedPatches queued
// patches, they are all replaced by one twin read.
func (c *DeviceClient) push(e event) {
	c.qmu.Lock()
	if e.kind == evPatch {
		c.patches++
		if c.patches > maxQueuedPatches {
			kept := c.queue[:0]
			for _, q := range c.queue {
				if q.kind == evConnection {
					kept = append(kept, q)
				}
			}
			c.queue, c.patches = kept, 0
			e = event{kind: evSync}
		}
	}
	c.queue = append(c.queue, e)
	c.qmu.Unlock()
	select {
	case c.qwake <- struct{}{}:
	default:
	}
}

// take returns the oldest queued event, or false once stop ends.
func (c *DeviceClient) take(stop context.Context) (event, bool) {
	for {
		c.qmu.Lock()
		if len(c.queue) > 0 {
			e := c.queue[0]
			c.queue[0] = event{}
			c.queue = c.queue[1:]
			if e.kind == evPatch {
				c.patches--
			}
			if len(c.queue) == 0 {
				c.queue = nil // let the backing array go
			}
			c.qmu.Unlock()
			return e, true
		}
		c.qmu.Unlock()
		select {
		case <-c.qwake:
		case <-stop.Done():
			return event{}, false
		}
	}
}

// dispatch delivers queued events to the callbacks, in order, until stop
// ends; once ctx (Run's) ends it delivers connection changes only.
func (c *DeviceClient) dispatch(ctx, stop context.Context) {
	for {
		e, ok := c.take(stop)
		if !ok {
			return
		}
		switch e.kind {
		case evConnection:
			c.cfg.OnConnection(e.up)
		case evSync:
			if ctx.Err() == nil {
				c.resync(ctx)
			}
		case evPatch:
			if ctx.Err() == nil {
				c.deliverDesired(ctx, e.patch)
			}
		}
	}
}

// resync reads the whole twin; a failure is the connection's loss, so Run
// reconnects (with backoff) and the connect reads the twin again.
func (c *DeviceClient) resync(ctx context.Context) {
	err := c.syncTwin(ctx)
	if err == nil || ctx.Err() != nil {
		return
	}
	c.log.Warn("twin read failed; reconnecting", "err", err)
	c.mu.Lock()
	lost := c.lost
	c.mu.Unlock()
	if lost != nil {
		select {
		case lost <- err:
		default:
		}
	}
}

// deliverDesired hands a patch to OnDesired when it is the next version;
// an older one is ignored, and a gap means a patch was missed, so the
// whole twin is read again.
func (c *DeviceClient) deliverDesired(ctx context.Context, p desiredPatch) {
	last := c.lastVersion
	switch {
	case last == 0:
		return // before the first twin read, which every connect queues and which holds it
	case p.version <= last:
		return
	case p.version > last+1:
		c.log.Info("desired version gap; re-reading the twin", "last", last, "got", p.version)
		c.resync(ctx)
		return
	}
	var patch map[string]json.RawMessage
	if err := json.Unmarshal(p.body, &patch); err != nil || patch == nil {
		c.log.Warn("desired patch is not a JSON object; re-reading the twin", "version", p.version)
		c.resync(ctx)
		return
	}
	c.lastVersion = p.version
	if c.cfg.OnDesired != nil {
		c.cfg.OnDesired(patch, p.version)
	}
}

func (c *DeviceClient) answerMethod(ctx context.Context, name, rid string, payload []byte) {
	status, body := 501, []byte(`{"error":"no method handler"}`)
	if c.cfg.OnMethod != nil {
		mctx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
		status, body = c.cfg.OnMethod(mctx, name, payload)
		cancel()
	}
	c.mu.Lock()
	client := c.client
	c.mu.Unlock()
	if client == nil {
		return
	}
	tok := c.publish(client, fmt.Sprintf("$iothub/methods/res/%d/?$rid=%s", status, url.QueryEscape(rid)), 0, body)
	_ = wait(context.Background(), tok, c.cfg.RequestTimeout)
}
