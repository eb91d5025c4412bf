package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/twinlet/twinlet/internal/agent"
	"github.com/twinlet/twinlet/internal/backoff"
	"github.com/twinlet/twinlet/internal/config"
	"github.com/twinlet/twinlet/internal/dps"
	"github.com/twinlet/twinlet/internal/iothub"
	"github.com/twinlet/twinlet/providers"
	"github.com/twinlet/twinlet/reconciler"
)

// agentRef is the agent the reconciler's reports go to; provisioning
// replaces it when the identity changes.
type agentRef struct {
	mu sync.Mutex
	a  *agent.Agent
}

func (r *agentRef) set(a *agent.Agent) {
	r.mu.Lock()
	r.a = a
	r.mu.Unlock()
}

// UploadFile uploads through the current agent (providers.FileUploader).
func (r *agentRef) UploadFile(ctx context.Context, name string, content io.ReaderAt, size int64) (providers.UploadResult, error) {
	r.mu.Lock()
	a := r.a
	r.mu.Unlock()
	if a == nil {
		return providers.UploadResult{}, providers.ErrNoUploader
	}
	return a.UploadFile(ctx, name, content, size)
}

// Notify passes a reported document to the current agent, if any.
func (r *agentRef) Notify(doc []byte) {
	r.mu.Lock()
	a := r.a
	r.mu.Unlock()
	if a != nil {
		a.Notify(doc)
	}
}

// provisioner runs the agent on an identity provisioned through DPS. On
// first start it provisions (or, in wait mode, waits for another
// provisioning client to store the identity); when the hub refuses the
// identity (a bad key, a disabled or deleted device) it provisions again,
// with backoff, and keeps the old identity until the new one has
// connected: a failed re-provisioning never costs the device the identity
// it had.
type provisioner struct {
	cfg     config.Config
	dps     *config.DPS
	store   dps.Store
	r       *reconciler.Reconciler
	ref     *agentRef
	metrics *agent.Metrics
	tpms    *tpmSet
	log     *slog.Logger
	// afterPing is the agent's AfterPing (agent.Options).
	afterPing func()

	// retryMin/Max bound the delay after a provisioning that may succeed
	// later (the service unreachable, throttling, a hub refusing a fresh
	// identity); fatalMin/Max after one the service refused (a wrong key,
	// a disabled enrollment), which needs an operator first.
	retryMin, retryMax, fatalMin, fatalMax time.Duration
	// waitPoll is how often wait mode looks for the identity.
	waitPoll time.Duration
	// refusals is how many refused connects in a row end an identity.
	refusals int
}

func newProvisioner(cfg config.Config, r *reconciler.Reconciler, ref *agentRef, m *agent.Metrics, tpms *tpmSet, log *slog.Logger) (*provisioner, error) {
	if cfg.Identity == "module" {
		return nil, errors.New("connection.dps: identity: module is not supported with DPS (DPS assigns a device identity)")
	}
	if cfg.StateDir == "" {
		return nil, errors.New("connection.dps: a state directory is required to keep the identity")
	}
	return &provisioner{
		cfg: cfg, dps: cfg.Connection.DPS, store: dps.Store{Dir: cfg.StateDir}, r: r, ref: ref, metrics: m, tpms: tpms,
		log:      log.With("component", "provisioning"),
		retryMin: 2 * time.Second, retryMax: 5 * time.Minute,
		fatalMin: 30 * time.Second, fatalMax: 30 * time.Minute,
		waitPoll: 2 * time.Second, refusals: 2,
	}, nil
}

