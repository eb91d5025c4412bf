package hub

import (
	"bytes"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/twinlet/twinlet/internal/iothub"
	"github.com/twinlet/twinlet/internal/sas"
)

// Reasons a connection is closed by the hub.
var (
	errTokenExpired = errors.New("SAS token expired")
	errDropped      = errors.New("dropped by fault injection")
	errDisabled     = errors.New("device disabled")
	errDeleted      = errors.New("device deleted")
	errQoS2         = errors.New("QoS 2 publish is not supported")
	errBadTopic     = errors.New("publish to an undocumented topic")
	errSlowClient   = errors.New("client does not read its replies")
)

// maxSubscriptions is the service's limit per connection.
const maxSubscriptions = 5

// maxQueued bounds the replies waiting for a slow client.
const maxQueued = 1024

// conn is a live, authenticated device or module connection.
type conn struct {
	cl       *mqtt.Client
	key      string
	deviceID string
	moduleID string
	expiry   time.Time // zero for X.509
	timer    *time.Timer

	mu      sync.Mutex
	queue   []packets.Packet
	sending bool
	closed  bool
}

// send queues a QoS 0 publish to this connection only. Sends keep their
// order; a goroutine runs only while the queue is not empty.
func (c *conn) send(topic string, payload []byte) {
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish},
		TopicName:   topic,
		Payload:     payload,
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	if len(c.queue) >= maxQueued {
		c.mu.Unlock()
		c.close(errSlowClient)
		return
	}
	c.queue = append(c.queue, pk)
	if c.sending {
		c.mu.Unlock()
		return
	}
	c.sending = true
	c.mu.Unlock()
	go c.drain()
}

func (c *conn) drain() {
	for {
		c.mu.Lock()
		if len(c.queue) == 0 || c.closed {
			c.queue = nil
			c.sending = false
			c.mu.Unlock()
			return
		}
		pk := c.queue[0]
		c.queue = c.queue[1:]
		c.mu.Unlock()
		if err := c.cl.WritePacket(pk); err != nil {
			c.close(err)
		}
	}
}

// close ends the connection; the broker then runs OnDisconnect.
func (c *conn) close(cause error) {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	if c.timer != nil {
		c.timer.Stop()
	}
	// tls.Conn.Close may block on a full send buffer: never under h.mu.
	go c.cl.Stop(cause)
}

func (c *conn) subscribed(filters ...string) bool {
	for _, f := range filters {
		if _, ok := c.cl.State.Subscriptions.Get(f); ok {
			return true
		}
	}
	return false
}

// authResult is what CONNECT established, kept until the session starts.
type authResult struct {
	deviceID, moduleID string
	expiry             time.Time
}

// deviceHook plugs the IoT Hub device protocol into the broker.
type deviceHook struct {
	mqtt.HookBase
	h      *Hub
	authed sync.Map // *mqtt.Client → authResult
}

func (d *deviceHook) ID() string { return "twinhub-devices" }

func (d *deviceHook) Provides(b byte) bool {
	switch b {
	case mqtt.OnConnectAuthenticate, mqtt.OnACLCheck, mqtt.OnSessionEstablished, mqtt.OnDisconnect,
		mqtt.OnSubscribe, mqtt.OnPublish, mqtt.OnWill:
		return true
	}
	return false
}

// OnConnectAuthenticate authenticates a CONNECT; false answers CONNACK 5.
func (d *deviceHook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	res, err := d.h.authenticate(cl, pk)
	if err != nil {
		d.h.log.Info("device connect refused", "client", pk.Connect.ClientIdentifier, "remote", cl.Net.Remote, "reason", err)
		return false
	}
	if !d.h.faults.admit(opConnect) {
		d.h.log.Info("device connect refused by fault injection", "client", pk.Connect.ClientIdentifier)
		return false
	}
	d.authed.Store(cl, res)
	return true
}

// OnSessionEstablished registers the connection once CONNACK is sent, so
// nothing is written to the client before it.
func (d *deviceHook) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	v, ok := d.authed.LoadAndDelete(cl)
	if !ok {
		cl.Stop(errors.New("session without authentication"))
		return
	}
	res := v.(authResult)
	d.h.register(cl, res)
}

// OnDisconnect forgets the connection.
func (d *deviceHook) OnDisconnect(cl *mqtt.Client, err error, _ bool) {
	d.authed.Delete(cl)
	d.h.unregister(cl, err)
}

