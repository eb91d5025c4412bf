package deviceinfo

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"testing"

	"github.com/twinlet/twinlet/internal/version"
	"github.com/twinlet/twinlet/providers"
	"github.com/twinlet/twinlet/providers/providertest"
)

func put(t *testing.T, dir, p, content string) {
	t.Helper()
	host := filepath.Join(dir, p)
	if err := os.MkdirAll(filepath.Dir(host), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(host, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// fabricated returns a provider reading fabricated /proc, /sys and /dev
// trees, and an env whose root has an os-release.
func fabricated(t *testing.T) (*Provider, *providers.Env) {
	env := providertest.NewEnv(t)
	proc, sys, dev := t.TempDir(), t.TempDir(), t.TempDir()
	put(t, env.Root, "/usr/lib/os-release", "# comment\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nID=debian\nPRETTY_NAME='Debian GNU/Linux 12 (bookworm)'\nHOME_URL=\"https://www.debian.org/\"\n")
	put(t, env.Root, "/etc/hostname", "kiosk-17\n")
	if err := os.Symlink("../usr/lib/os-release", filepath.Join(env.Root, "etc/os-release")); err != nil {
		t.Fatal(err)
	}
	put(t, proc, "sys/kernel/osrelease", "6.1.0-18-arm64\n")
	put(t, proc, "sys/kernel/arch", "aarch64\n")
	put(t, proc, "cpuinfo", "processor\t: 0\nBogoMIPS\t: 108.00\nCPU part\t: 0xd08\n\nprocessor\t: 1\n\nHardware\t: BCM2835\n")
	put(t, proc, "meminfo", "MemTotal:        3884328 kB\nMemFree:          102400 kB\n")
	put(t, proc, "stat", "cpu  1 2 3\nbtime 1700000000\nprocesses 4\n")
	put(t, sys, "devices/system/cpu/online", "0-3\n")
	put(t, sys, "firmware/devicetree/base/model", "Raspberry Pi 4 Model B Rev 1.4\x00")
	put(t, dev, "tpmrm0", "")
	return &Provider{Proc: proc, Sys: sys, Dev: dev}, env
}

func TestRegistered(t *testing.T) {
	info, ok := providers.Lookup(ID)
	if !ok || !info.ReadOnly {
		t.Fatalf("Lookup(%q) = %+v, %v", ID, info, ok)
	}
	if p := info.New().(*Provider); p.Proc != "/proc" || p.Sys != "/sys" || p.Dev != "/dev" {
		t.Fatalf("defaults %+v", p)
	}
}

func TestFabricated(t *testing.T) {
	p, env := fabricated(t)
	if changes := providertest.Converge(t, p, env, nil); len(changes) != 0 {
		t.Fatalf("plan %q", providertest.Lines(changes))
	}
	got := providertest.ObserveJSON(t, p, env, json.RawMessage(`{"reportingMode":"minimal"}`))
	want := map[string]any{
		"osName": "Debian GNU/Linux", "osVersion": "12", "osId": "debian", "osPrettyName": "Debian GNU/Linux 12 (bookworm)",
		"kernelRelease": "6.1.0-18-arm64", "architecture": "aarch64", "hostname": "kiosk-17",
		"model": "Raspberry Pi 4 Model B Rev 1.4", "cpuModel": "BCM2835", "cpuCount": 4.0,
		"totalMemoryBytes": 3884328.0 * 1024, "bootTime": "2023-11-14T22:13:20Z",
		"agentVersion": version.Version, "tpmPresent": true,
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("observed\n%v\nwant\n%v", got, want)
	}

	// The system changes (an OS upgrade): the next observation says so and
	// there is still nothing to plan.
	put(t, env.Root, "/usr/lib/os-release", "NAME=\"Debian GNU/Linux\"\nVERSION_ID=\"13\"\n")
	if changes := providertest.Converge(t, p, env, nil); len(changes) != 0 {
		t.Fatalf("plan %q", providertest.Lines(changes))
	}
	if got := providertest.ObserveJSON(t, p, env, nil); got["osVersion"] != "13" || got["osId"] != Unknown {
		t.Fatalf("after upgrade %v", got)
	}
}

func TestMissingSources(t *testing.T) {
	env := providertest.NewEnv(t)
	missing := filepath.Join(t.TempDir(), "nothing")
	p := &Provider{Proc: missing, Sys: missing, Dev: missing}
	got := providertest.ObserveJSON(t, p, env, nil)
	for k, v := range got {
		switch k {
		case "architecture":
			if v != unameArch(runtime.GOARCH) {
				t.Errorf("architecture %v", v)
			}
		case "agentVersion":
		case "tpmPresent":
			if v != false {
				t.Errorf("tpmPresent %v", v)
			}
		default:
			if v != Unknown {
				t.Errorf("%s = %v, want %q", k, v, Unknown)
			}
		}
	}
	if len(got) != 14 {
		t.Fatalf("observed %v", got)
	}
}

func TestOSReleaseFallbackAndCPU(t *testing.T) {
	p, env := fabricated(t)
	put(t, p.Proc, "cpuinfo", "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nprocessor\t: 1\nmodel name\t: AMD EPYC 7B13\n")
	os.Remove(filepath.Join(p.Sys, "devices/system/cpu/online"))
	put(t, p.Sys, "class/tpm/tpm0/dev", "")
	os.Remove(filepath.Join(p.Dev, "tpmrm0"))
	os.Remove(filepath.Join(env.Root, "etc/os-release"))
	got := providertest.ObserveJSON(t, p, env, nil)
	if got["cpuModel"] != "AMD EPYC 7B13" || got["cpuCount"] != 2.0 || got["tpmPresent"] != true || got["osVersion"] != "12" {
		t.Fatalf("observed %v", got)
	}
}

func TestDecode(t *testing.T) {
	p, env := New(), providertest.NewEnv(t)
	for _, ok := range []string{``, `null`, `{}`, `{"reportingMode":"none","__meta":{"deploymentId":"x"}}`} {
		if _, err := p.Decode(env, json.RawMessage(ok)); err != nil {
			t.Errorf("Decode(%q) = %v", ok, err)
		}
	}
	_, err := p.Decode(env, json.RawMessage(`{"hostname":"x"}`))
	if got := providertest.Invalid(t, err); !reflect.DeepEqual(got, []string{"/hostname"}) {
		t.Fatalf("pointers %q", got)
	}
	_, err = p.Decode(env, json.RawMessage(`[]`))
	providertest.Invalid(t, err)
}

func TestParseCPUList(t *testing.T) {
	for in, want := range map[string]int{"0": 1, "0-3": 4, "0-3,6,8-9": 7} {
		if n, ok := parseCPUList(in); !ok || n != want {
			t.Errorf("parseCPUList(%q) = %d, %v", in, n, ok)
		}
	}
	for _, bad := range []string{"", "a", "3-1", "0-"} {
		if _, ok := parseCPUList(bad); ok {
			t.Errorf("parseCPUList(%q) accepted", bad)
		}
	}
}
