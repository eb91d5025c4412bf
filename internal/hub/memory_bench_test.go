package hub

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// memClients is what the client process of BenchmarkHubMemoryPerDevice
// dials.
type memClients struct {
	Addr     string   `json:"addr"`
	Hostname string   `json:"hostname"`
	CAPEM    []byte   `json:"caPem"`
	IDs      []string `json:"ids"`
	Tokens   []string `json:"tokens"`
}

const memClientsEnv = "TWINHUB_MEM_CLIENTS"

// memClientsReportEnv holds the reported patch each device of the client
// process sends once connected.
const memClientsReportEnv = "TWINHUB_MEM_REPORTED"

// memReported is what a twinlet agent reports for one files section.
const memReported = `{"__summary":{"agentVersion":"dev","desiredVersion":2,"failed":0,"failedSections":"",` +
	`"lastReconcile":"2026-12-03T05:46:11Z","policyHash":"","ready":1,"rebootRequired":false,"rebootRequiredBy":"","state":"Ready"},` +
	`"files":{"__status":{"changes":1,"deploymentId":"bench--4dd0c943b8","desiredVersion":2,"lastTransitionTime":"2026-12-03T05:46:11Z",` +
	`"message":"1 change(s) applied","reason":"Applied","source":"twin","state":"Ready"},` +
	`"motd":{"exists":true,"group":"0","kind":"file","mode":"0644","owner":"0","path":"/etc/motd",` +
	`"sha256":"c6f476772854b9061bd7ecc81d3fe36e83f21f6256807bc83c223dc9d294c089","size":8}}}`

// memTwinPatch is the tags and desired section of a device of
// BenchmarkHubMemoryPerDevice, as a FleetConfig would write them.
func memTwinPatch() TwinPatch {
	p := TwinPatch{Tags: map[string]any{"fleet": "sim"}}
	p.Properties = &struct {
		Desired map[string]any `json:"desired,omitempty"`
	}{Desired: map[string]any{"files": map[string]any{
		"__meta": map[string]any{"deploymentId": "bench--4dd0c943b8"},
		"motd":   map[string]any{"content": "round 1\n", "path": "/etc/motd"},
	}}}
	return p
}

// BenchmarkHubMemoryPerDevice measures twinhub's own memory per connected
// device: heap and stacks of this process grow by B/device for each
// device created in the registry, connected over MQTT/TLS and subscribed
// to twin responses and desired patches, with a twin like a fleet device's: tags, a desired
// section written by the back end and the reported properties a twinlet
// agent sends for it (its __summary and the section's status). The
// devices (paho clients) run in a child process
// (this test binary, TestMemClientsHelper), so that their memory is not
// counted, unlike BenchmarkReportedPatch1000's B/device (hub and clients
// together). TWINHUB_MEM_PROFILE=file writes the hub's heap profile while
// the devices are connected.
func BenchmarkHubMemoryPerDevice(b *testing.B) {
	const n = 1000
	h := startHub(b, Options{})
	before := heapInUse()
	spec := memClients{Addr: h.MQTTAddr(), Hostname: h.Hostname(), CAPEM: h.CAPEM()}
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("mem-%04d", i)
		cs, err := h.CreateDevice(id)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := h.UpdateTwin(id, "", memTwinPatch(), false, ""); err != nil {
			b.Fatal(err)
		}
		tok, _ := cs.SASToken(time.Now().Add(time.Hour))
		spec.IDs = append(spec.IDs, id)
		spec.Tokens = append(spec.Tokens, tok)
	}
	path := filepath.Join(b.TempDir(), "clients.json")
	data, _ := json.Marshal(spec)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		b.Fatal(err)
	}
	var ms0 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	g0 := runtime.NumGoroutine()
	cmd := exec.Command(os.Args[0], "-test.run=^TestMemClientsHelper$", "-test.count=1")
	cmd.Env = append(os.Environ(), memClientsEnv+"="+path, memClientsReportEnv+"="+memReported)
	cmd.Stderr = os.Stderr
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		stdin.Close()
		_ = cmd.Wait()
	}()
	sc := bufio.NewScanner(stdout)
	ready := false
	for sc.Scan() {
		if sc.Text() == "ready" {
			ready = true
			break
		}
	}
	if !ready {
		b.Fatal("the client process did not connect its devices")
	}
	go io.Copy(io.Discard, stdout)
	h.mu.Lock()
	connected := len(h.conns)
	h.mu.Unlock()
	if connected != n {
		b.Fatalf("%d devices connected, want %d", connected, n)
	}
	// Stacks shrink by half per GC while they use under a quarter: the
	// handshake's deep stacks settle after a few cycles, as in a running hub.
	for i := 0; i < 4; i++ {
		runtime.GC()
	}
	per := float64(heapInUse()-before) / n
	var ms1 runtime.MemStats
	runtime.ReadMemStats(&ms1)
	b.ReportMetric(float64(ms1.StackInuse-ms0.StackInuse)/n, "stackB/device")
	b.ReportMetric(float64(runtime.NumGoroutine()-g0)/n, "goroutines/device")
	if out := os.Getenv("TWINHUB_MEM_PROFILE"); out != "" {
		// The heap while the devices are connected (-memprofile is
		// written after the hub has closed).
		f, err := os.Create(out)
		if err != nil {
			b.Fatal(err)
		}
		_ = pprof.WriteHeapProfile(f)
		f.Close()
	}
	for i := 0; i < b.N; i++ {
		// The figure is a state, not a rate: nothing to repeat.
	}
	b.ReportMetric(per, "B/device")
}

