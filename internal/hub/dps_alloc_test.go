package hub

import (
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
)

func threeHubs() []LinkedHub {
	return []LinkedHub{
		{Hostname: "hub-a.localhost", Weight: 1, Latency: 30e6},
		{Hostname: "hub-b.localhost", Weight: 2, Latency: 10e6},
		{Hostname: "hub-c.localhost", Weight: 7, Latency: 20e6},
	}
}

func groupKey(t testing.TB, h *Hub, g EnrollmentGroup) string {
	t.Helper()
	out, err := h.PutEnrollmentGroup(g, "")
	if err != nil {
		t.Fatal(err)
	}
	return out.Attestation.SymmetricKey.PrimaryKey
}

func registerInGroup(t testing.TB, c *dpsClient, h *Hub, gk, regID string) map[string]any {
	t.Helper()
	dk, err := DeriveDeviceKey(gk, regID)
	if err != nil {
		t.Fatal(err)
	}
	r := c.register(regID, deviceToken(t, h, regID, dk), nil)
	if r.status != 200 {
		t.Fatalf("register %s: %d %s", regID, r.status, r.raw)
	}
	return regState(t, r)
}

// TestDPSHashedWeights registers 1,000 devices over three linked hubs
// weighted 1:2:7; each hub's share is within 5 points of its weight's.
func TestDPSHashedWeights(t *testing.T) {
	h := startDPS(t, Options{Hostname: "hub-a.localhost", LinkedHubs: threeHubs(), DPSRetryAfter: -1})
	gk := groupKey(t, h, EnrollmentGroup{EnrollmentGroupID: "fleet", EnrollmentSpec: EnrollmentSpec{Attestation: Attestation{Type: AttestationSymmetricKey}}})
	const n = 1000
	counts := map[string]int{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	ids := make(chan int)
	for w := 0; w < 4; w++ {
		c := newDPSClient(t, h, h.DPSHostname(), nil)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range ids {
				rs := registerInGroup(t, c, h, gk, fmt.Sprintf("device-%04d", i))
				mu.Lock()
				counts[rs["assignedHub"].(string)]++
				mu.Unlock()
			}
		}()
	}
	for i := 0; i < n; i++ {
		ids <- i
	}
	close(ids)
	wg.Wait()
	t.Logf("1000 registrations over weights 1:2:7: %v", counts)
	for _, l := range threeHubs() {
		share := float64(counts[l.Hostname]) / n
		want := float64(l.Weight) / 10
		if math.Abs(share-want) > 0.05 {
			t.Errorf("%s got %.3f of the devices, want %.2f±0.05", l.Hostname, share, want)
		}
		// every device exists in the hub it was assigned to, and only there
		if got, _ := h.LinkedHub(l.Hostname).listIdentities(""); len(got) != counts[l.Hostname] {
			t.Errorf("%s holds %d devices, the DPS assigned %d", l.Hostname, len(got), counts[l.Hostname])
		}
	}
	// hashing is stable: a device registering again lands where it was
	c := newDPSClient(t, h, h.DPSHostname(), nil)
	first, _ := h.Registration("device-0042")
	if again := registerInGroup(t, c, h, gk, "device-0042"); again["assignedHub"] != first.AssignedHub || again["substatus"] != "initialAssignment" {
		t.Errorf("re-registration moved the device: %v, was %s", again, first.AssignedHub)
	}
}

func TestDPSStaticGeoLatencyAndLinkedHubConnect(t *testing.T) {
	h := startDPS(t, Options{Hostname: "hub-a.localhost", LinkedHubs: threeHubs(), DPSRetryAfter: -1})
	c := newDPSClient(t, h, h.DPSHostname(), nil)
	gk := groupKey(t, h, EnrollmentGroup{EnrollmentGroupID: "static", EnrollmentSpec: EnrollmentSpec{
		Attestation: Attestation{Type: AttestationSymmetricKey}, AllocationPolicy: AllocationStatic, IotHubs: []string{"hub-b.localhost"},
	}})
	for i := 0; i < 20; i++ {
		if rs := registerInGroup(t, c, h, gk, fmt.Sprintf("s-%d", i)); rs["assignedHub"] != "hub-b.localhost" {
			t.Fatalf("static policy assigned %v", rs["assignedHub"])
		}
	}
	gl := groupKey(t, h, EnrollmentGroup{EnrollmentGroupID: "near", EnrollmentSpec: EnrollmentSpec{
		Attestation: Attestation{Type: AttestationSymmetricKey}, AllocationPolicy: "geolatency",
	}})
	for i := 0; i < 20; i++ {
		if rs := registerInGroup(t, c, h, gl, fmt.Sprintf("g-%d", i)); rs["assignedHub"] != "hub-b.localhost" {
			t.Fatalf("geoLatency assigned %v, not the 10 ms hub", rs["assignedHub"])
		}
	}
	// A device of a linked hub connects over the shared MQTT listener,
	// chosen by SNI, with the key the DPS provisioned.
	hb := h.LinkedHub("hub-b.localhost")
	cs, err := hb.ConnectionString("s-3", "")
	if err != nil {
		t.Fatal(err)
	}
	d := mustDial(t, hb, cs, withTLS(hb.TLSConfig()))
	if tw := d.getTwin(); tw == nil {
		t.Fatal("no twin from the linked hub")
	}
	if !hb.Connected("s-3", "") || h.Connected("s-3", "") {
		t.Error("the connection is not the linked hub's alone")
	}
	// The same device id in the parent hub is not that device.
	if _, err := h.getIdentity("s-3", ""); err == nil {
		t.Error("the parent hub holds a device the DPS put in hub-b")
	}
	// The linked hub's service API is served on the shared HTTPS listener.
	s := newSvc(t, hb, "iothubowner")
	if r := s.do(http.MethodGet, "/devices/s-3", nil); r.status != 200 {
		t.Fatalf("linked hub REST: %d %s", r.status, r.body)
	}
}

