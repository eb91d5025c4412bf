// Package tpm keeps twinlet's identities in a TPM 2.0: the endorsement key
// (EK) and storage root key (SRK) that attest the device to the Device
// Provisioning Service, and ten slots, each an HMAC key that never leaves
// the TPM and the IoT Hub identity (URI) it signs for. The handles are
// Limpet's and the Azure IoT C SDK's, so a device set up by either works:
//
//	EK                 persistent 0x81010001 (standard RSA 2048 template)
//	SRK                persistent 0x81000001 (standard RSA 2048 template)
//	slot n key         persistent 0x81000100+n (DPS imports into slot 0's)
//	slot n identity    NV index   0x01400100+n
//
// SAS tokens are signed inside the TPM (TPM2_HMAC, or an HMAC sequence for
// data over 1,024 bytes): Signer implements iothub.Signer.
package tpm

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/twinlet/twinlet/internal/tpm/tpmblob"
)

// Handles and indexes.
const (
	EKHandle   = tpm2.TPMHandle(0x81010001)
	SRKHandle  = tpm2.TPMHandle(0x81000001)
	slotKey0   = 0x81000100
	slotNV0    = 0x01400100
	Slots      = 10
	maxKeySize = 64 // HMAC-SHA256 keys longer than a block are hashed; refuse them
)

// KeyHandle is slot n's persistent HMAC key handle.
func KeyHandle(slot int) tpm2.TPMHandle { return tpm2.TPMHandle(slotKey0 + slot) }

// NVIndex is slot n's NV index holding its identity URI.
func NVIndex(slot int) tpm2.TPMHandle { return tpm2.TPMHandle(slotNV0 + slot) }

// TPM is an open TPM. Its methods are safe for concurrent use: commands
// are serialised, since a TPM runs one at a time.
type TPM struct {
	mu   sync.Mutex
	t    transport.TPMCloser
	tcti string
}

// Open opens the TPM named by a tpm2-tools style TCTI string:
// "device:/dev/tpmrm0" (the default when empty), "swtpm:host=H,port=P"
// (swtpm's TCP command port) or "sim" (the in-process simulator, only in
// builds with the tpmsim tag). A TPM that was not started yet is started.
func Open(tcti string) (*TPM, error) {
	if tcti == "" {
		tcti = DefaultTCTI
	}
	t, err := openTransport(tcti)
	if err != nil {
		return nil, err
	}
	// The kernel starts a device TPM; a software TPM may wait for us.
	if !strings.HasPrefix(tcti, "device") {
		if _, err := (tpm2.Startup{StartupType: tpm2.TPMSUClear}).Execute(t); err != nil && !errors.Is(err, tpm2.TPMRCInitialize) {
			t.Close()
			return nil, fmt.Errorf("tpm %s: startup: %w", tcti, err)
		}
	}
	return &TPM{t: t, tcti: tcti}, nil
}

// Close releases the TPM connection.
func (t *TPM) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.t.Close()
}

// TCTI is the TCTI string the TPM was opened with.
func (t *TPM) TCTI() string { return t.tcti }

// checkSlot refuses a slot outside 0–9.
func checkSlot(slot int) error {
	if slot < 0 || slot >= Slots {
		return fmt.Errorf("tpm: slot %d: want 0-%d", slot, Slots-1)
	}
	return nil
}

func isHandleMissing(err error) bool {
	return errors.Is(err, tpm2.TPMRCHandle)
}

// persistentPublic reads the public area of a persistent key, creating the
// primary key from template under hierarchy and persisting it when absent.
func (t *TPM) persistentPublic(h tpm2.TPMHandle, hierarchy tpm2.TPMHandle, template tpm2.TPMTPublic) (*tpm2.ReadPublicResponse, error) {
	rp, err := tpm2.ReadPublic{ObjectHandle: h}.Execute(t.t)
	if err == nil {
		return rp, nil
	}
	if !isHandleMissing(err) {
		return nil, err
	}
	cp, err := tpm2.CreatePrimary{PrimaryHandle: hierarchy, InPublic: tpm2.New2B(template)}.Execute(t.t)
	if err != nil {
		return nil, fmt.Errorf("create primary: %w", err)
	}
	defer tpm2.FlushContext{FlushHandle: cp.ObjectHandle}.Execute(t.t)
	if _, err := (tpm2.EvictControl{
		Auth:             tpm2.TPMRHOwner,
		ObjectHandle:     tpm2.NamedHandle{Handle: cp.ObjectHandle, Name: cp.Name},
		PersistentHandle: h,
	}).Execute(t.t); err != nil {
		return nil, fmt.Errorf("persist at %#x: %w", uint32(h), err)
	}
	return tpm2.ReadPublic{ObjectHandle: h}.Execute(t.t)
}