// OnACLCheck lets a client read only documented filters and its own
// topics; OnSubscribe has already refused other subscriptions. Publishes
// are checked in OnPublish, which closes the connection on an
// undocumented topic.
func (d *deviceHook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	if write {
		return true
	}
	deviceID, moduleID, _ := strings.Cut(cl.ID, "/")
	return allowedFilter(deviceID, moduleID, topic) ||
		!strings.ContainsAny(topic, "#+") && strings.HasPrefix(topic, "devices/"+idKeyPath(deviceID, moduleID)+"/")
}

// OnSubscribe refuses undocumented filters and filters beyond the fifth
// (an empty filter makes the broker answer 0x80), and grants QoS 1 for
// QoS 2, as the service does.
func (d *deviceHook) OnSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	deviceID, moduleID, _ := strings.Cut(cl.ID, "/")
	count := cl.State.Subscriptions.Len()
	added := map[string]bool{}
	for i := range pk.Filters {
		f := &pk.Filters[i]
		if f.Qos > 1 {
			f.Qos = 1
		}
		if !allowedFilter(deviceID, moduleID, f.Filter) {
			f.Filter = ""
			continue
		}
		if _, ok := cl.State.Subscriptions.Get(f.Filter); ok || added[f.Filter] {
			continue
		}
		if count >= maxSubscriptions {
			f.Filter = ""
			continue
		}
		count++
		added[f.Filter] = true
	}
	return pk
}

// OnWill forwards a will message as telemetry, if its topic is the
// client's own events topic.
func (d *deviceHook) OnWill(cl *mqtt.Client, will mqtt.Will) (mqtt.Will, error) {
	deviceID, moduleID, _ := strings.Cut(cl.ID, "/")
	if props, ok := eventTopic(deviceID, moduleID, will.TopicName); ok {
		props["iothub-MessageType"] = "Will"
		d.h.events.add(Event{DeviceID: deviceID, ModuleID: moduleID, Properties: props, Body: will.Payload})
	}
	return mqtt.Will{}, nil
}

// OnPublish answers the device protocol on the client's connection and
// never lets a device publish reach the broker's routing.
func (d *deviceHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline {
		return pk, nil // the hub's own cloud-to-device messages
	}
	if pk.FixedHeader.Qos == 2 {
		cl.Stop(errQoS2)
		return pk, packets.ErrRejectPacket
	}
	c := d.h.connOf(cl)
	if c == nil {
		cl.Stop(errors.New("publish on an unregistered connection"))
		return pk, packets.ErrRejectPacket
	}
	if err := d.h.handlePublish(c, pk); err != nil {
		d.h.log.Info("closing device connection", "client", cl.ID, "topic", pk.TopicName, "reason", err)
		c.close(err)
		return pk, packets.ErrRejectPacket
	}
	return pk, packets.CodeSuccessIgnore
}

func idKeyPath(deviceID, moduleID string) string {
	if moduleID == "" {
		return deviceID
	}
	return deviceID + "/modules/" + moduleID
}

func allowedFilter(deviceID, moduleID, f string) bool {
	switch f {
	case "$iothub/twin/res/#", "$iothub/twin/PATCH/properties/desired/#", "$iothub/methods/POST/#":
		return true
	}
	if name, ok := strings.CutPrefix(f, "$iothub/methods/POST/"); ok {
		name, ok = strings.CutSuffix(name, "/#")
		return ok && name != "" && !strings.ContainsAny(name, "/#+")
	}
	if moduleID == "" {
		return f == "devices/"+deviceID+"/messages/devicebound/#"
	}
	return f == "devices/"+deviceID+"/modules/"+moduleID+"/#" ||
		f == "devices/"+deviceID+"/modules/"+moduleID+"/messages/devicebound/#"
}

// parseUsername splits "{host}/{device}[/{module}]/[?query]" leniently:
// the query may lack its '?' (amenzhinsky sends ".../api-version=...").
func parseUsername(u string) (host, deviceID, moduleID string, err error) {
	if i := strings.IndexByte(u, '?'); i >= 0 {
		u = u[:i]
	}
	parts := strings.Split(strings.TrimRight(u, "/"), "/")
	if len(parts) > 0 && strings.Contains(parts[len(parts)-1], "=") {
		parts = parts[:len(parts)-1]
	}
	switch len(parts) {
	case 2:
		return parts[0], parts[1], "", nil
	case 3:
		return parts[0], parts[1], parts[2], nil
	}
	return "", "", "", errors.New("username is not {host}/{deviceId}[/{moduleId}]/?api-version=…")
}

