package standard

import (
	"testing"

	"github.com/twinlet/twinlet/providers"
)

func TestBuiltinsRegistered(t *testing.T) {
	for _, id := range []string{"certificates", "deviceInfo", "files", "hostname", "reboot", "sysctl", "timezone"} {
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