// run keeps the device connected on a provisioned identity until ctx ends.
func (p *provisioner) run(ctx context.Context) {
	// failures counts provisioning rounds since the last connect that
	// worked: it grows the delays so a fleet refused by its hub, or by
	// DPS, never storms either. next is the earliest next round; until
	// then the device keeps trying the identity it has.
	failures := 0
	var next time.Time
	var refused *dps.Identity // the identity the hub refused last
	for ctx.Err() == nil {
		id, pending, ok, err := p.store.Current()
		if err != nil {
			p.log.Error("stored identity unusable", "err", err)
			ok = false
		}
		if ok && refused != nil && sameIdentity(id, *refused) {
			if pending {
				// A fresh identity the hub refused before it ever
				// connected: drop it, the old one (if any) is still there.
				p.log.Warn("the hub refused the newly provisioned identity; dropping it", "hub", id.HostName, "device", id.DeviceID)
				if err := p.store.DropPending(); err != nil {
					p.log.Error("drop pending identity", "err", err)
				}
				refused = nil
				continue
			}
			ok = false // the identity in use was refused: a new one is needed
		}
		if !ok {
			old, haveOld, _ := p.store.InUse()
			failures++
			if p.dps.Wait {
				if p.waitFor(ctx, refused, p.delay(nil, failures), failures == 1) || haveOld {
					refused = nil // a new identity came, or try the old one again meanwhile
				}
				continue
			}
			if !backoff.Sleep(ctx, time.Until(next)) {
				return
			}
			nid, err := p.provision(ctx)
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				d := p.delay(err, failures)
				next = time.Now().Add(d)
				if haveOld {
					p.log.Warn("provisioning failed; keeping the old identity", "err", err, "hub", old.HostName, "device", old.DeviceID, "retry_in", d.Round(time.Second).String())
					refused = nil // it may work again (a device re-enabled)
				} else {
					p.log.Error("provisioning failed", "err", err, "retry_in", d.Round(time.Second).String())
				}
				continue
			}
			// A fresh identity that does not connect brings the next
			// round no sooner.
			next = time.Now().Add(p.delay(nil, failures))
			if err := p.store.SavePending(nid); err != nil {
				p.log.Error("store the provisioned identity", "err", err)
			}
			continue
		}
		if p.runIdentity(ctx, id, pending, next) {
			failures, next = 0, time.Time{}
		}
		refused = &id
	}
}

// delay is the wait before provisioning round n+1 after err.
func (p *provisioner) delay(err error, n int) time.Duration {
	if n < 1 {
		n = 1
	}
	if err != nil && !dps.IsRetryable(err) {
		return backoff.Delay(p.fatalMin, p.fatalMax, n)
	}
	return backoff.Delay(p.retryMin, p.retryMax, n)
}

// waitFor waits up to d for the store to hold an identity other than
// refused; it reports whether one came.
func (p *provisioner) waitFor(ctx context.Context, refused *dps.Identity, d time.Duration, announce bool) bool {
	if announce {
		p.log.Info("waiting for another provisioning client to store the identity", "file", filepath.Join(p.store.Dir, dps.IdentityFile))
	}
	deadline := time.Now().Add(d)
	for {
		if id, _, ok, _ := p.store.Current(); ok && (refused == nil || !sameIdentity(id, *refused)) {
			return true
		}
		if id, ok := p.slotIdentity(); ok && (refused == nil || id.HostName != refused.HostName || id.DeviceID != refused.DeviceID) {
			if err := p.store.Save(id); err != nil {
				p.log.Error("store the identity found in the TPM slot", "err", err)
			} else {
				return true
			}
		}
		if time.Now().After(deadline) || !backoff.Sleep(ctx, p.waitPoll) {
			return false
		}
	}
}

// slotIdentity is the identity another provisioning client stored in the
// configured TPM slot (a key and the hub URI), in wait mode. The TPM is
// opened for the look only, so that the other client can reach it in
// between (swtpm serves one client at a time).
func (p *provisioner) slotIdentity() (dps.Identity, bool) {
	a := p.dps.Attestation.TPM
	if a == nil {
		return dps.Identity{}, false
	}
	look := &tpmSet{}
	defer look.Close()
	cs, _, err := tpmIdentity(look, config.TPMSlot{TCTI: a.TCTI, Slot: a.Slot})
	if err != nil || cs.ModuleID != "" {
		return dps.Identity{}, false
	}
	return dps.Identity{HostName: cs.HostName, DeviceID: cs.DeviceID, Auth: dps.AuthTPM, Slot: a.Slot, ProvisionedAt: time.Now().UTC()}, true
}

// provision registers with DPS once (the client retries what is worth
// retrying, boundedly) and returns the identity to store.
func (p *provisioner) provision(ctx context.Context) (dps.Identity, error) {
	d := *p.dps
	if a := d.Attestation.TPM; a != nil {
		slot := *a
		slot.Slot = p.slotFor()
		d.Attestation.TPM = &slot
	}
	dc, err := dpsConfig(&d, p.cfg.Connection.CAFile, p.tpms, p.log)
	if err != nil {
		return dps.Identity{}, err
	}
	p.log.Info("provisioning", "endpoint", dc.Endpoint, "idScope", dc.IDScope, "registrationId", dc.RegistrationID, "attestation", describeDPS(p.dps))
	res, err := dps.Register(ctx, dc)
	if err != nil {
		return dps.Identity{}, err
	}
	p.log.Info("provisioned", "hub", res.AssignedHub, "device", res.DeviceID, "substatus", res.Substatus)
	if err := storeSlotURI(p.tpms, &d, res); err != nil {
		return dps.Identity{}, err
	}
	return identityOf(res, &d, time.Now()), nil
}

