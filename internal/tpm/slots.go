package tpm

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/twinlet/twinlet/internal/iothub"
)

// Identity is the IoT Hub identity a slot signs for.
type Identity struct {
	HostName string `json:"hostName"`
	DeviceID string `json:"deviceId"`
	ModuleID string `json:"moduleId,omitempty"`
}

// URI is the form stored in the slot's NV index and the SAS resource:
// "host/devices/device[/modules/module]".
func (id Identity) URI() string { return iothub.DeviceResource(id.HostName, id.DeviceID, id.ModuleID) }

// ParseURI reads a slot URI: "host/devices/device[/modules/module]", or
// Limpet's short form "host/device[/module]".
func ParseURI(s string) (Identity, error) {
	s = strings.TrimSpace(s)
	p := strings.Split(s, "/")
	for i, seg := range p {
		if seg == "" {
			return Identity{}, fmt.Errorf("slot URI %q: empty segment %d", s, i+1)
		}
		if strings.ContainsAny(seg, " \t\r\n;") {
			return Identity{}, fmt.Errorf("slot URI %q: segment %q has a space or ';'", s, seg)
		}
	}
	switch {
	case len(p) == 3 && p[1] == "devices":
		return Identity{HostName: p[0], DeviceID: p[2]}, nil
	case len(p) == 5 && p[1] == "devices" && p[3] == "modules":
		return Identity{HostName: p[0], DeviceID: p[2], ModuleID: p[4]}, nil
	case len(p) == 2:
		return Identity{HostName: p[0], DeviceID: p[1]}, nil
	case len(p) == 3:
		return Identity{HostName: p[0], DeviceID: p[1], ModuleID: p[2]}, nil
	}
	return Identity{}, fmt.Errorf("slot URI %q: want host/devices/DEVICE[/modules/MODULE]", s)
}

