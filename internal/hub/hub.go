// Package hub is twinhub: a local, protocol-faithful Azure IoT Hub for
// development and tests. Devices connect over MQTT 3.1.1 with TLS; back-end
// services use the HTTPS REST API. A Hub embeds in tests on ephemeral
// ports:
//
//	h, err := hub.New(hub.Options{MQTTAddr: "127.0.0.1:0", HTTPSAddr: "127.0.0.1:0"})
//	err = h.Start(ctx)
//	defer h.Close()
//	cs, err := h.CreateDevice("d1")   // a device connection string
//
// Replies and notifications to devices are written to the one connection
// they belong to, never routed through the broker's topic tree: the reply
// topics are the same strings for every device.
package hub

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"

	"github.com/twinlet/twinlet/internal/iothub"
)

// Options configure a Hub. The zero value is a memory-only hub named
// localhost on the standard ports 8883 and 443.
type Options struct {
	// Dir keeps the CA, server certificate, policies, registry and twins.
	// Empty keeps everything in memory.
	Dir string
	// Hostname is the hub's host name: in connection strings, in the server
	// certificate and in the SAS resource URIs it accepts. Default localhost.
	Hostname string
	// MQTTAddr is the device endpoint (MQTT over TLS). Default ":8883".
	MQTTAddr string
	// HTTPSAddr is the service endpoint (REST over HTTPS). Default ":443".
	HTTPSAddr string
	// Logger receives the hub's logs; default discards them.
	Logger *slog.Logger
	// Faults are injected from the start; see SetFaults.
	Faults Faults
	// EventBuffer is how many device-to-cloud messages the hub keeps;
	// default 10000.
	EventBuffer int

	// The Device Provisioning Service (dps.go).

	// DPSHostname is the DPS host name, served on the hub's HTTPS listener
	// and covered by its server certificate. Empty serves no DPS.
	DPSHostname string
	// LinkedHubs are the hubs the DPS allocates devices to. Empty links
	// the hub itself alone. An entry named like Options.Hostname is the hub
	// itself; any other is a hub of its own (its own registry, policies and
	// keys, under Dir/hubs/<name>) served on this hub's listeners and chosen
	// by host name (TLS SNI, HTTP Host).
	LinkedHubs []LinkedHub
	// DPSAllocationPolicy is the instance's default policy: hashed
	// (default), geoLatency or static; custom is per enrollment.
	DPSAllocationPolicy string
	// DPSRetryAfter is the Retry-After the DPS sends while assigning;
	// 0 sends 3 s as the service does, a negative value sends 0.
	DPSRetryAfter time.Duration
	// DPSAssigningPolls is how many operation-status polls answer 202
	// (assigning) before the result; default 0.
	DPSAssigningPolls int
	// TPMActivation builds the TPM activation blob that wraps key to the
	// TPM of ekPub and srkPub (TPM2B_PUBLIC each); nil uses the built-in
	// one when twinhub is built with it.
	TPMActivation func(ekPub, srkPub, key []byte) ([]byte, error)

	parentPKI *pki // a linked hub shares its parent's CA and certificate
	// ADMInterval, when positive, evaluates configurations on that period
	// (the service: about 5 minutes) instead of at once on every change; a
	// configuration's creation is still evaluated at once.
	ADMInterval time.Duration
	// FileUpload links a storage account for IoT Hub file upload
	// (fileupload.go); nil answers file-upload requests with an error.
	FileUpload *FileUploadOptions
}

// Hub is a running (or ready to run) emulated IoT hub.
type Hub struct {
	opts     Options
	log      *slog.Logger
	hostname string
	pki      *pki
	store    *store
	policies []Policy

	mu      sync.Mutex
	records map[string]*record // by idKey
	conns   map[string]*conn   // live device connections by idKey
	connGen chan struct{}      // closed and replaced on every connect
	dirty   map[string]bool
	pending map[string]chan methodResult // direct methods waiting, by conn key + rid
	ridSeq  uint64
	closed  bool

	flushMu   sync.Mutex // one flush at a time
	flushReq  chan struct{}
	flushDone chan struct{}

	events *eventRing
	faults faultState
	adm    admState // configurations (configurations*.go)

	mqtt      *mqtt.Server
	mqttLn    *sniListener
	httpSrv   *http.Server
	httpLn    net.Listener
	startOnce sync.Once
	closeOnce sync.Once
	wg        sync.WaitGroup

	dps       *dps            // nil when the hub serves no DPS
	children  map[string]*Hub // linked hubs served by this one, by lower-case host name
	parent    *Hub            // the hub whose listeners serve this linked hub
	handler   http.Handler    // a linked hub's REST API
	mqttChild *childListener  // a linked hub's broker's listener

	uploads  map[string]upload // file uploads by correlation id, under mu
	blobOnce sync.Once
	blobHTTP *http.Client // the hub's own requests to the blob endpoint
}

