package hub

import (
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/twinlet/twinlet/internal/iothub"
)

// ifMatchExisting, as putIdentity's ifMatch, updates an existing identity
// whatever its etag and, unlike "*", never creates one: the bulk import
// mode "update". An HTTP header cannot carry it (it holds a NUL).
const ifMatchExisting = "\x00existing"

// putIdentity creates or updates a device (in.ModuleID empty) or module.
// ifMatch empty means "create"; "*" means "create or update"; an etag or
// ifMatchExisting means "update", and a missing identity is not found. It
// returns the stored identity.
func (h *Hub) putIdentity(in Identity, ifMatch string) (Identity, error) {
	if !validID.MatchString(in.DeviceID) {
		return Identity{}, fmt.Errorf("device id %q: %w", in.DeviceID, ErrInvalid)
	}
	if in.ModuleID != "" && !validID.MatchString(in.ModuleID) {
		return Identity{}, fmt.Errorf("module id %q: %w", in.ModuleID, ErrInvalid)
	}
	// An update without keys keeps the identity's keys.
	keepKeys := (in.Authentication.Type == "" || in.Authentication.Type == AuthSAS) && in.Authentication.SymmetricKey == (SymmetricKey{})
	if err := normalizeAuth(&in.Authentication); err != nil {
		return Identity{}, err
	}
	switch in.Status {
	case "":
		if in.ModuleID == "" {
			in.Status = "enabled"
		}
	case "enabled", "disabled":
		if in.ModuleID != "" {
			in.Status = ""
		}
	default:
		return Identity{}, fmt.Errorf("status %q must be enabled or disabled: %w", in.Status, ErrInvalid)
	}
	now := time.Now().UTC()
	key := idKey(in.DeviceID, in.ModuleID)

	h.mu.Lock()
	defer h.mu.Unlock()
	if in.ModuleID != "" {
		if _, ok := h.records[in.DeviceID]; !ok {
			return Identity{}, notFound(in.DeviceID, "")
		}
	}
	r, exists := h.records[key]
	if !exists {
		if ifMatch != "" && ifMatch != "*" {
			return Identity{}, notFound(in.DeviceID, in.ModuleID)
		}
		id := Identity{
			DeviceID: in.DeviceID, ModuleID: in.ModuleID, ManagedBy: in.ManagedBy,
			GenerationID: newGenerationID(), Etag: newEtag(),
			ConnectionState: "Disconnected", Status: in.Status, StatusReason: in.StatusReason,
			StatusUpdatedTime: now, ConnectionStateUpdatedTime: now,
			Authentication: in.Authentication, Capabilities: in.Capabilities,
		}
		if id.ModuleID == "" && id.Capabilities == nil {
			id.Capabilities = &Capabilities{}
		}
		r = &record{Identity: id, Twin: newTwinState(now)}
		h.records[key] = r
		h.markDirty(key)
		h.admTouchLocked(key)
		return r.Identity, nil
	}
	if ifMatch == "" {
		return Identity{}, fmt.Errorf("%s: %w", describe(in.DeviceID, in.ModuleID), ErrAlreadyExists)
	}
	if ifMatch != ifMatchExisting && !etagMatches(ifMatch, r.Identity.Etag) {
		return Identity{}, fmt.Errorf("%s etag: %w", describe(in.DeviceID, in.ModuleID), ErrPreconditionFailed)
	}
	id := &r.Identity
	if keepKeys && id.Authentication.Type == AuthSAS {
		in.Authentication.SymmetricKey = id.Authentication.SymmetricKey
	}
	id.Authentication = in.Authentication
	if in.Capabilities != nil {
		id.Capabilities = in.Capabilities
	}
	id.ManagedBy = in.ManagedBy
	id.StatusReason = in.StatusReason
	if in.Status != id.Status {
		id.Status = in.Status
		id.StatusUpdatedTime = now
	}
	id.Etag = newEtag()
	h.markDirty(key)
	if id.Status == "disabled" {
		h.dropLocked(func(c *conn) bool { return c.deviceID == in.DeviceID }, errDisabled)
	}
	// New keys invalidate live SAS connections signed with the old ones,
	// as on the service.
	return *id, nil
}

func describe(deviceID, moduleID string) string {
	if moduleID != "" {
		return "module " + deviceID + "/" + moduleID
	}
	return "device " + deviceID
}

// normalizeAuth fills defaults and generates missing symmetric keys.
func normalizeAuth(a *Authentication) error {
	if a.Type == "" {
		a.Type = AuthSAS
	}
	switch a.Type {
	case AuthSAS:
		for _, k := range []*string{&a.SymmetricKey.PrimaryKey, &a.SymmetricKey.SecondaryKey} {
			if *k == "" {
				continue
			}
			b, err := base64.StdEncoding.DecodeString(*k)
			if err != nil || len(b) < 16 || len(b) > 64 {
				return fmt.Errorf("symmetric key must be base64 of 16 to 64 bytes: %w", ErrInvalid)
			}
		}
		if a.SymmetricKey.PrimaryKey == "" && a.SymmetricKey.SecondaryKey == "" {
			a.SymmetricKey = SymmetricKey{PrimaryKey: newKey(), SecondaryKey: newKey()}
		}
		a.X509Thumbprint = X509Thumbprint{}
	case AuthSelfSigned:
		p, s := a.X509Thumbprint.PrimaryThumbprint, a.X509Thumbprint.SecondaryThumbprint
		if p == nil || *p == "" {
			return fmt.Errorf("selfSigned authentication needs x509Thumbprint.primaryThumbprint: %w", ErrInvalid)
		}
		for _, t := range []*string{p, s} {
			if t == nil || *t == "" {
				continue
			}
			*t = strings.ToUpper(strings.ReplaceAll(*t, ":", ""))
			if b, err := hex.DecodeString(*t); err != nil || (len(b) != 20 && len(b) != 32) {
				return fmt.Errorf("thumbprint must be a hex SHA-1 or SHA-256: %w", ErrInvalid)
			}
		}
		a.SymmetricKey = SymmetricKey{}
	case AuthCA, AuthNone:
		a.SymmetricKey = SymmetricKey{}
		a.X509Thumbprint = X509Thumbprint{}
	default:
		return fmt.Errorf("authentication type %q: %w", a.Type, ErrInvalid)
	}
	return nil
}