// SetSlotURI stores slot's identity in its NV index, replacing any
// previous one. The index is owner-writable and readable with its own
// (empty) auth, so tpm2_nvread reads it as is.
func (t *TPM) SetSlotURI(slot int, id Identity) error {
	if err := checkSlot(slot); err != nil {
		return err
	}
	if id.HostName == "" || id.DeviceID == "" {
		return fmt.Errorf("tpm: slot %d: identity needs a host name and a device id", slot)
	}
	data := []byte(id.URI())
	if len(data) > 1024 {
		return fmt.Errorf("tpm: slot %d: URI of %d bytes is too long", slot, len(data))
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.undefine(slot); err != nil {
		return err
	}
	idx := NVIndex(slot)
	pub := tpm2.TPMSNVPublic{
		NVIndex: idx,
		NameAlg: tpm2.TPMAlgSHA256,
		Attributes: tpm2.TPMANV{
			OwnerWrite: true,
			OwnerRead:  true,
			AuthRead:   true,
			NoDA:       true,
			NT:         tpm2.TPMNTOrdinary,
		},
		DataSize: uint16(len(data)),
	}
	if _, err := (tpm2.NVDefineSpace{AuthHandle: tpm2.TPMRHOwner, PublicInfo: tpm2.New2B(pub)}).Execute(t.t); err != nil {
		return fmt.Errorf("tpm: slot %d: define NV index %#x: %w", slot, uint32(idx), err)
	}
	name, err := tpm2.NVName(&pub)
	if err != nil {
		return fmt.Errorf("tpm: slot %d: %w", slot, err)
	}
	if _, err := (tpm2.NVWrite{
		AuthHandle: tpm2.TPMRHOwner,
		NVIndex:    tpm2.NamedHandle{Handle: idx, Name: *name},
		Data:       tpm2.TPM2BMaxNVBuffer{Buffer: data},
	}).Execute(t.t); err != nil {
		return fmt.Errorf("tpm: slot %d: write NV index %#x: %w", slot, uint32(idx), err)
	}
	return nil
}

// undefine deletes slot's NV index, if any.
func (t *TPM) undefine(slot int) error {
	idx := NVIndex(slot)
	rp, err := tpm2.NVReadPublic{NVIndex: idx}.Execute(t.t)
	if isHandleMissing(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("tpm: slot %d: NV index %#x: %w", slot, uint32(idx), err)
	}
	if _, err := (tpm2.NVUndefineSpace{AuthHandle: tpm2.TPMRHOwner, NVIndex: tpm2.NamedHandle{Handle: idx, Name: rp.NVName}}).Execute(t.t); err != nil {
		return fmt.Errorf("tpm: slot %d: delete NV index %#x: %w", slot, uint32(idx), err)
	}
	return nil
}

// ErrEmptySlot is returned for a slot without an identity URI or key.
var ErrEmptySlot = errors.New("slot is empty")

// SlotURI reads slot's identity from its NV index.
func (t *TPM) SlotURI(slot int) (Identity, error) {
	if err := checkSlot(slot); err != nil {
		return Identity{}, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	s, err := t.readURI(slot)
	if err != nil {
		return Identity{}, err
	}
	id, err := ParseURI(s)
	if err != nil {
		return Identity{}, fmt.Errorf("tpm: slot %d: %w", slot, err)
	}
	return id, nil
}

func (t *TPM) readURI(slot int) (string, error) {
	idx := NVIndex(slot)
	rp, err := tpm2.NVReadPublic{NVIndex: idx}.Execute(t.t)
	if isHandleMissing(err) {
		return "", fmt.Errorf("tpm: slot %d: no URI (NV index %#x): %w", slot, uint32(idx), ErrEmptySlot)
	}
	if err != nil {
		return "", fmt.Errorf("tpm: slot %d: NV index %#x: %w", slot, uint32(idx), err)
	}
	pub, err := rp.NVPublic.Contents()
	if err != nil {
		return "", fmt.Errorf("tpm: slot %d: NV index %#x: %w", slot, uint32(idx), err)
	}
	var out []byte
	for off := 0; off < int(pub.DataSize); {
		n := min(int(pub.DataSize)-off, 512)
		// Ours are owner-readable; an index another tool defined may be
		// readable with its own (empty) auth only.
		var auth tpm2.AuthHandle
		if pub.Attributes.OwnerRead {
			auth = tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)}
		} else {
			auth = tpm2.AuthHandle{Handle: idx, Name: rp.NVName, Auth: tpm2.PasswordAuth(nil)}
		}
		r, err := tpm2.NVRead{
			AuthHandle: auth,
			NVIndex:    tpm2.NamedHandle{Handle: idx, Name: rp.NVName},
			Size:       uint16(n),
			Offset:     uint16(off),
		}.Execute(t.t)
		if err != nil {
			return "", fmt.Errorf("tpm: slot %d: read NV index %#x: %w", slot, uint32(idx), err)
		}
		out = append(out, r.Data.Buffer...)
		off += n
	}
	return string(out), nil
}

// SetSlotConnectionString stores a device or module connection string in
// slot: the key in the TPM, the host/device[/module] in the NV index.
func (t *TPM) SetSlotConnectionString(slot int, cs iothub.ConnectionString) error {
	if cs.SharedAccessKeyName != "" {
		return fmt.Errorf("tpm: slot %d: a shared access policy connection string is not an identity", slot)
	}
	if len(cs.SharedAccessKey) == 0 || cs.HostName == "" || cs.DeviceID == "" {
		return fmt.Errorf("tpm: slot %d: connection string needs HostName, DeviceId and SharedAccessKey", slot)
	}
	if err := t.SetSlotKey(slot, cs.SharedAccessKey); err != nil {
		return err
	}
	return t.SetSlotURI(slot, Identity{HostName: cs.HostName, DeviceID: cs.DeviceID, ModuleID: cs.ModuleID})
}

// ClearSlot removes slot's key and URI; clearing an empty slot is fine.
func (t *TPM) ClearSlot(slot int) error {
	if err := checkSlot(slot); err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return errors.Join(t.evict(slot), t.undefine(slot))
}

