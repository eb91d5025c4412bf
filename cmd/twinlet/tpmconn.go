package main

import (
	"errors"
	"fmt"
	"sync"

	"github.com/twinlet/twinlet/internal/config"
	"github.com/twinlet/twinlet/internal/iothub"
	"github.com/twinlet/twinlet/internal/tpm"
)

// tpmSet opens each TPM the configuration names once and shares it
// between the hub connection and the identity service (swtpm serves one
// client at a time; a TPM runs one command at a time anyway).
type tpmSet struct {
	mu sync.Mutex
	m  map[string]*tpm.TPM
}

func (s *tpmSet) get(tcti string) (*tpm.TPM, error) {
	if tcti == "" {
		tcti = tpm.DefaultTCTI
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if t, ok := s.m[tcti]; ok {
		return t, nil
	}
	t, err := tpm.Open(tcti)
	if err != nil {
		return nil, err
	}
	if s.m == nil {
		s.m = map[string]*tpm.TPM{}
	}
	s.m[tcti] = t
	return t, nil
}

// Close closes every TPM opened.
func (s *tpmSet) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for k, t := range s.m {
		errs = append(errs, t.Close())
		delete(s.m, k)
	}
	return errors.Join(errs...)
}

// tpmIdentity reads a slot's identity and returns a signer that signs in
// the TPM with the slot's key.
func tpmIdentity(tpms *tpmSet, c config.TPMSlot) (iothub.ConnectionString, iothub.Signer, error) {
	t, err := tpms.get(c.TCTI)
	if err != nil {
		return iothub.ConnectionString{}, nil, err
	}
	id, err := t.SlotURI(c.Slot)
	if err != nil {
		return iothub.ConnectionString{}, nil, fmt.Errorf("%w (store one with `twinlet tpm slot-set-connection-string %d`)", err, c.Slot)
	}
	if _, err := t.HMAC(c.Slot, nil); err != nil {
		return iothub.ConnectionString{}, nil, err
	}
	return iothub.ConnectionString{HostName: id.HostName, DeviceID: id.DeviceID, ModuleID: id.ModuleID}, t.Signer(c.Slot), nil
}