func (h *Hub) authenticate(cl *mqtt.Client, pk packets.Packet) (authResult, error) {
	clientID := pk.Connect.ClientIdentifier
	deviceID, moduleID, _ := strings.Cut(clientID, "/")
	if deviceID == "" {
		return authResult{}, errors.New("empty client id")
	}
	_, udev, umod, err := parseUsername(string(pk.Connect.Username))
	if err != nil {
		return authResult{}, err
	}
	if udev != deviceID || umod != moduleID {
		return authResult{}, fmt.Errorf("username names %s, client id %s", idKey(udev, umod), clientID)
	}
	key := idKey(deviceID, moduleID)
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return authResult{}, errHubClosed
	}
	r, ok := h.records[key]
	var id Identity
	var devStatus string
	if ok {
		id = r.Identity
		devStatus = h.records[deviceID].Identity.Status
	}
	h.mu.Unlock()
	if !ok {
		return authResult{}, fmt.Errorf("identity %s: %w", key, ErrNotFound)
	}
	if devStatus != "enabled" {
		return authResult{}, fmt.Errorf("device %s is %s", deviceID, devStatus)
	}
	res := authResult{deviceID: deviceID, moduleID: moduleID}

	if tc, ok := cl.Net.Conn.(*tls.Conn); ok {
		if certs := tc.ConnectionState().PeerCertificates; len(certs) > 0 {
			if id.Authentication.Type != AuthSelfSigned && id.Authentication.Type != AuthCA {
				return authResult{}, fmt.Errorf("client certificate for %s, whose authentication is %s", key, id.Authentication.Type)
			}
			leaf := certs[0]
			if leaf.Subject.CommonName != key {
				return authResult{}, fmt.Errorf("certificate CN %q is not %q", leaf.Subject.CommonName, key)
			}
			if now := time.Now(); now.Before(leaf.NotBefore) || now.After(leaf.NotAfter) {
				return authResult{}, errors.New("client certificate is not valid now")
			}
			if id.Authentication.Type == AuthCA {
				return res, h.verifyCAChain(certs)
			}
			s1, s256 := sha1.Sum(leaf.Raw), sha256.Sum256(leaf.Raw)
			for _, t := range []*string{id.Authentication.X509Thumbprint.PrimaryThumbprint, id.Authentication.X509Thumbprint.SecondaryThumbprint} {
				if t == nil {
					continue
				}
				if strings.EqualFold(*t, hex.EncodeToString(s1[:])) || strings.EqualFold(*t, hex.EncodeToString(s256[:])) {
					return res, nil
				}
			}
			return authResult{}, errors.New("client certificate thumbprint does not match")
		}
	}
	if id.Authentication.Type == AuthSelfSigned || id.Authentication.Type == AuthCA {
		if len(pk.Connect.Password) == 0 {
			return authResult{}, fmt.Errorf("%s authenticates with X.509 but sent no client certificate", key)
		}
	}
	tok, err := sas.Parse(string(pk.Connect.Password))
	if err != nil {
		return authResult{}, err
	}
	var keys []string
	if tok.KeyName != "" {
		p, ok := h.policy(tok.KeyName)
		if !ok || !p.has(RightDeviceConnect) {
			return authResult{}, fmt.Errorf("policy %q cannot connect devices", tok.KeyName)
		}
		keys = []string{p.PrimaryKey, p.SecondaryKey}
	} else {
		if id.Authentication.Type != AuthSAS {
			return authResult{}, fmt.Errorf("%s has no symmetric key", key)
		}
		keys = []string{id.Authentication.SymmetricKey.PrimaryKey, id.Authentication.SymmetricKey.SecondaryKey}
	}
	target := iothub.DeviceResource(h.hostname, deviceID, moduleID)
	var lastErr error
	for _, k := range keys {
		raw, err := base64.StdEncoding.DecodeString(k)
		if err != nil || len(raw) == 0 {
			continue
		}
		if lastErr = sas.Verify(tok, raw, target, time.Now()); lastErr == nil {
			res.expiry = tok.Expiry
			return res, nil
		}
		if errors.Is(lastErr, sas.ErrExpired) || errors.Is(lastErr, sas.ErrScope) {
			break
		}
	}
	if lastErr == nil {
		lastErr = sas.ErrSignature
	}
	return authResult{}, lastErr
}

