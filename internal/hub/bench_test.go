package hub

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// benchFleet is one hub with benchDevices connected devices, built once
// for every benchmark run that needs it.
type benchFleet struct {
	h        *Hub
	devices  []*benchDevice
	perConn  float64 // bytes of heap per connected device (hub and client)
	buildErr error
}

type benchDevice struct {
	c       paho.Client
	replies chan string
}

const benchDevices = 1000

var (
	fleetOnce sync.Once
	fleet     benchFleet
)

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse + m.StackInuse
}

func getFleet(b *testing.B) *benchFleet {
	fleetOnce.Do(func() {
		h, err := New(Options{MQTTAddr: "127.0.0.1:0", HTTPSAddr: "127.0.0.1:0"})
		if err == nil {
			err = h.Start(context.Background())
		}
		if err != nil {
			fleet.buildErr = err
			return
		}
		fleet.h = h
		for i := 0; i < benchDevices; i++ {
			if _, err := h.CreateDevice(fmt.Sprintf("bench-%04d", i)); err != nil {
				fleet.buildErr = err
				return
			}
		}
		before := heapInUse()
		fleet.devices = make([]*benchDevice, benchDevices)
		var wg sync.WaitGroup
		var failed atomic.Value
		sem := make(chan struct{}, 16)
		for i := 0; i < benchDevices; i++ {
			wg.Add(1)
			sem <- struct{}{}
			go func(i int) {
				defer wg.Done()
				defer func() { <-sem }()
				d, err := benchDial(h, fmt.Sprintf("bench-%04d", i))
				if err != nil {
					failed.Store(err)
					return
				}
				fleet.devices[i] = d
			}(i)
		}
		wg.Wait()
		if err, _ := failed.Load().(error); err != nil {
			fleet.buildErr = err
			return
		}
		fleet.perConn = float64(heapInUse()-before) / benchDevices
	})
	if fleet.buildErr != nil {
		b.Fatal(fleet.buildErr)
	}
	return &fleet
}

func benchDial(h *Hub, id string) (*benchDevice, error) {
	cs, err := h.ConnectionString(id, "")
	if err != nil {
		return nil, err
	}
	o, _ := clientOptions(h, cs)
	d := &benchDevice{replies: make(chan string, 16)}
	o.SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { d.replies <- m.Topic() })
	// Drop the test device's handlers: they would keep its 1,000-message
	// buffer (16 KB) alive, which is not a device's cost.
	o.SetConnectionLostHandler(func(paho.Client, error) {})
	d.c = paho.NewClient(o)
	if tok := d.c.Connect(); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
		return nil, fmt.Errorf("connect %s: %v", id, tok.Error())
	}
	if tok := d.c.Subscribe("$iothub/twin/res/#", 0, nil); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
		return nil, fmt.Errorf("subscribe %s: %v", id, tok.Error())
	}
	return d, nil
}

// BenchmarkConnect measures CONNECT (TLS, SAS verification, CONNACK) and
// disconnect of devices, 16 at a time.
func BenchmarkConnect(b *testing.B) {
	h := startHub(b, Options{})
	const ids = 64
	for i := 0; i < ids; i++ {
		h.CreateDevice(fmt.Sprintf("c%d", i))
	}
	var next atomic.Int64
	b.SetParallelism(8) // 16 workers on 2 cores
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			id := fmt.Sprintf("c%d", next.Add(1)%ids)
			cs, _ := h.ConnectionString(id, "")
			o, _ := clientOptions(h, cs)
			c := paho.NewClient(o)
			if tok := c.Connect(); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
				b.Errorf("connect: %v", tok.Error())
				return
			}
			c.Disconnect(0)
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "conns/s")
}

// BenchmarkReportedPatch1000 measures twin reported-patch round trips
// (PUBLISH → 204 with $version) with 1,000 devices connected, every one of
// them patching concurrently. B/device is the heap and stack growth per
// connected device, hub and paho client together (same process).
func BenchmarkReportedPatch1000(b *testing.B) {
	f := getFleet(b)
	per := b.N / benchDevices
	rest := b.N % benchDevices
	var wg sync.WaitGroup
	var failed atomic.Value
	b.ResetTimer()
	start := time.Now()
	for i, d := range f.devices {
		n := per
		if i < rest {
			n++
		}
		if n == 0 {
			continue
		}
		wg.Add(1)
		go func(i int, d *benchDevice, n int) {
			defer wg.Done()
			for j := 0; j < n; j++ {
				rid := fmt.Sprintf("%d-%d", i, j)
				d.c.Publish("$iothub/twin/PATCH/properties/reported/?$rid="+rid, 0, false, `{"counter":`+fmt.Sprint(j)+`}`)
				select {
				case topic := <-d.replies:
					if !strings.HasPrefix(topic, "$iothub/twin/res/204/?$rid="+rid+"&") {
						failed.Store(fmt.Errorf("reply %s to %s", topic, rid))
						return
					}
				case <-time.After(30 * time.Second):
					failed.Store(fmt.Errorf("no reply to %s", rid))
					return
				}
			}
		}(i, d, n)
	}
	wg.Wait()
	b.StopTimer()
	if err, _ := failed.Load().(error); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "patches/s")
	b.ReportMetric(f.perConn, "B/device")
}
