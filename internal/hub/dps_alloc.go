package hub

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"
)

// LinkedHub is an IoT hub linked to the DPS. Every linked hub is served by
// the same twinhub process, on the same listeners, chosen by host name.
type LinkedHub struct {
	// Hostname is the hub's host name.
	Hostname string `json:"hostname"`
	// Weight is the hub's share in the hashed policy, 1 to 1000; 0 means 1.
	Weight int `json:"weight,omitempty"`
	// Latency is the hub's latency from devices, for the geoLatency policy.
	Latency time.Duration `json:"latency,omitempty"`
	// NoAllocation takes the hub out of the allocation of enrollments that
	// do not name it ("apply allocation policy" off).
	NoAllocation bool `json:"noAllocation,omitempty"`
}

func (l LinkedHub) weight() int {
	if l.Weight <= 0 {
		return 1
	}
	return l.Weight
}

// allocation is the outcome of an allocation policy.
type allocation struct {
	hub         string
	initialTwin *InitialTwin // from a custom webhook, else the enrollment's
	payload     any          // from a custom webhook
}

// candidates are the linked hubs an enrollment may be allocated to.
func (d *dps) candidates(spec EnrollmentSpec) ([]LinkedHub, error) {
	linked := d.h.linkedHubs()
	if len(spec.IotHubs) == 0 {
		var out []LinkedHub
		for _, l := range linked {
			if !l.NoAllocation {
				out = append(out, l)
			}
		}
		if len(out) == 0 {
			return nil, dpsErr(400, dpsNoLinkedHub, "no linked hub applies the allocation policy")
		}
		return out, nil
	}
	var out []LinkedHub
	for _, name := range spec.IotHubs {
		found := false
		for _, l := range linked {
			if strings.EqualFold(l.Hostname, name) {
				out = append(out, l)
				found = true
				break
			}
		}
		if !found {
			return nil, dpsErr(400, dpsNoLinkedHub, "enrollment names hub %s, which is not linked to this DPS", name)
		}
	}
	return out, nil
}

// allocate runs the enrollment's allocation policy (or the instance's).
func (d *dps) allocate(ctx context.Context, regID string, a *attested, payload any) (allocation, error) {
	policy := a.spec.AllocationPolicy
	if policy == "" {
		policy = d.h.opts.DPSAllocationPolicy
	}
	if policy == "" {
		policy = AllocationHashed
	}
	out := allocation{initialTwin: a.spec.InitialTwin}
	if policy == AllocationStatic {
		hub := a.spec.IotHubHostName
		if hub == "" && len(a.spec.IotHubs) == 1 {
			hub = a.spec.IotHubs[0]
		}
		if hub == "" {
			return out, dpsErr(400, dpsNoLinkedHub, "the static policy needs exactly one hub in iotHubs")
		}
		if _, err := d.candidates(EnrollmentSpec{IotHubs: []string{hub}}); err != nil {
			return out, err
		}
		out.hub = hub
		return out, nil
	}
	cands, err := d.candidates(a.spec)
	if err != nil {
		return out, err
	}
	switch strings.ToLower(policy) {
	case "hashed":
		out.hub = hashedChoice(regID, cands)
	case "geolatency":
		best := cands[0].Latency
		for _, c := range cands {
			best = min(best, c.Latency)
		}
		var ties []LinkedHub
		for _, c := range cands {
			if c.Latency == best {
				ties = append(ties, c)
			}
		}
		out.hub = hashedChoice(regID, ties)
	case "custom":
		return d.customAllocation(ctx, regID, a, payload, cands)
	default:
		return out, dpsErr(400, dpsBadRequest, "allocation policy %q is not hashed, geoLatency, static or custom", policy)
	}
	return out, nil
}