func (t *TPM) ek() (*tpm2.ReadPublicResponse, error) {
	rp, err := t.persistentPublic(EKHandle, tpm2.TPMRHEndorsement, tpm2.RSAEKTemplate)
	if err != nil {
		return nil, fmt.Errorf("tpm: endorsement key %#x: %w", uint32(EKHandle), err)
	}
	return rp, nil
}

func (t *TPM) srk() (*tpm2.ReadPublicResponse, error) {
	rp, err := t.persistentPublic(SRKHandle, tpm2.TPMRHOwner, tpm2.RSASRKTemplate)
	if err != nil {
		return nil, fmt.Errorf("tpm: storage root key %#x: %w", uint32(SRKHandle), err)
	}
	return rp, nil
}

// EndorsementKeyPublic returns the TPM2B_PUBLIC bytes of the EK, creating
// and persisting it when absent.
func (t *TPM) EndorsementKeyPublic() ([]byte, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	rp, err := t.ek()
	if err != nil {
		return nil, err
	}
	return tpm2.Marshal(rp.OutPublic), nil
}

// StorageRootKeyPublic returns the TPM2B_PUBLIC bytes of the SRK, creating
// and persisting it when absent.
func (t *TPM) StorageRootKeyPublic() ([]byte, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	rp, err := t.srk()
	if err != nil {
		return nil, err
	}
	return tpm2.Marshal(rp.OutPublic), nil
}

// RegistrationID is the DPS registration id of this TPM: lower-case
// RFC 4648 base32, without padding, of SHA-256 of the EK's TPM2B_PUBLIC.
func (t *TPM) RegistrationID() (string, error) {
	ek, err := t.EndorsementKeyPublic()
	if err != nil {
		return "", err
	}
	return RegistrationIDOf(ek), nil
}

// RegistrationIDOf derives the registration id from EK TPM2B_PUBLIC bytes.
func RegistrationIDOf(ekPub []byte) string { return tpmblob.RegistrationID(ekPub) }

// Info describes the TPM.
type Info struct {
	TCTI         string `json:"tcti"`
	Manufacturer string `json:"manufacturer"`
	FirmwareHi   uint32 `json:"firmwareVersion1"`
	FirmwareLo   uint32 `json:"firmwareVersion2"`
	Family       string `json:"family"`
	// HMAC says whether the TPM signs with HMAC keys (DPS needs it).
	HMAC bool `json:"hmac"`
}

// Info reads the manufacturer, firmware and whether HMAC is supported.
func (t *TPM) Info() (Info, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	in := Info{TCTI: t.tcti}
	props, err := tpm2.GetCapability{Capability: tpm2.TPMCapTPMProperties, Property: uint32(tpm2.TPMPTFamilyIndicator), PropertyCount: 64}.Execute(t.t)
	if err != nil {
		return in, fmt.Errorf("tpm: properties: %w", err)
	}
	tp, err := props.CapabilityData.Data.TPMProperties()
	if err != nil {
		return in, fmt.Errorf("tpm: properties: %w", err)
	}
	for _, p := range tp.TPMProperty {
		switch p.Property {
		case tpm2.TPMPTFamilyIndicator:
			in.Family = strings.TrimRight(ascii(p.Value), "\x00 ")
		case tpm2.TPMPTManufacturer:
			in.Manufacturer = strings.TrimRight(ascii(p.Value), "\x00 ")
		case tpm2.TPMPTFirmwareVersion1:
			in.FirmwareHi = p.Value
		case tpm2.TPMPTFirmwareVersion2:
			in.FirmwareLo = p.Value
		}
	}
	algs, err := tpm2.GetCapability{Capability: tpm2.TPMCapAlgs, Property: uint32(tpm2.TPMAlgHMAC), PropertyCount: 1}.Execute(t.t)
	if err == nil {
		if a, err := algs.CapabilityData.Data.Algorithms(); err == nil {
			for _, p := range a.AlgProperties {
				if p.Alg == tpm2.TPMAlgHMAC {
					in.HMAC = true
				}
			}
		}
	}
	return in, nil
}

