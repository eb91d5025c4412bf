package standard

import (
	"testing"

	"github.com/twinlet/twinlet/providers"
	"github.com/twinlet/twinlet/schemas"
)

// TestMethodSchemasCompile compiles the payload schema of every built-in
// provider's direct methods: the agent compiles them only when a method is
// first called, so a broken one must never ship.
func TestMethodSchemasCompile(t *testing.T) {
	for _, info := range providers.All() {
		for name, m := range info.Methods {
			if _, err := schemas.Compile(info.ID+"."+name, m.Schema); err != nil {
				t.Errorf("%s.%s: %v", info.ID, name, err)
			}
		}
	}
}

func TestBuiltinsRegistered(t *testing.T) {
	for _, id := range []string{"certificates", "commands", "deviceInfo", "files", "hostname", "reboot", "sysctl", "timezone"} {
		info, ok := providers.Lookup(id)
		if !ok {
			t.Errorf("%s is not registered", id)
			continue
		}
		if info.New() == nil {
			t.Errorf("%s: New returned nil", id)
		}
	}
}
