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
	// KeepAlive defaults to 120s.
	KeepAlive time.Duration
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
	body    []byte
}

// DeviceClient is an IoT Hub device (or module) client over MQTT 3.1.1 and
// TLS. Run keeps it connected; requests fail fast with ErrNotConnected
// while it is offline.
type DeviceClient struct {
	cfg DeviceConfig
	log *slog.Logger

	mu sync.Mutex
	// pubMu keeps Publish and Disconnect of one paho client apart: a
	// publish racing a disconnect is queued by paho and would block until
	// its write timeout.
	pubMu   sync.RWMutex
	client  paho.Client
	pending map[string]chan twinReply
	// lastVersion is the newest desired $version handed to the callbacks.
	lastVersion int64
	// syncing buffers desired patches that arrive while the full twin is
	// being read after a connect.
	syncing  bool
	buffered []desiredPatch
	resync   chan struct{}

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
		cfg.KeepAlive = 120 * time.Second
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
	return &DeviceClient{cfg: cfg, log: log, pending: map[string]chan twinReply{}, resync: make(chan struct{}, 1)}, nil
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
// patches newer than the twin it read (OnDesired).
func (c *DeviceClient) Run(ctx context.Context) error {
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
	serve:
		for {
			select {
			case <-ctx.Done():
				reason = "stop"
			case err := <-lost:
				reason = "lost"
				c.log.Warn("iothub connection lost", "err", err)
			case <-renew.C:
				reason = "renew"
				c.log.Info("iothub token renewal: reconnecting")
			case <-c.resync:
				if err := c.syncTwin(ctx); err != nil {
					c.log.Warn("twin re-read failed", "err", err)
				}
				continue serve
			}
			break
		}
		renew.Stop()
		c.disconnect()
		switch reason {
		case "stop":
			return nil
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
		SetKeepAlive(c.cfg.KeepAlive).
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
	if err := wait(ctx, client.Connect(), c.cfg.RequestTimeout); err != nil {
		return time.Time{}, fmt.Errorf("connect %s: %w", c.cfg.Addr, err)
	}
	c.mu.Lock()
	c.client = client
	c.syncing = true
	c.buffered = nil
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
	if err := c.syncTwin(ctx); err != nil {
		c.disconnect()
		return time.Time{}, err
	}
	return renewAt, nil
}

func (c *DeviceClient) setConnected(v bool) {
	if c.connected.Swap(v) != v && c.cfg.OnConnection != nil {
		c.cfg.OnConnection(v)
	}
}

func (c *DeviceClient) disconnect() {
	c.mu.Lock()
	client := c.client
	c.client = nil
	for rid, ch := range c.pending {
		close(ch)
		delete(c.pending, rid)
	}
	c.mu.Unlock()
	if client != nil && client.IsConnected() {
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

// syncTwin reads the full twin, hands the desired document to OnTwin, then
// delivers the patches buffered meanwhile that are newer.
func (c *DeviceClient) syncTwin(ctx context.Context) error {
	c.mu.Lock()
	c.syncing = true
	c.mu.Unlock()
	body, err := c.GetTwin(ctx)
	if err != nil {
		return fmt.Errorf("get twin: %w", err)
	}
	var twin struct {
		Desired  map[string]json.RawMessage `json:"desired"`
		Reported map[string]json.RawMessage `json:"reported"`
	}
	if err := json.Unmarshal(body, &twin); err != nil {
		return fmt.Errorf("get twin: %w", err)
	}
	var version int64
	if v, ok := twin.Desired["$version"]; ok {
		_ = json.Unmarshal(v, &version)
	}
	if c.cfg.OnTwin != nil {
		c.cfg.OnTwin(twin.Desired, version, twin.Reported)
	}
	c.mu.Lock()
	c.lastVersion = version
	buffered := c.buffered
	c.buffered, c.syncing = nil, false
	c.mu.Unlock()
	for _, p := range buffered {
		c.deliverDesired(p)
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
		return r, nil
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

func (c *DeviceClient) onMessage(_ paho.Client, m paho.Message) {
	topic := m.Topic()
	switch {
	case strings.HasPrefix(topic, "$iothub/twin/res/"):
		rest := strings.TrimPrefix(topic, "$iothub/twin/res/")
		status, _ := strconv.Atoi(rest[:strings.IndexAny(rest+"/", "/")])
		q := topicQuery(topic)
		ver, _ := strconv.ParseInt(q.Get("$version"), 10, 64)
		c.mu.Lock()
		ch := c.pending[q.Get("$rid")]
		c.mu.Unlock()
		if ch != nil {
			select {
			case ch <- twinReply{status: status, version: ver, body: m.Payload()}:
			default:
			}
		}
	case strings.HasPrefix(topic, "$iothub/twin/PATCH/properties/desired/"):
		ver, _ := strconv.ParseInt(topicQuery(topic).Get("$version"), 10, 64)
		p := desiredPatch{version: ver, body: m.Payload()}
		c.mu.Lock()
		if c.syncing {
			c.buffered = append(c.buffered, p)
			c.mu.Unlock()
			return
		}
		c.mu.Unlock()
		c.deliverDesired(p)
	case strings.HasPrefix(topic, "$iothub/methods/POST/"):
		name := strings.TrimPrefix(topic, "$iothub/methods/POST/")
		if i := strings.Index(name, "/"); i >= 0 {
			name = name[:i]
		}
		rid := topicQuery(topic).Get("$rid")
		payload := m.Payload()
		go c.answerMethod(name, rid, payload)
	}
}

// deliverDesired hands a patch to OnDesired when it is the next version;
// an older one is ignored, and a gap means a patch was missed, so the
// whole twin is read again.
func (c *DeviceClient) deliverDesired(p desiredPatch) {
	c.mu.Lock()
	last := c.lastVersion
	switch {
	case p.version != 0 && p.version <= last:
		c.mu.Unlock()
		return
	case p.version > last+1 && last != 0:
		c.mu.Unlock()
		c.log.Info("desired version gap; re-reading the twin", "last", last, "got", p.version)
		select {
		case c.resync <- struct{}{}:
		default:
		}
		return
	}
	c.lastVersion = p.version
	c.mu.Unlock()
	var patch map[string]json.RawMessage
	if err := json.Unmarshal(p.body, &patch); err != nil {
		c.log.Warn("desired patch is not a JSON object", "version", p.version)
		return
	}
	if c.cfg.OnDesired != nil {
		c.cfg.OnDesired(patch, p.version)
	}
}

func (c *DeviceClient) answerMethod(name, rid string, payload []byte) {
	status, body := 501, []byte(`{"error":"no method handler"}`)
	if c.cfg.OnMethod != nil {
		ctx, cancel := context.WithTimeout(context.Background(), c.cfg.RequestTimeout)
		status, body = c.cfg.OnMethod(ctx, name, payload)
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