// New prepares a hub: it loads or creates the PKI, policies and registry
// in Options.Dir. It opens no socket; Start does.
func New(o Options) (*Hub, error) {
	if o.Hostname == "" {
		o.Hostname = "localhost"
	}
	if o.MQTTAddr == "" {
		o.MQTTAddr = ":8883"
	}
	if o.HTTPSAddr == "" {
		o.HTTPSAddr = ":443"
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if err := o.Faults.validate(); err != nil {
		return nil, fmt.Errorf("faults: %w", err)
	}
	if o.FileUpload != nil {
		fu := *o.FileUpload
		if err := fu.check(); err != nil {
			return nil, err
		}
		o.FileUpload = &fu
	}
	if o.EventBuffer <= 0 {
		o.EventBuffer = 10000
	}
	h := &Hub{
		opts:     o,
		log:      o.Logger,
		hostname: o.Hostname,
		records:  map[string]*record{},
		conns:    map[string]*conn{},
		connGen:  make(chan struct{}),
		dirty:    map[string]bool{},
		pending:  map[string]chan methodResult{},
		flushReq: make(chan struct{}, 1),
		events:   newEventRing(o.EventBuffer),
	}
	h.faults.set(o.Faults)
	if o.Dir != "" {
		if err := os.MkdirAll(o.Dir, 0o700); err != nil {
			return nil, fmt.Errorf("hub dir: %w", err)
		}
		h.store = &store{dir: o.Dir}
	}
	var err error
	if o.parentPKI != nil {
		h.pki = o.parentPKI
	} else if h.pki, err = loadPKI(o.Dir, o.serverNames(), time.Now()); err != nil {
		return nil, err
	}
	if h.policies, err = h.store.loadPolicies(); err != nil {
		return nil, err
	}
	recs, err := h.store.loadRecords()
	if err != nil {
		return nil, err
	}
	for _, r := range recs {
		r.Identity.ConnectionState = "Disconnected"
		h.records[r.key()] = r
	}
	if err := h.initDPS(); err != nil {
		return nil, err
	}
	if err := h.loadConfigs(); err != nil {
		return nil, err
	}
	return h, nil
}

// Start opens the MQTT and HTTPS listeners and serves until Close or
// until ctx ends.
func (h *Hub) Start(ctx context.Context) error {
	var err error
	h.startOnce.Do(func() { err = h.start(ctx) })
	return err
}

func (h *Hub) start(ctx context.Context) error {
	serverTLS := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{h.pki.server},
		// DPS devices attest with a TLS client certificate.
		ClientAuth: tls.RequestClientCert,
	}
	mqttTLS := serverTLS.Clone()
	// Self-signed device certificates are checked by thumbprint, not chain.
	mqttTLS.ClientAuth = tls.RequestClientCert

	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumClientWritesPending = 64
	caps.MaximumMessageExpiryInterval = 0
	caps.MinimumProtocolVersion = 4 // MQTT 3.1.1
	caps.ReceiveMaximum = 256
	h.mqtt = mqtt.New(&mqtt.Options{
		Logger:                   h.log.With("component", "mqtt"),
		InlineClient:             true,
		Capabilities:             caps,
		ClientNetWriteBufferSize: 2048,
		// tls.Conn already holds a whole record (up to 16 KiB) and hands
		// it out in any slice size: the broker's reader on top only
		// saves calls while it parses a fixed header byte by byte, and
		// its buffer lives as long as the connection. Packets of any
		// size (256 KiB messages, 32 KiB twin sections) pass through
		// it in pieces.
		ClientNetReadBufferSize: 256,
		SysTopicResendInterval:  1 << 30,
	})
	if err := h.mqtt.AddHook(&deviceHook{h: h}, nil); err != nil {
		return fmt.Errorf("mqtt hook: %w", err)
	}
	// One listener for the hub and its linked hubs, chosen by SNI.
	h.mqttLn = newSNIListener(h, "mqtts", h.opts.MQTTAddr, mqttTLS)
	if err := h.mqtt.AddListener(h.mqttLn); err != nil {
		return fmt.Errorf("mqtt listen %s: %w", h.opts.MQTTAddr, err)
	}

	ln, err := net.Listen("tcp", h.opts.HTTPSAddr)
	if err != nil {
		h.mqtt.Close()
		return fmt.Errorf("https listen %s: %w", h.opts.HTTPSAddr, err)
	}
	h.httpLn = tls.NewListener(ln, serverTLS)
	h.httpSrv = &http.Server{
		Handler:           h.hostHandler(h.restHandler()),
		ReadHeaderTimeout: 30 * time.Second,
		ErrorLog:          slog.NewLogLogger(h.log.Handler(), slog.LevelDebug),
	}
	if err := h.mqtt.Serve(); err != nil {
		h.httpLn.Close()
		return fmt.Errorf("mqtt serve: %w", err)
	}
	h.wg.Add(2)
	go func() {
		defer h.wg.Done()
		if err := h.httpSrv.Serve(h.httpLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			h.log.Error("https server stopped", "error", err)
		}
	}()
	h.flushDone = make(chan struct{})
	go func() {
		defer h.wg.Done()
		h.flushLoop()
	}()
	if err := h.startLinked(); err != nil {
		return err
	}
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		h.admLoop(h.flushDone)
	}()
	h.adm.signal()
	if ctx != nil && ctx.Done() != nil {
		go func() {
			select {
			case <-ctx.Done():
				h.Close()
			case <-h.flushDone:
			}
		}()
	}
	h.log.Info("twinhub started", "hostname", h.hostname, "mqtt", h.MQTTAddr(), "https", h.HTTPSAddr(), "dir", h.opts.Dir)
	return nil
}

