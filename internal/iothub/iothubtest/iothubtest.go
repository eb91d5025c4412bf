// Package iothubtest runs an embedded twinhub on loopback ports and
// simulated devices (plain MQTT, no twinlet code) for the tests of IoT Hub
// clients: the service client, twinctl.
package iothubtest

import (
	"context"
	"fmt"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/twinlet/twinlet/internal/hub"
	"github.com/twinlet/twinlet/internal/iothub"
)

// wait bounds every network round trip of a test.
const wait = 10 * time.Second

// StartHub starts a memory-only hub on 127.0.0.1 ephemeral ports and
// closes it when the test ends.
func StartHub(t testing.TB) *hub.Hub {
	t.Helper()
	h, err := hub.New(hub.Options{MQTTAddr: "127.0.0.1:0", HTTPSAddr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// Owner is the hub's iothubowner connection string.
func Owner(t testing.TB, h *hub.Hub) iothub.ConnectionString {
	t.Helper()
	cs, err := h.PolicyConnectionString("iothubowner")
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// ServiceClient is a service client for h with the given policy.
func ServiceClient(t testing.TB, h *hub.Hub, policy string) *iothub.ServiceClient {
	t.Helper()
	cs, err := h.PolicyConnectionString(policy)
	if err != nil {
		t.Fatal(err)
	}
	c, err := iothub.NewServiceClient(cs, iothub.WithRootCAs(h.CertPool()), iothub.WithServiceAddr(h.HTTPSAddr()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// MethodHandler answers a direct method with a status and a JSON payload
// (nil: no payload).
type MethodHandler func(method string, payload []byte) (status int, response []byte)

// Device is a simulated device (or module) connected over MQTT.
type Device struct {
	t  testing.TB
	c  paho.Client
	cs iothub.ConnectionString
}

// Connect connects the existing identity deviceID (moduleID "" for the
// device itself) with its SAS key. A non-nil onMethod subscribes to direct
// methods before Connect returns, so the device can be invoked at once.
func Connect(t testing.TB, h *hub.Hub, deviceID, moduleID string, onMethod MethodHandler) *Device {
	t.Helper()
	cs, err := h.ConnectionString(deviceID, moduleID)
	if err != nil {
		t.Fatal(err)
	}
	id := deviceID
	if moduleID != "" {
		id += "/" + moduleID
	}
	tok, err := cs.SASToken(time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	o := paho.NewClientOptions().
		AddBroker("ssl://" + h.MQTTAddr()).
		SetClientID(id).
		SetUsername(cs.HostName + "/" + id + "/?api-version=" + iothub.ServiceAPIVersion).
		SetPassword(tok).
		SetTLSConfig(h.TLSConfig()).
		SetProtocolVersion(4).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetConnectTimeout(wait).
		SetOrderMatters(false)
	d := &Device{t: t, c: paho.NewClient(o), cs: cs}
	if err := d.done(d.c.Connect(), "connect "+id); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.c.Disconnect(0) })
	if onMethod != nil {
		handler := func(c paho.Client, m paho.Message) {
			rest := strings.TrimPrefix(m.Topic(), "$iothub/methods/POST/")
			name, query, _ := strings.Cut(rest, "/?")
			q, _ := url.ParseQuery(query)
			status, resp := onMethod(name, m.Payload())
			c.Publish("$iothub/methods/res/"+strconv.Itoa(status)+"/?$rid="+url.QueryEscape(q.Get("$rid")), 1, false, resp)
		}
		if err := d.done(d.c.Subscribe("$iothub/methods/POST/#", 1, handler), "subscribe methods"); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

func (d *Device) done(tok paho.Token, what string) error {
	if !tok.WaitTimeout(wait) {
		return fmt.Errorf("%s: no answer in %s", what, wait)
	}
	if err := tok.Error(); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// Send publishes a device-to-cloud message with application properties
// and waits for the hub's PUBACK.
func (d *Device) Send(body []byte, props map[string]string) {
	d.t.Helper()
	topic := "devices/" + d.cs.DeviceID
	if d.cs.ModuleID != "" {
		topic += "/modules/" + d.cs.ModuleID
	}
	topic += "/messages/events/"
	keys := make([]string, 0, len(props))
	for k := range props {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var bag []string
	for _, k := range keys {
		bag = append(bag, url.QueryEscape(k)+"="+url.QueryEscape(props[k]))
	}
	topic += strings.Join(bag, "&")
	if err := d.done(d.c.Publish(topic, 1, false, body), "send telemetry"); err != nil {
		d.t.Fatal(err)
	}
}

// Report publishes a reported-properties patch and waits for the hub's
// 204 on the twin response topic.
func (d *Device) Report(patch []byte) {
	d.t.Helper()
	res := make(chan string, 1)
	if err := d.done(d.c.Subscribe("$iothub/twin/res/#", 1, func(_ paho.Client, m paho.Message) {
		select {
		case res <- m.Topic():
		default:
		}
	}), "subscribe twin responses"); err != nil {
		d.t.Fatal(err)
	}
	if err := d.done(d.c.Publish("$iothub/twin/PATCH/properties/reported/?$rid=r1", 1, false, patch), "report"); err != nil {
		d.t.Fatal(err)
	}
	select {
	case topic := <-res:
		if !strings.HasPrefix(topic, "$iothub/twin/res/204/") {
			d.t.Fatalf("reported patch answered on %s", topic)
		}
	case <-time.After(wait):
		d.t.Fatal("no answer to the reported patch")
	}
	d.c.Unsubscribe("$iothub/twin/res/#").WaitTimeout(wait)
}