func ascii(v uint32) string {
	return string([]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// SetSlotKey creates an HMAC-SHA256 key from key under the SRK and
// persists it as slot's key, replacing any previous one. The key is
// fixedTPM and fixedParent: it can be used, never read or duplicated out.
func (t *TPM) SetSlotKey(slot int, key []byte) error {
	if err := checkSlot(slot); err != nil {
		return err
	}
	if len(key) < 16 || len(key) > maxKeySize {
		return fmt.Errorf("tpm: slot %d: key of %d bytes (want 16-%d)", slot, len(key), maxKeySize)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	srk, err := t.srk()
	if err != nil {
		return err
	}
	pub := tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgKeyedHash,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM:     true,
			FixedParent:  true,
			UserWithAuth: true,
			NoDA:         true,
			SignEncrypt:  true,
		},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgKeyedHash, &tpm2.TPMSKeyedHashParms{
			Scheme: tpm2.TPMTKeyedHashScheme{
				Scheme:  tpm2.TPMAlgHMAC,
				Details: tpm2.NewTPMUSchemeKeyedHash(tpm2.TPMAlgHMAC, &tpm2.TPMSSchemeHMAC{HashAlg: tpm2.TPMAlgSHA256}),
			},
		}),
	}
	parent := tpm2.AuthHandle{Handle: SRKHandle, Name: srk.Name, Auth: tpm2.PasswordAuth(nil)}
	cr, err := tpm2.Create{
		ParentHandle: parent,
		InSensitive: tpm2.TPM2BSensitiveCreate{Sensitive: &tpm2.TPMSSensitiveCreate{
			Data: tpm2.NewTPMUSensitiveCreate(&tpm2.TPM2BSensitiveData{Buffer: key}),
		}},
		InPublic: tpm2.New2B(pub),
	}.Execute(t.t)
	if err != nil {
		return fmt.Errorf("tpm: slot %d: create key: %w", slot, err)
	}
	return t.loadAndPersist(slot, parent, cr.OutPrivate, cr.OutPublic)
}

// loadAndPersist loads a key under the SRK and makes it slot's key,
// evicting the previous key of that slot first.
func (t *TPM) loadAndPersist(slot int, parent tpm2.AuthHandle, priv tpm2.TPM2BPrivate, pub tpm2.TPM2BPublic) error {
	ld, err := tpm2.Load{ParentHandle: parent, InPrivate: priv, InPublic: pub}.Execute(t.t)
	if err != nil {
		return fmt.Errorf("tpm: slot %d: load key: %w", slot, err)
	}
	defer tpm2.FlushContext{FlushHandle: ld.ObjectHandle}.Execute(t.t)
	if err := t.evict(slot); err != nil {
		return err
	}
	if _, err := (tpm2.EvictControl{
		Auth:             tpm2.TPMRHOwner,
		ObjectHandle:     tpm2.NamedHandle{Handle: ld.ObjectHandle, Name: ld.Name},
		PersistentHandle: KeyHandle(slot),
	}).Execute(t.t); err != nil {
		return fmt.Errorf("tpm: slot %d: persist key at %#x: %w", slot, uint32(KeyHandle(slot)), err)
	}
	return nil
}

// evict removes slot's persistent key, if any.
func (t *TPM) evict(slot int) error {
	h := KeyHandle(slot)
	rp, err := tpm2.ReadPublic{ObjectHandle: h}.Execute(t.t)
	if isHandleMissing(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("tpm: slot %d: %w", slot, err)
	}
	if _, err := (tpm2.EvictControl{
		Auth:             tpm2.TPMRHOwner,
		ObjectHandle:     tpm2.NamedHandle{Handle: h, Name: rp.Name},
		PersistentHandle: h,
	}).Execute(t.t); err != nil {
		return fmt.Errorf("tpm: slot %d: evict key %#x: %w", slot, uint32(h), err)
	}
	return nil
}