// Close drops every connection, stops the listeners and writes every
// pending change to the directory. It is safe to call more than once.
func (h *Hub) Close() error {
	var err error
	h.closeOnce.Do(func() {
		h.mu.Lock()
		h.closed = true
		conns := make([]*conn, 0, len(h.conns))
		for _, c := range h.conns {
			conns = append(conns, c)
		}
		h.mu.Unlock()
		if h.httpSrv != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_ = h.httpSrv.Shutdown(ctx)
			cancel()
			_ = h.httpSrv.Close()
		}
		if h.mqtt != nil {
			_ = h.mqtt.Close()
		}
		for _, c := range conns {
			c.close(errHubClosed)
		}
		for _, c := range h.children {
			_ = c.Close()
		}
		if h.flushDone != nil {
			close(h.flushDone)
			h.wg.Wait()
		}
		err = h.flush()
	})
	return err
}

// MQTTAddr is the device endpoint's actual address (host:port).
func (h *Hub) MQTTAddr() string {
	if h.parent != nil {
		return h.parent.MQTTAddr()
	}
	if h.mqttLn == nil {
		return h.opts.MQTTAddr
	}
	return h.mqttLn.Address()
}

// HTTPSAddr is the service endpoint's actual address (host:port).
func (h *Hub) HTTPSAddr() string {
	if h.parent != nil {
		return h.parent.HTTPSAddr()
	}
	if h.httpLn == nil {
		return h.opts.HTTPSAddr
	}
	return h.httpLn.Addr().String()
}

// Hostname is the hub's host name.
func (h *Hub) Hostname() string { return h.hostname }

// CAPEM is the PEM of the CA that signed the hub's server certificate.
func (h *Hub) CAPEM() []byte { return append([]byte(nil), h.pki.caPEM...) }

// CAFile is the path of the CA certificate in Dir; empty in memory mode.
func (h *Hub) CAFile() string { return h.pki.caFile }

// CertPool holds the hub's CA, for clients' tls.Config.RootCAs.
func (h *Hub) CertPool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(h.pki.caCert)
	return p
}

// TLSConfig is a client TLS configuration that trusts the hub and expects
// its hostname.
func (h *Hub) TLSConfig() *tls.Config {
	return &tls.Config{RootCAs: h.CertPool(), ServerName: h.hostname, MinVersion: tls.VersionTLS12}
}

// PolicyConnectionString is the connection string of a shared access
// policy: iothubowner, service, device, registryRead or registryReadWrite.
func (h *Hub) PolicyConnectionString(name string) (iothub.ConnectionString, error) {
	for _, p := range h.policies {
		if p.KeyName == name {
			key, _ := base64.StdEncoding.DecodeString(p.PrimaryKey)
			return iothub.ConnectionString{HostName: h.hostname, SharedAccessKeyName: name, SharedAccessKey: key}, nil
		}
	}
	return iothub.ConnectionString{}, fmt.Errorf("policy %q: %w", name, ErrNotFound)
}