// register makes a new connection the identity's one, dropping any older.
func (h *Hub) register(cl *mqtt.Client, res authResult) {
	c := &conn{cl: cl, key: idKey(res.deviceID, res.moduleID), deviceID: res.deviceID, moduleID: res.moduleID, expiry: res.expiry}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		go cl.Stop(errHubClosed)
		return
	}
	r, ok := h.records[c.key]
	if !ok {
		go cl.Stop(errDeleted)
		return
	}
	if old := h.conns[c.key]; old != nil && old.cl != cl {
		old.close(errors.New("400027 ConnectionForcefullyClosedOnNewConnection"))
	}
	if !c.expiry.IsZero() {
		c.timer = time.AfterFunc(time.Until(c.expiry), func() {
			h.mu.Lock()
			if h.conns[c.key] == c {
				h.disconnectedLocked(c)
			}
			h.mu.Unlock()
			c.close(errTokenExpired)
		})
	}
	h.conns[c.key] = c
	now := time.Now().UTC()
	r.Identity.ConnectionState = "Connected"
	r.Identity.ConnectionStateUpdatedTime = now
	r.Identity.LastActivityTime = now
	close(h.connGen)
	h.connGen = make(chan struct{})
	h.log.Info("device connected", "identity", c.key, "remote", cl.Net.Remote)
}

func (h *Hub) unregister(cl *mqtt.Client, cause error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	c := h.conns[cl.ID]
	if c == nil || c.cl != cl {
		return
	}
	h.disconnectedLocked(c)
	if c.timer != nil {
		c.timer.Stop()
	}
	h.log.Info("device disconnected", "identity", c.key, "reason", cause)
}

// disconnectedLocked forgets a connection. Call with h.mu held.
func (h *Hub) disconnectedLocked(c *conn) {
	delete(h.conns, c.key)
	if r, ok := h.records[c.key]; ok {
		r.Identity.ConnectionState = "Disconnected"
		r.Identity.ConnectionStateUpdatedTime = time.Now().UTC()
	}
}

// dropLocked closes every connection that pred selects. Call with h.mu
// held.
func (h *Hub) dropLocked(pred func(*conn) bool, cause error) int {
	n := 0
	for _, c := range h.conns {
		if pred(c) {
			h.disconnectedLocked(c)
			c.close(cause)
			n++
		}
	}
	return n
}

func (h *Hub) connOf(cl *mqtt.Client) *conn {
	h.mu.Lock()
	defer h.mu.Unlock()
	if c := h.conns[cl.ID]; c != nil && c.cl == cl {
		return c
	}
	return nil
}

// Connected reports whether a device (moduleID empty) or module has a live
// connection.
func (h *Hub) Connected(deviceID, moduleID string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.conns[idKey(deviceID, moduleID)] != nil
}