// hashedChoice picks a hub by weighted rendezvous hashing of the
// registration id: each hub is chosen with a probability proportional to
// its weight, the same id always lands on the same hub, and a hub added or
// removed moves only the devices it gains or loses.
func hashedChoice(regID string, hubs []LinkedHub) string {
	best, bestScore := "", math.Inf(-1)
	for _, l := range hubs {
		sum := sha256.Sum256([]byte(strings.ToLower(regID) + "\x00" + strings.ToLower(l.Hostname)))
		// u in (0, 1)
		u := (float64(binary.BigEndian.Uint64(sum[:8])>>11) + 0.5) / float64(uint64(1)<<53)
		score := -float64(l.weight()) / math.Log(u)
		if score > bestScore {
			best, bestScore = l.Hostname, score
		}
	}
	return best
}

// customAllocation asks the enrollment's webhook, which must listen on
// loopback, which hub the device goes to.
func (d *dps) customAllocation(ctx context.Context, regID string, a *attested, payload any, cands []LinkedHub) (allocation, error) {
	out := allocation{initialTwin: a.spec.InitialTwin}
	def := a.spec.CustomAllocationDefinition
	if def == nil || def.WebhookURL == "" {
		return out, dpsErr(400, dpsBadRequest, "the custom policy needs customAllocationDefinition.webhookUrl")
	}
	u, err := url.Parse(def.WebhookURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") {
		return out, dpsErr(400, dpsBadRequest, "webhook URL %q is not an http(s) URL", def.WebhookURL)
	}
	if !loopbackHost(u.Hostname()) {
		return out, dpsErr(400, dpsBadRequest, "twinhub calls webhooks on loopback only, not %s", u.Hostname())
	}
	if def.APIVersion != "" {
		q := u.Query()
		q.Set("api-version", def.APIVersion)
		u.RawQuery = q.Encode()
	}
	hubs := make([]string, len(cands))
	for i, c := range cands {
		hubs[i] = c.Hostname
	}
	rt := map[string]any{"registrationId": regID, "payload": payload}
	switch {
	case a.reg.SymmetricKey != nil:
		rt["symmetricKey"] = map[string]any{}
	case a.reg.X509 != nil:
		rt["x509"] = map[string]any{}
	default:
		rt["tpm"] = map[string]any{}
	}
	req := map[string]any{"deviceRuntimeContext": rt, "linkedHubs": hubs}
	if a.enr != nil {
		req["individualEnrollment"] = redactEnrollment(*a.enr)
	} else if a.grp != nil {
		req["enrollmentGroup"] = redactGroup(*a.grp)
	}
	body, _ := json.Marshal(req)
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), bytes.NewReader(body))
	if err != nil {
		return out, dpsErr(400, dpsBadRequest, "webhook: %v", err)
	}
	hr.Header.Set("Content-Type", "application/json")
	hc := &http.Client{Transport: &http.Transport{Proxy: nil, DialContext: loopbackDial}}
	defer hc.CloseIdleConnections()
	resp, err := hc.Do(hr)
	if err != nil {
		return out, dpsErr(400, 400209, "custom allocation webhook failed: %v", err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if resp.StatusCode/100 != 2 {
		return out, dpsErr(400, 400209, "custom allocation webhook answered %d", resp.StatusCode)
	}
	var res struct {
		IotHubHostName string       `json:"iotHubHostName"`
		InitialTwin    *InitialTwin `json:"initialTwin"`
		Payload        any          `json:"payload"`
	}
	if err := json.Unmarshal(data, &res); err != nil {
		return out, dpsErr(400, 400209, "custom allocation webhook answered invalid JSON: %v", err)
	}
	ok := false
	for _, h := range hubs {
		if strings.EqualFold(h, res.IotHubHostName) {
			ok, res.IotHubHostName = true, h
		}
	}
	if !ok {
		return out, dpsErr(400, dpsNoLinkedHub, "custom allocation webhook chose %q, which is not a linked hub", res.IotHubHostName)
	}
	out.hub, out.payload = res.IotHubHostName, res.Payload
	if res.InitialTwin != nil {
		out.initialTwin = res.InitialTwin
	}
	return out, nil
}

func loopbackHost(h string) bool {
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// loopbackDial refuses anything but loopback addresses, after resolution.
func loopbackDial(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	if host == "localhost" {
		host = "127.0.0.1"
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("webhook address %s is not loopback", addr)
	}
	var dl net.Dialer
	return dl.DialContext(ctx, network, net.JoinHostPort(ip.String(), port))
}

// assign allocates a hub, creates or moves the device there and records
// the registration; it returns the finished operation.
func (d *dps) assign(ctx context.Context, regID string, a *attested, payload any, force bool) (*operation, error) {
	d.assignMu.Lock()
	defer d.assignMu.Unlock()
	lower := strings.ToLower(regID)
	now := time.Now().UTC()
	d.mu.Lock()
	var prev *RegistrationState
	if p, ok := d.st.Registrations[lower]; ok {
		c := *p
		prev = &c
	}
	d.mu.Unlock()

	res := a.reg
	res.RegistrationID = regID
	res.CreatedDateTimeUtc = now
	if prev != nil {
		res.CreatedDateTimeUtc = prev.CreatedDateTimeUtc
	}
	res.LastUpdatedDateTimeUtc = now
	res.Etag = newEtag()
	if a.grp != nil {
		res.DeviceID = regID
	} else {
		res.DeviceID = a.deviceID
		if res.DeviceID == "" {
			res.DeviceID = regID
		}
	}

	if a.spec.ProvisioningStatus == RegDisabled {
		res.Status, res.DeviceID = RegDisabled, ""
		res.ErrorMessage = "the enrollment is disabled"
		if a.grp != nil {
			res.ErrorMessage = "the enrollment group " + a.grp.EnrollmentGroupID + " is disabled"
		}
		d.countError(401003)
		return d.finish(lower, res, a), nil
	}

	err := d.place(ctx, regID, a, payload, prev, force, &res)
	if err != nil {
		var de *dpsError
		if !errors.As(err, &de) {
			de = toDPSError(err)
		}
		res.Status, res.Substatus, res.AssignedHub, res.DeviceID = RegFailed, "", "", ""
		res.ErrorCode, res.ErrorMessage = de.code, de.msg
		d.countError(de.code)
	}
	return d.finish(lower, res, a), nil
}

// finish records the registration and its operation.
func (d *dps) finish(lower string, res RegistrationState, a *attested) *operation {
	op := &operation{id: newOperationID(), regID: res.RegistrationID, result: res, verify: a.verify}
	d.mu.Lock()
	if res.Status != RegDisabled || d.st.Registrations[lower] == nil {
		r := res
		d.st.Registrations[lower] = &r
	} else {
		d.st.Registrations[lower].Status = RegDisabled
		d.st.Registrations[lower].LastUpdatedDateTimeUtc = res.LastUpdatedDateTimeUtc
	}
	if e := d.st.Enrollments[lower]; e != nil && a.enr != nil {
		r := res
		e.RegistrationState = &r
	}
	d.ops[op.id] = op
	d.pruneOpsLocked()
	d.changedLocked()
	d.mu.Unlock()
	d.saveLogged()
	return op
}

// maxOps bounds the operations kept for polling.
const maxOps = 10000

func (d *dps) pruneOpsLocked() {
	if len(d.ops) <= maxOps {
		return
	}
	ids := make([]string, 0, len(d.ops))
	for id := range d.ops {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids[:len(ids)-maxOps] {
		delete(d.ops, id)
	}
}

// place decides the hub (allocation or the reprovisioning policy) and
// makes the device exist there with the right credentials and twin.
func (d *dps) place(ctx context.Context, regID string, a *attested, payload any, prev *RegistrationState, force bool, res *RegistrationState) error {
	policy := ReprovisionPolicy{UpdateHubAssignment: true, MigrateDeviceData: true}
	if a.spec.ReprovisionPolicy != nil {
		policy = *a.spec.ReprovisionPolicy
	}
	var prevHub *Hub
	if prev != nil && prev.Status == RegAssigned {
		prevHub = d.h.hubByHost(prev.AssignedHub)
	}
	var al allocation
	if prevHub != nil && !policy.UpdateHubAssignment && !force {
		al = allocation{hub: prev.AssignedHub, initialTwin: a.spec.InitialTwin}
	} else {
		var err error
		if al, err = d.allocate(ctx, regID, a, payload); err != nil {
			return err
		}
	}
	target := d.h.hubByHost(al.hub)
	if target == nil {
		return dpsErr(400, dpsNoLinkedHub, "hub %s is not served by this twinhub", al.hub)
	}
	if a.tpm != nil {
		// The hub key travels to the device wrapped to its TPM.
		key := make([]byte, 32)
		if _, err := randRead(key); err != nil {
			return err
		}
		ek, _ := decodeB64(a.tpm.TPM.EndorsementKey)
		srk, _ := decodeB64(a.tpm.TPM.StorageRootKey)
		blob, err := d.activation(ek, srk, key)
		if err != nil {
			return err
		}
		k := encodeB64(key)
		a.auth = Authentication{Type: AuthSAS, SymmetricKey: SymmetricKey{PrimaryKey: k, SecondaryKey: k}}
		res.TPM = &RegTPM{AuthenticationKey: encodeB64(blob)}
	}
	deviceID := res.DeviceID
	sub := "initialAssignment"
	moving := prevHub != nil && prevHub != target
	var carried *InitialTwin
	if moving {
		if policy.MigrateDeviceData {
			if t, err := prevHub.Twin(prev.DeviceID, ""); err == nil {
				carried = &InitialTwin{Tags: t.Tags, Properties: &InitialTwinProperties{Desired: stripSystem(t.Properties.Desired)}}
			}
			sub = "deviceDataMigrated"
		} else {
			sub = "deviceDataReset"
		}
		if err := prevHub.DeleteDevice(prev.DeviceID); err != nil && !errors.Is(err, ErrNotFound) {
			return fmt.Errorf("remove %s from %s: %w", prev.DeviceID, prev.AssignedHub, err)
		}
	} else if prev != nil && prev.Status == RegAssigned && prev.Substatus != "" {
		sub = prev.Substatus
	}
	created, err := target.provisionIdentity(deviceID, a.auth, a.spec.Capabilities)
	if err != nil {
		return err
	}
	twin := al.initialTwin
	if carried != nil {
		twin = carried
	}
	if created && twin != nil {
		p := TwinPatch{Tags: twin.Tags}
		if twin.Properties != nil && twin.Properties.Desired != nil {
			p.Properties = &struct {
				Desired map[string]any `json:"desired,omitempty"`
			}{Desired: twin.Properties.Desired}
		}
		if _, err := target.UpdateTwin(deviceID, "", p, false, "*"); err != nil {
			return fmt.Errorf("initial twin of %s: %w", deviceID, err)
		}
	}
	res.Status, res.Substatus, res.AssignedHub = RegAssigned, sub, target.hostname
	res.ErrorCode, res.ErrorMessage = 0, ""
	if al.payload != nil {
		res.Payload = al.payload
	}
	return nil
}

// provisionIdentity creates a device with auth or, when it exists, gives
// it auth (keeping its status). It reports whether it created it.
func (h *Hub) provisionIdentity(deviceID string, auth Authentication, caps *Capabilities) (bool, error) {
	id, err := h.getIdentity(deviceID, "")
	if errors.Is(err, ErrNotFound) {
		_, err := h.putIdentity(Identity{DeviceID: deviceID, Authentication: auth, Capabilities: caps}, "")
		if err != nil {
			return false, fmt.Errorf("create %s in %s: %w", deviceID, h.hostname, err)
		}
		return true, nil
	}
	if err != nil {
		return false, err
	}
	id.Authentication = auth
	if caps != nil {
		id.Capabilities = caps
	}
	if _, err := h.putIdentity(id, "*"); err != nil {
		return false, fmt.Errorf("update %s in %s: %w", deviceID, h.hostname, err)
	}
	return false, nil
}