// ActivateIdentityKey imports the key a DPS activation blob carries (the
// base64-decoded authenticationKey) and persists it as slot's key,
// replacing any previous one: ActivateCredential with the EK (under a
// PolicySecret(endorsement) session) recovers the inner wrapping key, then
// Import under the SRK, Load and EvictControl.
func (t *TPM) ActivateIdentityKey(blob []byte, slot int) error {
	if err := checkSlot(slot); err != nil {
		return err
	}
	b, err := tpmblob.Parse(blob)
	if err != nil {
		return fmt.Errorf("tpm: %w", err)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	ek, err := t.ek()
	if err != nil {
		return err
	}
	srk, err := t.srk()
	if err != nil {
		return err
	}
	parent := tpm2.AuthHandle{Handle: SRKHandle, Name: srk.Name, Auth: tpm2.PasswordAuth(nil)}
	ac, err := tpm2.ActivateCredential{
		ActivateHandle: parent,
		KeyHandle: tpm2.AuthHandle{Handle: EKHandle, Name: ek.Name, Auth: tpm2.Policy(tpm2.TPMAlgSHA256, 16,
			func(tp transport.TPM, s tpm2.TPMISHPolicy, nonce tpm2.TPM2BNonce) error {
				_, err := tpm2.PolicySecret{AuthHandle: tpm2.TPMRHEndorsement, PolicySession: s, NonceTPM: nonce}.Execute(tp)
				return err
			})},
		CredentialBlob: tpm2.TPM2BIDObject{Buffer: b.CredentialBlob},
		Secret:         tpm2.TPM2BEncryptedSecret{Buffer: b.EncSecret},
	}.Execute(t.t)
	if err != nil {
		return fmt.Errorf("tpm: activate credential (is the blob for this TPM's EK and SRK?): %w", err)
	}
	inner := ac.CertInfo.Buffer
	pub := tpm2.BytesAs2B[tpm2.TPMTPublic](b.Public)
	im, err := tpm2.Import{
		ParentHandle:  parent,
		EncryptionKey: tpm2.TPM2BData{Buffer: inner},
		ObjectPublic:  pub,
		Duplicate:     tpm2.TPM2BPrivate{Buffer: b.Duplicate},
		InSymSeed:     tpm2.TPM2BEncryptedSecret{Buffer: b.EncWrapKey},
		Symmetric: tpm2.TPMTSymDef{
			Algorithm: tpm2.TPMAlgAES,
			KeyBits:   tpm2.NewTPMUSymKeyBits(tpm2.TPMAlgAES, tpm2.TPMKeyBits(len(inner)*8)),
			Mode:      tpm2.NewTPMUSymMode(tpm2.TPMAlgAES, tpm2.TPMAlgCFB),
		},
	}.Execute(t.t)
	if err != nil {
		return fmt.Errorf("tpm: import identity key: %w", err)
	}
	return t.loadAndPersist(slot, parent, im.OutPrivate, pub)
}

// HMAC computes HMAC with slot's key inside the TPM: TPM2_HMAC up to 1,024
// bytes, an HMAC sequence past that.
func (t *TPM) HMAC(slot int, data []byte) ([]byte, error) {
	if err := checkSlot(slot); err != nil {
		return nil, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	h := KeyHandle(slot)
	rp, err := tpm2.ReadPublic{ObjectHandle: h}.Execute(t.t)
	if isHandleMissing(err) {
		return nil, fmt.Errorf("tpm: slot %d has no key (%#x)", slot, uint32(h))
	}
	if err != nil {
		return nil, fmt.Errorf("tpm: slot %d: %w", slot, err)
	}
	key := tpm2.AuthHandle{Handle: h, Name: rp.Name, Auth: tpm2.PasswordAuth(nil)}
	const chunk = 1024
	if len(data) <= chunk {
		r, err := tpm2.Hmac{Handle: key, Buffer: tpm2.TPM2BMaxBuffer{Buffer: data}, HashAlg: tpm2.TPMAlgSHA256}.Execute(t.t)
		if err != nil {
			return nil, fmt.Errorf("tpm: slot %d: hmac: %w", slot, err)
		}
		return r.OutHMAC.Buffer, nil
	}
	st, err := tpm2.HmacStart{Handle: key, HashAlg: tpm2.TPMAlgSHA256}.Execute(t.t)
	if err != nil {
		return nil, fmt.Errorf("tpm: slot %d: hmac start: %w", slot, err)
	}
	seq := tpm2.AuthHandle{Handle: st.SequenceHandle, Auth: tpm2.PasswordAuth(nil)}
	for len(data) > chunk {
		if _, err := (tpm2.SequenceUpdate{SequenceHandle: seq, Buffer: tpm2.TPM2BMaxBuffer{Buffer: data[:chunk]}}).Execute(t.t); err != nil {
			tpm2.FlushContext{FlushHandle: st.SequenceHandle}.Execute(t.t)
			return nil, fmt.Errorf("tpm: slot %d: hmac update: %w", slot, err)
		}
		data = data[chunk:]
	}
	r, err := tpm2.SequenceComplete{SequenceHandle: seq, Buffer: tpm2.TPM2BMaxBuffer{Buffer: data}, Hierarchy: tpm2.TPMRHNull}.Execute(t.t)
	if err != nil {
		tpm2.FlushContext{FlushHandle: st.SequenceHandle}.Execute(t.t)
		return nil, fmt.Errorf("tpm: slot %d: hmac complete: %w", slot, err)
	}
	return r.Result.Buffer, nil
}

// keyPublic returns the public area of slot's key, or ok false.
func (t *TPM) keyPublic(slot int) (*tpm2.ReadPublicResponse, bool, error) {
	rp, err := tpm2.ReadPublic{ObjectHandle: KeyHandle(slot)}.Execute(t.t)
	if isHandleMissing(err) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("tpm: slot %d: %w", slot, err)
	}
	return rp, true, nil
}

// ctxErr reports a cancelled context before a TPM command starts.
func ctxErr(ctx context.Context) error {
	if ctx == nil {
		return nil
	}
	return ctx.Err()
}