// DropConnections closes the connections of the given identities ("d1"
// drops the device d1 and its modules, "d1/m1" only that module), or of
// every identity when none is given. It returns how many it closed.
func (h *Hub) DropConnections(identities ...string) int {
	want := map[string]bool{}
	for _, id := range identities {
		want[id] = true
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.dropLocked(func(c *conn) bool {
		return len(want) == 0 || want[c.key] || want[c.deviceID]
	}, errDropped)
}

// rid extracts the $rid query parameter verbatim.
func rid(topic string) string {
	_, q, ok := strings.Cut(topic, "?")
	if !ok {
		return ""
	}
	for _, kv := range strings.Split(q, "&") {
		if v, ok := strings.CutPrefix(kv, "$rid="); ok {
			return v
		}
	}
	return ""
}

const (
	topicTwinGet       = "$iothub/twin/GET/"
	topicTwinReported  = "$iothub/twin/PATCH/properties/reported/"
	topicMethodRes     = "$iothub/methods/res/"
	topicDesiredNotify = "$iothub/twin/PATCH/properties/desired/"
)

func twinRes(status int, rid string) string {
	return "$iothub/twin/res/" + strconv.Itoa(status) + "/?$rid=" + rid
}

func errorBody(code int, msg string) []byte {
	b, _ := json.Marshal(map[string]any{"errorCode": code, "message": msg})
	return b
}

func (h *Hub) handlePublish(c *conn, pk packets.Packet) error {
	topic := pk.TopicName
	switch {
	case strings.HasPrefix(topic, topicTwinGet+"?"):
		r := rid(topic)
		h.faults.delay()
		if !h.faults.admit(opTwinGet) {
			c.send(twinRes(429, r), errorBody(429001, "ThrottlingException (fault injection)"))
			return nil
		}
		body, err := h.deviceTwinJSON(c.key)
		if err != nil {
			c.send(twinRes(404, r), errorBody(404001, err.Error()))
			return nil
		}
		c.send(twinRes(200, r), body)
		return nil

	case strings.HasPrefix(topic, topicTwinReported+"?"):
		r := rid(topic)
		h.faults.delay()
		if !h.faults.admit(opReportedPatch) {
			c.send(twinRes(429, r), errorBody(429001, "ThrottlingException (fault injection)"))
			return nil
		}
		var patch map[string]any
		dec := json.NewDecoder(bytes.NewReader(pk.Payload))
		if err := dec.Decode(&patch); err != nil || patch == nil || dec.More() {
			c.send(twinRes(400, r), errorBody(400004, "reported properties patch must be a JSON object"))
			return nil
		}
		v, err := h.patchReported(c.key, patch)
		var le *limitError
		switch {
		case errors.As(err, &le):
			c.send(twinRes(400, r), errorBody(400004, le.msg))
		case err != nil:
			c.send(twinRes(404, r), errorBody(404001, err.Error()))
		default:
			c.send("$iothub/twin/res/204/?$rid="+r+"&$version="+strconv.FormatInt(v, 10), nil)
		}
		return nil

	case strings.HasPrefix(topic, topicMethodRes):
		rest := strings.TrimPrefix(topic, topicMethodRes)
		st, _, _ := strings.Cut(rest, "/")
		status, err := strconv.Atoi(st)
		if err != nil {
			return fmt.Errorf("%w: %s", errBadTopic, topic)
		}
		h.methodResponse(c, rid(topic), status, pk.Payload)
		return nil
	}
	if props, ok := eventTopic(c.deviceID, c.moduleID, topic); ok {
		if pk.FixedHeader.Retain {
			props["mqtt-retain"] = "true"
		}
		h.events.add(Event{DeviceID: c.deviceID, ModuleID: c.moduleID, Properties: props, Body: append([]byte(nil), pk.Payload...)})
		h.mu.Lock()
		if r, ok := h.records[c.key]; ok {
			r.Identity.LastActivityTime = time.Now().UTC()
		}
		h.mu.Unlock()
		return nil
	}
	return fmt.Errorf("%w: %s", errBadTopic, topic)
}

// eventTopic matches a telemetry topic of the identity and decodes its
// property bag.
func eventTopic(deviceID, moduleID, topic string) (map[string]string, bool) {
	prefix := "devices/" + deviceID + "/messages/events/"
	if moduleID != "" {
		prefix = "devices/" + deviceID + "/modules/" + moduleID + "/messages/events/"
	}
	bag, ok := strings.CutPrefix(topic, prefix)
	if !ok {
		if topic+"/" == prefix {
			return map[string]string{}, true
		}
		return nil, false
	}
	props := map[string]string{}
	bag = strings.TrimPrefix(bag, "?")
	if bag == "" {
		return props, true
	}
	q, err := url.ParseQuery(bag)
	if err != nil {
		return nil, false
	}
	for k, v := range q {
		props[k] = v[0]
	}
	return props, true
}

// notifyDesiredLocked pushes a desired patch to the identity's connection
// if it subscribed to desired updates. Call with h.mu held, so that
// notifications leave in $version order.
func (h *Hub) notifyDesiredLocked(key string, delta map[string]any, version int64) {
	c := h.conns[key]
	if c == nil || !c.subscribed("$iothub/twin/PATCH/properties/desired/#") {
		return
	}
	body, err := json.Marshal(delta)
	if err != nil {
		return
	}
	c.send(topicDesiredNotify+"?$version="+strconv.FormatInt(version, 10), body)
}
