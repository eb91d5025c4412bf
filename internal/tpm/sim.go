//go:build tpmsim && cgo

package tpm

import "github.com/google/go-tpm/tpm2/transport/simulator"

// A twinlet built with -tags tpmsim (and cgo) can use the in-process
// simulator: "--tpm sim". Its state lives only as long as the process.
func init() { simOpener = simulator.OpenSimulator }