// OwnerConnectionString is the iothubowner connection string.
func (h *Hub) OwnerConnectionString() string {
	cs, _ := h.PolicyConnectionString("iothubowner")
	return cs.String()
}

func (h *Hub) policy(name string) (Policy, bool) {
	for _, p := range h.policies {
		if p.KeyName == name {
			return p, true
		}
	}
	return Policy{}, false
}

// markDirty schedules a record (or its deletion) for the directory.
// Call with h.mu held.
func (h *Hub) markDirty(key string) {
	if h.store == nil {
		return
	}
	h.dirty[key] = true
	select {
	case h.flushReq <- struct{}{}:
	default:
	}
}

func (h *Hub) flushLoop() {
	for {
		select {
		case <-h.flushReq:
			if err := h.flush(); err != nil {
				h.log.Error("persist registry", "error", err)
			}
		case <-h.flushDone:
			return
		}
	}
}

// flushBatch is how many dirty records flush encodes per hold of h.mu.
// Encoding every dirty record at once held the JSON of all of them at
// the same time (a configuration that reaches 2,000 twins dirties them
// all), about a tenth of the hub's heap per device at that moment.
const flushBatch = 128

// flush writes every dirty record, flushBatch at a time. Writes happen
// outside h.mu, in one goroutine at a time, so a record's files are
// written in order. Records dirtied again meanwhile are written in a
// later batch, up to as many batches as the records dirty at the start
// need; the rest waits for the next flush, which markDirty has asked for.
func (h *Hub) flush() error {
	if h.store == nil {
		return nil
	}
	h.flushMu.Lock()
	defer h.flushMu.Unlock()
	type item struct {
		key  string
		data []byte
	}
	var errs []error
	h.mu.Lock()
	rounds := len(h.dirty)/flushBatch + 1
	h.mu.Unlock()
	for ; rounds > 0; rounds-- {
		h.mu.Lock()
		items := make([]item, 0, min(len(h.dirty), flushBatch))
		for k := range h.dirty {
			if len(items) == flushBatch {
				break
			}
			var data []byte
			if r, ok := h.records[k]; ok {
				b, err := json.Marshal(r)
				if err != nil {
					h.mu.Unlock()
					return fmt.Errorf("persist %s: %w", k, err)
				}
				data = b
			}
			items = append(items, item{k, data})
			delete(h.dirty, k)
		}
		h.mu.Unlock()
		if len(items) == 0 {
			break
		}
		sort.Slice(items, func(i, j int) bool { return items[i].key < items[j].key })
		var failed []string
		for _, it := range items {
			if err := h.store.saveRecord(it.key, it.data); err != nil {
				errs = append(errs, err)
				failed = append(failed, it.key)
			}
		}
		if len(failed) > 0 {
			h.mu.Lock()
			for _, k := range failed {
				h.dirty[k] = true
			}
			h.mu.Unlock()
		}
	}
	return errors.Join(errs...)
}

// Errors of the Go API; the REST API maps them to the service's codes.
var (
	ErrNotFound           = errors.New("not found")
	ErrAlreadyExists      = errors.New("already exists")
	ErrPreconditionFailed = errors.New("precondition failed")
	ErrDeviceNotOnline    = errors.New("device not online")
	ErrTimeout            = errors.New("timed out")
	ErrInvalid            = errors.New("invalid argument")
	ErrThrottled          = errors.New("throttled")
	errHubClosed          = errors.New("hub closed")
)

// notFoundError names the missing device or module; it is ErrNotFound.
type notFoundError struct{ deviceID, moduleID string }

func (e *notFoundError) Error() string {
	if e.moduleID != "" {
		return "module " + e.moduleID + " on device " + e.deviceID + " not found"
	}
	return "device " + e.deviceID + " not found"
}

func (e *notFoundError) Is(target error) bool { return target == ErrNotFound }

func notFound(deviceID, moduleID string) error { return &notFoundError{deviceID, moduleID} }

func etagMatches(ifMatch, etag string) bool {
	ifMatch = normalizeIfMatch(ifMatch)
	if ifMatch == "" || ifMatch == "*" {
		return true
	}
	return ifMatch == etag
}

// normalizeIfMatch strips white space and the quotes of an If-Match
// value: the SDKs send `"*"` and `"<etag>"` quoted (azure-iothub's
// _ensureQuoted), others send them bare.
func normalizeIfMatch(v string) string {
	v = strings.TrimSpace(v)
	if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
		v = v[1 : len(v)-1]
	}
	return v
}
