package hub

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/twinlet/twinlet/internal/iothub"
)

const apiVersion = "2021-04-12"

func startHub(t testing.TB, o Options) *Hub {
	t.Helper()
	if o.MQTTAddr == "" {
		o.MQTTAddr = "127.0.0.1:0"
	}
	if o.HTTPSAddr == "" {
		o.HTTPSAddr = "127.0.0.1:0"
	}
	h, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// device is a paho test client that records every message it receives.
type device struct {
	t    testing.TB
	c    paho.Client
	msgs chan paho.Message
	lost chan error
}

type dialOpt func(*paho.ClientOptions)

func withPassword(p string) dialOpt { return func(o *paho.ClientOptions) { o.SetPassword(p) } }
func withUsername(u string) dialOpt { return func(o *paho.ClientOptions) { o.SetUsername(u) } }
func withTLS(c *tls.Config) dialOpt { return func(o *paho.ClientOptions) { o.SetTLSConfig(c) } }

func clientOptions(h *Hub, cs iothub.ConnectionString, opts ...dialOpt) (*paho.ClientOptions, *device) {
	d := &device{msgs: make(chan paho.Message, 1000), lost: make(chan error, 1)}
	id := idKey(cs.DeviceID, cs.ModuleID)
	o := paho.NewClientOptions().
		AddBroker("ssl://" + h.MQTTAddr()).
		SetClientID(id).
		SetUsername(cs.HostName + "/" + id + "/?api-version=" + apiVersion).
		SetTLSConfig(h.TLSConfig()).
		SetProtocolVersion(4).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetConnectTimeout(5 * time.Second).
		SetKeepAlive(60 * time.Second).
		SetOrderMatters(true).
		SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { d.msgs <- m }).
		SetConnectionLostHandler(func(_ paho.Client, err error) {
			select {
			case d.lost <- err:
			default:
			}
		})
	if len(cs.SharedAccessKey) > 0 {
		tok, _ := cs.SASToken(time.Now().Add(time.Hour))
		o.SetPassword(tok)
	}
	for _, f := range opts {
		f(o)
	}
	return o, d
}

// dial connects and returns the CONNECT error, if any.
func dial(t testing.TB, h *Hub, cs iothub.ConnectionString, opts ...dialOpt) (*device, error) {
	t.Helper()
	o, d := clientOptions(h, cs, opts...)
	d.t = t
	d.c = paho.NewClient(o)
	tok := d.c.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		return nil, fmt.Errorf("connect timed out")
	}
	if err := tok.Error(); err != nil {
		return nil, err
	}
	t.Cleanup(func() { d.c.Disconnect(0) })
	return d, nil
}

func mustDial(t testing.TB, h *Hub, cs iothub.ConnectionString, opts ...dialOpt) *device {
	t.Helper()
	d, err := dial(t, h, cs, opts...)
	if err != nil {
		t.Fatalf("connect %s: %v", cs.DeviceID, err)
	}
	return d
}

func (d *device) subscribe(filters ...string) []byte {
	d.t.Helper()
	m := map[string]byte{}
	for _, f := range filters {
		m[f] = 1
	}
	tok := d.c.SubscribeMultiple(m, nil)
	if !tok.WaitTimeout(10 * time.Second) {
		d.t.Fatal("subscribe timed out")
	}
	if err := tok.Error(); err != nil {
		d.t.Fatalf("subscribe: %v", err)
	}
	st := tok.(*paho.SubscribeToken)
	out := make([]byte, len(filters))
	for i, f := range filters {
		out[i] = st.Result()[f]
	}
	return out
}

func (d *device) publish(topic string, qos byte, payload []byte) {
	d.t.Helper()
	tok := d.c.Publish(topic, qos, false, payload)
	tok.WaitTimeout(10 * time.Second)
}

// next returns the next message whose topic starts with prefix, skipping
// others, or fails after 10 s.
func (d *device) next(prefix string) paho.Message {
	d.t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case m := <-d.msgs:
			if strings.HasPrefix(m.Topic(), prefix) {
				return m
			}
		case <-timeout:
			d.t.Fatalf("no message on %s", prefix)
		}
	}
}

var ridMu sync.Mutex
var ridN int

func nextRID() string {
	ridMu.Lock()
	defer ridMu.Unlock()
	ridN++
	return fmt.Sprint(ridN)
}

// twinRequest publishes to a twin topic and waits for its reply.
func (d *device) twinRequest(topic string, body []byte) (status string, rid string, reply paho.Message) {
	d.t.Helper()
	rid = nextRID()
	d.publish(topic+"?$rid="+rid, 1, body)
	timeout := time.After(10 * time.Second)
	for {
		select {
		case m := <-d.msgs:
			if !strings.HasPrefix(m.Topic(), "$iothub/twin/res/") || ridOf(m.Topic()) != rid {
				continue
			}
			st, _, _ := strings.Cut(strings.TrimPrefix(m.Topic(), "$iothub/twin/res/"), "/")
			return st, rid, m
		case <-timeout:
			d.t.Fatalf("no reply to %s rid %s", topic, rid)
		}
	}
}

func ridOf(topic string) string { return rid(topic) }

func (d *device) getTwin() map[string]any {
	d.t.Helper()
	st, _, m := d.twinRequest("$iothub/twin/GET/", nil)
	if st != "200" {
		d.t.Fatalf("twin GET: %s %s", st, m.Payload())
	}
	var out map[string]any
	if err := json.Unmarshal(m.Payload(), &out); err != nil {
		d.t.Fatal(err)
	}
	return out
}

func (d *device) patchReported(patch string) (status, topic string) {
	d.t.Helper()
	st, _, m := d.twinRequest("$iothub/twin/PATCH/properties/reported/", []byte(patch))
	return st, m.Topic()
}

// svc is a REST client of the hub with one policy.
type svc struct {
	t      testing.TB
	h      *Hub
	policy string
	c      *http.Client
}

func newSvc(t testing.TB, h *Hub, policy string) *svc {
	return &svc{t: t, h: h, policy: policy, c: &http.Client{
		Timeout:   60 * time.Second,
		Transport: &http.Transport{TLSClientConfig: h.TLSConfig()},
	}}
}

type resp struct {
	status int
	header http.Header
	body   []byte
}

func (r resp) json(t testing.TB, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("decode %s: %v", r.body, err)
	}
}

func (r resp) errorCode() string { return r.header.Get("iothub-errorcode") }

func (s *svc) do(method, path string, body any, hdr ...string) resp {
	s.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		j, _ := json.Marshal(b)
		rd = bytes.NewReader(j)
	}
	sep := "?"
	if strings.Contains(path, "?") {
		sep = "&"
	}
	url := "https://" + s.h.HTTPSAddr() + path
	if !strings.HasPrefix(path, "/_twinhub/") && !strings.Contains(path, "api-version") {
		url += sep + "api-version=" + apiVersion
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		s.t.Fatal(err)
	}
	if s.policy != "" {
		cs, err := s.h.PolicyConnectionString(s.policy)
		if err != nil {
			s.t.Fatal(err)
		}
		tok, _ := cs.SASToken(time.Now().Add(time.Hour))
		req.Header.Set("Authorization", tok)
	}
	req.Header.Set("Content-Type", "application/json; charset=utf-8")
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := s.c.Do(req)
	if err != nil {
		s.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return resp{res.StatusCode, res.Header, b}
}