func (h *Hub) getIdentity(deviceID, moduleID string) (Identity, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	r, ok := h.records[idKey(deviceID, moduleID)]
	if !ok {
		return Identity{}, notFound(deviceID, moduleID)
	}
	return r.Identity, nil
}

func (h *Hub) deleteIdentity(deviceID, moduleID, ifMatch string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	key := idKey(deviceID, moduleID)
	r, ok := h.records[key]
	if !ok {
		return notFound(deviceID, moduleID)
	}
	if !etagMatches(ifMatch, r.Identity.Etag) {
		return fmt.Errorf("%s etag: %w", describe(deviceID, moduleID), ErrPreconditionFailed)
	}
	for k, r := range h.records {
		if k == key || (moduleID == "" && r.Identity.DeviceID == deviceID) {
			h.admTouchLocked(k) // before the delete: it may carry configuration state
			delete(h.records, k)
			h.markDirty(k)
		}
	}
	h.dropLocked(func(c *conn) bool {
		return c.deviceID == deviceID && (moduleID == "" || c.moduleID == moduleID)
	}, errDeleted)
	return nil
}

// listIdentities lists devices (deviceID empty) or a device's modules.
func (h *Hub) listIdentities(deviceID string) ([]Identity, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if deviceID != "" {
		if _, ok := h.records[deviceID]; !ok {
			return nil, notFound(deviceID, "")
		}
	}
	out := []Identity{}
	for _, r := range h.records {
		if deviceID == "" && r.Identity.ModuleID == "" || deviceID != "" && r.Identity.DeviceID == deviceID && r.Identity.ModuleID != "" {
			out = append(out, r.Identity)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		return idKey(out[i].DeviceID, out[i].ModuleID) < idKey(out[j].DeviceID, out[j].ModuleID)
	})
	return out, nil
}

// CreateDevice registers a device with generated symmetric keys and
// returns its connection string.
func (h *Hub) CreateDevice(deviceID string) (iothub.ConnectionString, error) {
	if _, err := h.putIdentity(Identity{DeviceID: deviceID}, ""); err != nil {
		return iothub.ConnectionString{}, fmt.Errorf("create device: %w", err)
	}
	return h.ConnectionString(deviceID, "")
}

// CreateModule registers a module identity on an existing device and
// returns its connection string.
func (h *Hub) CreateModule(deviceID, moduleID string) (iothub.ConnectionString, error) {
	if moduleID == "" {
		return iothub.ConnectionString{}, fmt.Errorf("create module: empty module id: %w", ErrInvalid)
	}
	if _, err := h.putIdentity(Identity{DeviceID: deviceID, ModuleID: moduleID}, ""); err != nil {
		return iothub.ConnectionString{}, fmt.Errorf("create module: %w", err)
	}
	return h.ConnectionString(deviceID, moduleID)
}

// CreateX509Device registers a device that authenticates with a
// self-signed certificate of the given hex thumbprint (SHA-1 or SHA-256).
func (h *Hub) CreateX509Device(deviceID, thumbprint string) error {
	_, err := h.putIdentity(Identity{DeviceID: deviceID, Authentication: Authentication{
		Type: AuthSelfSigned, X509Thumbprint: X509Thumbprint{PrimaryThumbprint: &thumbprint},
	}}, "")
	if err != nil {
		return fmt.Errorf("create x509 device: %w", err)
	}
	return nil
}

// ConnectionString returns the connection string of a device (moduleID
// empty) or module, with its primary key, or x509=true.
func (h *Hub) ConnectionString(deviceID, moduleID string) (iothub.ConnectionString, error) {
	id, err := h.getIdentity(deviceID, moduleID)
	if err != nil {
		return iothub.ConnectionString{}, err
	}
	cs := iothub.ConnectionString{HostName: h.hostname, DeviceID: deviceID, ModuleID: moduleID}
	if id.Authentication.Type != AuthSAS {
		cs.X509 = true
		return cs, nil
	}
	cs.SharedAccessKey, err = base64.StdEncoding.DecodeString(id.Authentication.SymmetricKey.PrimaryKey)
	return cs, err
}

// SetDeviceStatus enables or disables a device; disabling drops its live
// connections (and its modules').
func (h *Hub) SetDeviceStatus(deviceID string, enabled bool) error {
	id, err := h.getIdentity(deviceID, "")
	if err != nil {
		return err
	}
	id.Status = "disabled"
	if enabled {
		id.Status = "enabled"
	}
	_, err = h.putIdentity(id, "*")
	return err
}

// DeleteDevice removes a device, its modules and their twins, and drops
// their connections.
func (h *Hub) DeleteDevice(deviceID string) error {
	return h.deleteIdentity(deviceID, "", "*")
}