// SlotInfo describes a slot in use.
type SlotInfo struct {
	Slot int  `json:"slot"`
	Key  bool `json:"key"`
	// URI is the stored identity; empty without one.
	URI string `json:"uri,omitempty"`
	// Error says why an NV index in the slot range could not be read.
	Error string `json:"error,omitempty"`
}

// SlotsInUse lists the slots that hold a key or a URI.
func (t *TPM) SlotsInUse() ([]SlotInfo, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	keys, err := t.handles(tpm2.TPMHandle(slotKey0))
	if err != nil {
		return nil, err
	}
	nvs, err := t.handles(tpm2.TPMHandle(slotNV0))
	if err != nil {
		return nil, err
	}
	var out []SlotInfo
	for n := range Slots {
		si := SlotInfo{Slot: n, Key: keys[KeyHandle(n)]}
		if nvs[NVIndex(n)] {
			u, err := t.readURI(n)
			if err != nil {
				si.Error = err.Error()
			}
			si.URI = u
		}
		if si.Key || nvs[NVIndex(n)] {
			out = append(out, si)
		}
	}
	return out, nil
}

// handles lists the handles from first to first+Slots-1 that exist.
func (t *TPM) handles(first tpm2.TPMHandle) (map[tpm2.TPMHandle]bool, error) {
	r, err := tpm2.GetCapability{Capability: tpm2.TPMCapHandles, Property: uint32(first), PropertyCount: Slots}.Execute(t.t)
	if err != nil {
		return nil, fmt.Errorf("tpm: list handles: %w", err)
	}
	hs, err := r.CapabilityData.Data.Handles()
	if err != nil {
		return nil, fmt.Errorf("tpm: list handles: %w", err)
	}
	m := map[tpm2.TPMHandle]bool{}
	for _, h := range hs.Handle {
		if h >= first && h < first+Slots {
			m[h] = true
		}
	}
	return m, nil
}

// Signer returns an iothub.Signer that signs with slot's key in the TPM.
func (t *TPM) Signer(slot int) iothub.Signer { return slotSigner{t: t, slot: slot} }

type slotSigner struct {
	t    *TPM
	slot int
}

// Sign implements iothub.Signer: HMAC-SHA256 of the URL-encoded resource,
// a newline and the expiry, computed in the TPM.
func (s slotSigner) Sign(ctx context.Context, resourceURI string, expiry time.Time) (string, error) {
	if err := ctxErr(ctx); err != nil {
		return "", err
	}
	sr := url.QueryEscape(resourceURI)
	se := strconv.FormatInt(expiry.Unix(), 10)
	mac, err := s.t.HMAC(s.slot, []byte(sr+"\n"+se))
	if err != nil {
		return "", fmt.Errorf("sign %s: %w", resourceURI, err)
	}
	sig := base64.StdEncoding.EncodeToString(mac)
	return "SharedAccessSignature sr=" + sr + "&sig=" + url.QueryEscape(sig) + "&se=" + se, nil
}

// SlotToken signs a SAS token for slot's identity valid for ttl and
// returns the identity and the token.
func (t *TPM) SlotToken(ctx context.Context, slot int, ttl time.Duration, now time.Time) (Identity, string, error) {
	id, err := t.SlotURI(slot)
	if err != nil {
		return Identity{}, "", err
	}
	tok, err := t.Signer(slot).Sign(ctx, id.URI(), now.Add(ttl))
	if err != nil {
		return Identity{}, "", err
	}
	return id, tok, nil
}

// TokenConnectionString formats a connection string carrying a SAS token,
// as the Azure IoT SDKs accept it: HostName, DeviceId[, ModuleId] and
// SharedAccessSignature.
func TokenConnectionString(id Identity, token string) string {
	s := "HostName=" + id.HostName + ";DeviceId=" + id.DeviceID
	if id.ModuleID != "" {
		s += ";ModuleId=" + id.ModuleID
	}
	return s + ";SharedAccessSignature=" + token
}