func TestDPSCustomAllocation(t *testing.T) {
	var mu sync.Mutex
	var got map[string]any
	wh := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body map[string]any
		_ = json.NewDecoder(r.Body).Decode(&body)
		mu.Lock()
		got = body
		mu.Unlock()
		rt := body["deviceRuntimeContext"].(map[string]any)
		hub := "hub-a.localhost"
		if p, _ := rt["payload"].(map[string]any); p["site"] == "north" {
			hub = "hub-c.localhost"
		}
		_ = json.NewEncoder(w).Encode(map[string]any{
			"iotHubHostName": hub,
			"initialTwin":    map[string]any{"tags": map[string]any{"chosenBy": "webhook"}},
			"payload":        map[string]any{"welcome": rt["registrationId"]},
		})
	}))
	defer wh.Close()
	h := startDPS(t, Options{Hostname: "hub-a.localhost", LinkedHubs: threeHubs(), DPSRetryAfter: -1})
	gk := groupKey(t, h, EnrollmentGroup{EnrollmentGroupID: "custom", EnrollmentSpec: EnrollmentSpec{
		Attestation: Attestation{Type: AttestationSymmetricKey}, AllocationPolicy: AllocationCustom,
		CustomAllocationDefinition: &CustomAllocationDefinition{WebhookURL: wh.URL + "/allocate", APIVersion: "2021-10-01"},
	}})
	c := newDPSClient(t, h, h.DPSHostname(), nil)
	dk, _ := DeriveDeviceKey(gk, "cam-1")
	r := c.register("cam-1", deviceToken(t, h, "cam-1", dk), map[string]any{"registrationId": "cam-1", "payload": map[string]any{"site": "north"}})
	if r.status != 200 {
		t.Fatalf("register: %d %s", r.status, r.raw)
	}
	rs := regState(t, r)
	if rs["assignedHub"] != "hub-c.localhost" || rs["payload"].(map[string]any)["welcome"] != "cam-1" {
		t.Fatalf("custom allocation: %v", rs)
	}
	if tw, _ := h.LinkedHub("hub-c.localhost").Twin("cam-1", ""); tw.Tags["chosenBy"] != "webhook" {
		t.Errorf("webhook's initial twin not applied: %v", tw.Tags)
	}
	mu.Lock()
	defer mu.Unlock()
	if got["enrollmentGroup"] == nil || len(got["linkedHubs"].([]any)) != 3 {
		t.Errorf("webhook request %v", got)
	}
	eg := got["enrollmentGroup"].(map[string]any)["attestation"].(map[string]any)["symmetricKey"].(map[string]any)
	if eg["primaryKey"] != "" {
		t.Error("the webhook was sent the group key")
	}

	// A webhook off loopback is never called: the registration fails with
	// the reason, and no device is created.
	gx := groupKey(t, h, EnrollmentGroup{EnrollmentGroupID: "far", EnrollmentSpec: EnrollmentSpec{
		Attestation: Attestation{Type: AttestationSymmetricKey}, AllocationPolicy: AllocationCustom,
		CustomAllocationDefinition: &CustomAllocationDefinition{WebhookURL: "https://allocator.example.com/allocate"},
	}})
	dx, _ := DeriveDeviceKey(gx, "cam-2")
	rf := c.register("cam-2", deviceToken(t, h, "cam-2", dx), nil)
	if rf.status != 200 || rf.body["status"] != RegFailed || regState(t, rf)["errorMessage"] == "" {
		t.Fatalf("off-loopback webhook: %d %s", rf.status, rf.raw)
	}
	for _, l := range threeHubs() {
		if _, err := h.LinkedHub(l.Hostname).getIdentity("cam-2", ""); err == nil {
			t.Errorf("a failed registration created cam-2 in %s", l.Hostname)
		}
	}

	// A custom policy without a webhook is refused when the enrollment is written.
	_, err := h.PutEnrollment(Enrollment{RegistrationID: "x", EnrollmentSpec: EnrollmentSpec{
		Attestation: Attestation{Type: AttestationSymmetricKey}, AllocationPolicy: AllocationCustom,
	}}, "")
	if err == nil {
		t.Error("custom policy without a webhook accepted")
	}
}
