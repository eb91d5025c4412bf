package tpm_test

import (
	"testing"

	"github.com/twinlet/twinlet/internal/tpm"
)

func TestParseURI(t *testing.T) {
	for _, c := range []struct {
		in   string
		want tpm.Identity
		bad  bool
	}{
		{in: "h.example/devices/d1", want: tpm.Identity{HostName: "h.example", DeviceID: "d1"}},
		{in: "h.example/devices/d1/modules/m", want: tpm.Identity{HostName: "h.example", DeviceID: "d1", ModuleID: "m"}},
		{in: "h.example/d1", want: tpm.Identity{HostName: "h.example", DeviceID: "d1"}},                  // Limpet
		{in: "h.example/d1/m", want: tpm.Identity{HostName: "h.example", DeviceID: "d1", ModuleID: "m"}}, // Limpet
		{in: " h.example/devices/d1\n", want: tpm.Identity{HostName: "h.example", DeviceID: "d1"}},
		{in: "h.example", bad: true},
		{in: "h.example//d1", bad: true},
		{in: "h/devices/d/modules/m/x", bad: true},
		{in: "h/dev ice", bad: true},
	} {
		got, err := tpm.ParseURI(c.in)
		if (err != nil) != c.bad || got != c.want {
			t.Errorf("ParseURI(%q) = %+v, %v", c.in, got, err)
		}
		if err == nil {
			if back, err := tpm.ParseURI(got.URI()); err != nil || back != got {
				t.Errorf("%q does not round-trip: %+v %v", got.URI(), back, err)
			}
		}
	}
}

func FuzzParseURI(f *testing.F) {
	f.Add("h.example/devices/d1/modules/m")
	f.Add("h/d")
	f.Fuzz(func(t *testing.T, s string) {
		id, err := tpm.ParseURI(s)
		if err != nil {
			return
		}
		if id.HostName == "" || id.DeviceID == "" {
			t.Fatalf("%q parsed to %+v", s, id)
		}
	})
}
