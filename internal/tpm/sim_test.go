//go:build cgo && !tpmsim

package tpm

import "github.com/google/go-tpm/tpm2/transport/simulator"

// The tests also run against go-tpm-tools' in-process simulator (the
// Microsoft reference TPM, built with cgo): a second, independent TPM
// implementation beside swtpm's libtpms.
func init() { simOpener = simulator.OpenSimulator }
