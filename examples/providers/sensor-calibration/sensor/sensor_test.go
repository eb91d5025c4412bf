package sensor

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/twinlet/twinlet/providers/providertest"
)

// TestDriftTimelineBuiltIn runs the same logic in process (the external
// provider tests run it through the protocol).
func TestDriftTimelineBuiltIn(t *testing.T) {
	p := Info().New()
	env := providertest.NewEnv(t)
	desired := json.RawMessage(`{"offset": -2, "gain": 0.5}`)
	if got := providertest.Lines(providertest.Converge(t, p, env, desired)); len(got) != 2 {
		t.Fatalf("plan %q", got)
	}
	conf := filepath.Join(env.Root, "etc/vendor/sensor/calibration.conf")
	if err := os.WriteFile(conf, []byte("offset = -2\ngain = 9\nextra = kept\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := providertest.Lines(providertest.Converge(t, p, env, desired)); len(got) != 1 || got[0] != "~ gain: 9 -> 0.5" {
		t.Fatalf("drift plan %q", got)
	}
	if b, _ := os.ReadFile(conf); string(b) != "# written by twinlet (sensorCalibration)\nextra = kept\ngain = 0.5\noffset = -2\n" {
		t.Fatalf("file:\n%s", b)
	}
}