// TestMemClientsHelper is the client process of
// BenchmarkHubMemoryPerDevice; it does nothing in a normal test run.
func TestMemClientsHelper(t *testing.T) {
	path := os.Getenv(memClientsEnv)
	if path == "" {
		t.Skip("client process of BenchmarkHubMemoryPerDevice only")
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var spec memClients
	if err := json.Unmarshal(data, &spec); err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(spec.CAPEM)
	tlsc := &tls.Config{RootCAs: pool, ServerName: spec.Hostname, MinVersion: tls.VersionTLS12}
	clients := make([]paho.Client, len(spec.IDs))
	var wg sync.WaitGroup
	errs := make(chan error, len(spec.IDs))
	sem := make(chan struct{}, 16)
	for i, id := range spec.IDs {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int, id string) {
			defer wg.Done()
			defer func() { <-sem }()
			o := paho.NewClientOptions().AddBroker("ssl://" + spec.Addr).SetClientID(id).
				SetUsername(spec.Hostname + "/" + id + "/?api-version=" + apiVersion).SetPassword(spec.Tokens[i]).
				SetTLSConfig(tlsc).SetProtocolVersion(4).SetAutoReconnect(false).SetKeepAlive(5 * time.Minute)
			c := paho.NewClient(o)
			if tok := c.Connect(); !tok.WaitTimeout(60*time.Second) || tok.Error() != nil {
				errs <- fmt.Errorf("connect %s: %v", id, tok.Error())
				return
			}
			answered := make(chan string, 1)
			onRes := func(_ paho.Client, m paho.Message) {
				select {
				case answered <- m.Topic():
				default:
				}
			}
			filters := map[string]byte{"$iothub/twin/res/#": 0, "$iothub/twin/PATCH/properties/desired/#": 0}
			if tok := c.SubscribeMultiple(filters, onRes); !tok.WaitTimeout(60*time.Second) || tok.Error() != nil {
				errs <- fmt.Errorf("subscribe %s: %v", id, tok.Error())
				return
			}
			if rep := os.Getenv(memClientsReportEnv); rep != "" {
				if tok := c.Publish("$iothub/twin/PATCH/properties/reported/?$rid=1", 0, false, rep); !tok.WaitTimeout(60*time.Second) || tok.Error() != nil {
					errs <- fmt.Errorf("report %s: %v", id, tok.Error())
					return
				}
				select {
				case topic := <-answered:
					if !strings.HasPrefix(topic, "$iothub/twin/res/204/") {
						errs <- fmt.Errorf("report %s: answered on %s", id, topic)
						return
					}
				case <-time.After(60 * time.Second):
					errs <- fmt.Errorf("report %s: no answer", id)
					return
				}
			}
			clients[i] = c
		}(i, id)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin) // until the benchmark closes stdin
	for _, c := range clients {
		c.Disconnect(0)
	}
}
