package config

import (
	"encoding/json"
	"errors"
	"fmt"
)

// DPS is the connection.dps block: how the agent provisions its identity
// through the Device Provisioning Service.
type DPS struct {
	// Endpoint is the DPS host name (default
	// global.azure-devices-provisioning.net).
	Endpoint string `yaml:"endpoint"`
	// Address overrides the address dialed, host:port (tests, emulators).
	Address string `yaml:"address"`
	// IDScope names the DPS instance.
	IDScope string `yaml:"idScope"`
	// RegistrationID defaults to the certificate's common name or the
	// TPM's registration id; required for symmetric keys.
	RegistrationID string `yaml:"registrationId"`
	// Attestation says how the device proves who it is.
	Attestation Attestation `yaml:"attestation"`
	// Payload is sent to DPS with the registration (custom allocation).
	Payload any `yaml:"payload"`
	// CAFile adds a CA for the DPS certificate (default connection.caFile).
	CAFile string `yaml:"caFile"`
	// Wait makes the agent wait for another provisioning client to store
	// the identity instead of provisioning itself.
	Wait bool `yaml:"wait"`
}

// Attestation has exactly one member set (none in wait mode).
type Attestation struct {
	// SymmetricKey is an individual enrollment's key.
	SymmetricKey *KeyFile `yaml:"symmetricKey"`
	// GroupKey is an enrollment group's key; the device key is derived.
	GroupKey *KeyFile `yaml:"groupKey"`
	// X509 is the client certificate (also the hub credential).
	X509 *X509 `yaml:"x509"`
	// TPM attests with the TPM's endorsement key.
	TPM *TPMAttestation `yaml:"tpm"`
}

// KeyFile names a file (mode 0600) holding a base64 key.
type KeyFile struct {
	KeyFile string `yaml:"keyFile"`
}

// TPMAttestation names the TPM and the slots the keys go to.
type TPMAttestation struct {
	// TCTI is the TPM transport (default device:/dev/tpmrm0).
	TCTI string `yaml:"tcti"`
	// Slot (0-9) holds the hub key.
	Slot int `yaml:"slot"`
	// SpareSlot, when set, takes the keys of a re-provisioning while Slot
	// still holds the identity in use (and the other way round), so the
	// old key is kept until the new identity has connected; without it a
	// re-provisioning overwrites Slot.
	SpareSlot *int `yaml:"spareSlot"`
}

func (d *DPS) check() error {
	if d.IDScope == "" {
		return errors.New("idScope: required")
	}
	n := 0
	a := d.Attestation
	if a.SymmetricKey != nil {
		n++
		if a.SymmetricKey.KeyFile == "" {
			return errors.New("attestation.symmetricKey.keyFile: required")
		}
	}
	if a.GroupKey != nil {
		n++
		if a.GroupKey.KeyFile == "" {
			return errors.New("attestation.groupKey.keyFile: required")
		}
	}
	if a.X509 != nil {
		n++
		if a.X509.CertFile == "" || a.X509.KeyFile == "" {
			return errors.New("attestation.x509: certFile and keyFile are required")
		}
	}
	if a.TPM != nil {
		n++
		if a.TPM.Slot < 0 || a.TPM.Slot > 9 {
			return fmt.Errorf("attestation.tpm.slot: %d is not 0-9", a.TPM.Slot)
		}
		if s := a.TPM.SpareSlot; s != nil && (*s < 0 || *s > 9 || *s == a.TPM.Slot) {
			return fmt.Errorf("attestation.tpm.spareSlot: %d is not 0-9 or is the slot itself", *s)
		}
	}
	switch {
	case n > 1:
		return errors.New("attestation: set only one of symmetricKey, groupKey, x509, tpm")
	case n == 0 && !d.Wait:
		return errors.New("attestation: set one of symmetricKey, groupKey, x509, tpm (or wait: true)")
	}
	if (a.SymmetricKey != nil || a.GroupKey != nil) && d.RegistrationID == "" {
		return errors.New("registrationId: required with a symmetric or group key")
	}
	if d.Payload != nil {
		if _, err := json.Marshal(d.Payload); err != nil {
			return fmt.Errorf("payload: not representable as JSON: %v", err)
		}
	}
	return nil
}

// PayloadJSON returns the payload as JSON, nil when there is none.
func (d *DPS) PayloadJSON() json.RawMessage {
	if d == nil || d.Payload == nil {
		return nil
	}
	b, _ := json.Marshal(d.Payload)
	return b
}
