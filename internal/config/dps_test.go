package config

import (
	"strings"
	"testing"
)

func TestDPS(t *testing.T) {
	for _, tt := range []struct {
		name, body, wantErr string
	}{
		{"group key", "connection:\n  dps:\n    idScope: s\n    registrationId: r\n    attestation: {groupKey: {keyFile: /k}}\n    payload: {a: [1, 2]}\n", ""},
		{"tpm with spare", "connection: {dps: {idScope: s, attestation: {tpm: {slot: 0, spareSlot: 1}}}}\n", ""},
		{"wait", "connection: {dps: {idScope: s, wait: true}}\n", ""},
		{"no scope", "connection: {dps: {attestation: {x509: {certFile: c, keyFile: k}}}}\n", "connection.dps.idScope: required"},
		{"no attestation", "connection: {dps: {idScope: s}}\n", "connection.dps.attestation: set one of"},
		{"two attestations", "connection: {dps: {idScope: s, registrationId: r, attestation: {groupKey: {keyFile: /k}, symmetricKey: {keyFile: /k}}}}\n", "set only one"},
		{"key without id", "connection: {dps: {idScope: s, attestation: {symmetricKey: {keyFile: /k}}}}\n", "connection.dps.registrationId: required"},
		{"spare is slot", "connection: {dps: {idScope: s, attestation: {tpm: {slot: 1, spareSlot: 1}}}}\n", "spareSlot"},
		{"dps and key", "connection: {keyFile: /k, dps: {idScope: s, wait: true}}\n", "dps provisions the identity"},
		{"unknown key is located", "connection:\n  dps:\n    idScope: s\n    idscope: t\n", "line 4: field idscope not found"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Load(write(t, tt.body, 0o600), true)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if tt.name == "group key" && string(c.Connection.DPS.PayloadJSON()) != `{"a":[1,2]}` {
					t.Fatalf("payload %s", c.Connection.DPS.PayloadJSON())
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want %q", err, tt.wantErr)
			}
		})
	}
}

// TestDPSExample: the DPS example configuration loads.
func TestDPSExample(t *testing.T) {
	c, err := Load("../../examples/dps/twinlet.yaml", true)
	if err != nil {
		t.Fatal(err)
	}
	if d := c.Connection.DPS; d == nil || d.Attestation.GroupKey == nil || string(d.PayloadJSON()) != `{"line":7,"site":"berlin"}` {
		t.Fatalf("example: %+v", c.Connection.DPS)
	}
}
