package tpm

import "github.com/google/go-tpm/tpm2/transport"

// SimAvailable reports whether this test binary has the simulator.
func SimAvailable() bool { return simOpener != nil }

// Raw is the open transport, for tests that probe the TPM directly.
func (t *TPM) Raw() transport.TPM { return t.t }
