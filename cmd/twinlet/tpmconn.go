package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os/user"
	"slices"
	"strconv"
	"sync"

	"github.com/twinlet/twinlet/internal/config"
	"github.com/twinlet/twinlet/internal/identity"
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

// identityService builds the identity socket for the identities of the
// configuration: each from its TPM slot (signed in the TPM) or key file.
func identityService(cfg config.Config, tpms *tpmSet, log *slog.Logger) (func(context.Context), error) {
	var entries []identity.Entry
	for _, name := range slices.Sorted(maps.Keys(cfg.Identities)) {
		ai := cfg.Identities[name]
		e := identity.Entry{Name: name}
		var cs iothub.ConnectionString
		var err error
		if ai.Slot != nil {
			tcti := ai.TCTI
			if tcti == "" && cfg.Connection.TPM != nil {
				tcti = cfg.Connection.TPM.TCTI
			}
			cs, e.Signer, err = tpmIdentity(tpms, config.TPMSlot{TCTI: tcti, Slot: *ai.Slot})
		} else {
			cs, err = iothub.ReadKeyFile(ai.KeyFile)
			if err == nil && cs.SharedAccessKeyName != "" {
				err = errors.New("a shared access policy is not an identity")
			}
			if err == nil && len(cs.SharedAccessKey) == 0 {
				err = errors.New("the connection string has no SharedAccessKey")
			}
			e.Signer = iothub.KeySigner{Key: cs.SharedAccessKey}
		}
		if err != nil {
			return nil, fmt.Errorf("identities.%s: %w", name, err)
		}
		if ai.Module != "" && cs.ModuleID != ai.Module {
			return nil, fmt.Errorf("identities.%s.module: %q, but its credential is for module %q of device %s (create the module in the hub and store its connection string)", name, ai.Module, cs.ModuleID, cs.DeviceID)
		}
		e.HostName, e.DeviceID, e.ModuleID = cs.HostName, cs.DeviceID, cs.ModuleID
		for _, u := range ai.Users {
			uid, err := lookupUID(u)
			if err != nil {
				return nil, fmt.Errorf("identities.%s.users: %w", name, err)
			}
			e.UIDs = append(e.UIDs, uid)
		}
		entries = append(entries, e)
	}
	srv, err := identity.New(cfg.IdentitySocket, entries, log.With("component", "identity"))
	if err != nil {
		return nil, err
	}
	ln, err := srv.Listen()
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context) {
		if err := srv.Serve(ctx, ln); err != nil {
			log.Error("identity socket stopped", "err", err)
		}
	}, nil
}

// lookupUID resolves a uid or a user name.
func lookupUID(u string) (uint32, error) {
	if n, err := strconv.ParseUint(u, 10, 32); err == nil {
		return uint32(n), nil
	}
	usr, err := user.Lookup(u)
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseUint(usr.Uid, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("user %s: uid %q", u, usr.Uid)
	}
	return uint32(n), nil
}