// runIdentity runs an agent on id until ctx ends or the hub refused the
// identity (not before notBefore: until then the client keeps trying it
// with its own backoff); it reports whether the identity connected. A
// pending identity that connects replaces the one in use.
func (p *provisioner) runIdentity(ctx context.Context, id dps.Identity, pending bool, notBefore time.Time) (connected bool) {
	dc, err := p.deviceConfig(id)
	if err != nil {
		p.log.Error("stored identity unusable", "err", err)
		return false
	}
	events := make(chan error, 64)
	dc.OnConnectResult = func(err error) {
		select {
		case events <- err:
		default:
		}
	}
	ag, err := agent.New(p.r, dc, agent.Options{StateDir: p.cfg.StateDir, Metrics: p.metrics, Logger: p.log.With("component", "iothub"),
		AfterPing: p.afterPing})
	if err != nil {
		p.log.Error("agent", "err", err)
		return false
	}
	p.ref.set(ag)
	defer p.ref.set(nil)
	p.log.Info("connecting to IoT Hub", "host", dc.HostName, "device", dc.DeviceID, "new_identity", pending)
	actx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); ag.Run(actx) }()
	defer func() { cancel(); <-done }()
	refusals := 0
	for {
		select {
		case <-ctx.Done():
			return connected
		case err := <-events:
			switch {
			case err == nil:
				refusals = 0
				if !connected && pending {
					if perr := p.store.Promote(); perr != nil {
						p.log.Error("keep the new identity", "err", perr)
					} else {
						p.log.Info("the new identity connected; it is now the one in use", "hub", id.HostName, "device", id.DeviceID)
					}
				}
				connected = true
			case iothub.IsUnauthorized(err):
				refusals++
				if refusals >= p.refusals && !time.Now().Before(notBefore) {
					p.log.Warn("the hub refuses the identity", "hub", id.HostName, "device", id.DeviceID, "err", err)
					return connected
				}
			}
		}
	}
}

// deviceConfig is the device client configuration of a stored identity.
func (p *provisioner) deviceConfig(id dps.Identity) (iothub.DeviceConfig, error) {
	c := p.cfg
	c.Connection = config.Connection{CAFile: p.cfg.Connection.CAFile, Port: p.cfg.Connection.Port, KeepAlive: p.cfg.Connection.KeepAlive}
	switch id.Auth {
	case dps.AuthKey:
		c.Connection.ConnectionString = id.ConnectionString
	case dps.AuthX509:
		c.Connection.X509 = &config.X509{CertFile: id.CertFile, KeyFile: id.KeyFile}
		c.Connection.HostName, c.Connection.DeviceID = id.HostName, id.DeviceID
	case dps.AuthTPM:
		t, err := p.tpms.get(p.tcti())
		if err != nil {
			return iothub.DeviceConfig{}, fmt.Errorf("tpm: %w", err)
		}
		dc := iothub.DeviceConfig{HostName: id.HostName, DeviceID: id.DeviceID, Signer: t.Signer(id.Slot), KeepAlive: p.cfg.Connection.KeepAlive}
		if f := p.cfg.Connection.CAFile; f != "" {
			pem, err := os.ReadFile(f)
			if err != nil {
				return dc, fmt.Errorf("connection.caFile: %w", err)
			}
			dc.CAPEM = pem
		}
		if port := p.cfg.Connection.Port; port != 0 {
			dc.Addr = net.JoinHostPort(id.HostName, strconv.Itoa(port))
		}
		return dc, nil
	default:
		return iothub.DeviceConfig{}, fmt.Errorf("identity: auth %q unknown", id.Auth)
	}
	return deviceConfig(c, p.tpms)
}

func (p *provisioner) tcti() string {
	if t := p.dps.Attestation.TPM; t != nil {
		return t.TCTI
	}
	return ""
}

// slotFor is the TPM slot a new registration activates its keys into:
// the configured slot, or the spare one while the configured slot holds
// the identity in use, so the old key is kept until the new one connected.
func (p *provisioner) slotFor() int {
	a := p.dps.Attestation.TPM
	if a == nil {
		return 0
	}
	if in, ok, _ := p.store.InUse(); ok && in.Auth == dps.AuthTPM && a.SpareSlot != nil {
		if in.Slot == a.Slot {
			return *a.SpareSlot
		}
		return a.Slot
	}
	return a.Slot
}

// sameIdentity reports whether two stored identities are the same one.
func sameIdentity(a, b dps.Identity) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return string(x) == string(y)
}
