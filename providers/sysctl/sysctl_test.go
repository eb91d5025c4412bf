package sysctl

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/twinlet/twinlet/providers"
	"github.com/twinlet/twinlet/providers/providertest"
)

func conf(t *testing.T, env *providers.Env) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(env.Root, ConfPath))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func setConf(t *testing.T, env *providers.Env, s string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(env.Root, ConfPath), []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestRegistered(t *testing.T) {
	if info, ok := providers.Lookup(ID); !ok || info.Kind != providers.Collection {
		t.Fatalf("Lookup(%q) = %+v, %v", ID, info, ok)
	}
}

func TestDriftTimeline(t *testing.T) {
	p, env := New(), providertest.NewEnv(t)
	raw := json.RawMessage(`{
		"__meta": {"deploymentId": "d1", "interfaceVersion": "1"},
		"reportingMode": "detailed",
		"ipForward": {"key": "net.ipv4.ip_forward", "value": "1"},
		"swappiness": {"key": "vm.swappiness", "value": 10},
		"rmem": {"key": "net.ipv4.tcp_rmem", "value": "4096  87380\t6291456"},
		"vlan": {"key": "net/ipv4/conf/eth0.100/rp_filter", "value": "2"}
	}`)
	changes := providertest.Converge(t, p, env, raw)
	if len(changes) != 4 {
		t.Fatalf("first plan %q", providertest.Lines(changes))
	}
	for _, c := range changes {
		if c.Action != providers.Create || c.Key == "" {
			t.Fatalf("change %+v: want a Create with a Key", c)
		}
	}
	want := header +
		"net.ipv4.conf.eth0/100.rp_filter = 2\n" +
		"net.ipv4.ip_forward = 1\n" +
		"net.ipv4.tcp_rmem = 4096 87380 6291456\n" +
		"vm.swappiness = 10\n"
	if got := conf(t, env); got != want {
		t.Fatalf("conf =\n%s\nwant\n%s", got, want)
	}
	obs := providertest.ObserveJSON(t, p, env, raw)
	if !reflect.DeepEqual(obs["ipForward"], map[string]any{"key": "net.ipv4.ip_forward", "value": "1"}) || len(obs) != 4 {
		t.Fatalf("observed %v", obs)
	}

	// Behind the agent's back: a value is edited, a line deleted, junk added.
	setConf(t, env, "# hand edit\nnet.ipv4.ip_forward=0\nvm.swappiness = 10\nnet.ipv4.tcp_rmem = 4096 87380 6291456\nnet.ipv4.conf.eth0/100.rp_filter = 2\n")
	heal := providertest.Converge(t, p, env, raw)
	if got := providertest.Lines(heal); !reflect.DeepEqual(got, []string{"~ ipForward: net.ipv4.ip_forward = 0 -> net.ipv4.ip_forward = 1"}) {
		t.Fatalf("heal plan %q", got)
	}
	os.Remove(filepath.Join(env.Root, ConfPath))
	if heal := providertest.Converge(t, p, env, raw); len(heal) != 4 {
		t.Fatalf("heal plan after removal %q", providertest.Lines(heal))
	}
	if got := conf(t, env); got != want {
		t.Fatalf("conf =\n%s", got)
	}
	if left := providertest.PlanOnly(t, p, env, raw); len(left) != 0 {
		t.Fatalf("further plan %q", providertest.Lines(left))
	}
}

func TestPruneAndAbsent(t *testing.T) {
	p, env := New(), providertest.NewEnv(t)
	if err := os.MkdirAll(filepath.Join(env.Root, "/etc/sysctl.d"), 0o755); err != nil {
		t.Fatal(err)
	}
	setConf(t, env, "kernel.panic = 10\n") // there before twinlet: not managed
	providertest.Converge(t, p, env, json.RawMessage(`{
		"a": {"key": "vm.swappiness", "value": "10"},
		"b": {"key": "net.ipv4.ip_forward", "value": "1"},
		"c": {"key": "kernel.sysrq", "value": "0"}}`))

	// Without prune, dropping an item only stops managing it.
	providertest.Converge(t, p, env, json.RawMessage(`{"a": {"key": "vm.swappiness", "value": "10"}, "c": {"key": "kernel.sysrq", "value": "0"}}`))
	if got := conf(t, env); got != header+"kernel.panic = 10\nkernel.sysrq = 0\nnet.ipv4.ip_forward = 1\nvm.swappiness = 10\n" {
		t.Fatalf("conf =\n%s", got)
	}
	// With prune, the key twinlet added goes; kernel.panic stays. An
	// absent item is deleted whoever added it.
	changes := providertest.Converge(t, p, env, json.RawMessage(`{"prune": true, "a": {"key": "vm.swappiness", "value": "10"}, "c": {"key": "kernel.sysrq", "ensure": "absent"}}`))
	if got := providertest.Lines(changes); !reflect.DeepEqual(got, []string{"- c: kernel.sysrq = 0", "- net.ipv4.ip_forward: net.ipv4.ip_forward (pruned)"}) {
		t.Fatalf("prune plan %q", got)
	}
	if got := conf(t, env); got != header+"kernel.panic = 10\nvm.swappiness = 10\n" {
		t.Fatalf("conf =\n%s", got)
	}
	if env.Managed["net.ipv4.ip_forward"] || env.Managed["kernel.sysrq"] || !env.Managed["vm.swappiness"] {
		t.Fatalf("managed %v", env.Managed)
	}
}

func TestInvalid(t *testing.T) {
	p, env := New(), providertest.NewEnv(t)
	for _, tc := range []struct{ raw, ptr string }{
		{`{"a": {"key": "net..ipv4", "value": "1"}}`, "/a/key"},
		{`{"a": {"key": ".net.ipv4", "value": "1"}}`, "/a/key"},
		{`{"a": {"key": "net.ipv4.", "value": "1"}}`, "/a/key"},
		{`{"a": {"key": "net/../../etc/passwd", "value": "1"}}`, "/a/key"},
		{`{"a": {"key": "net/ipv4/..", "value": "1"}}`, "/a/key"},
		{`{"a": {"key": "net.ipv4 = 1\nkernel.x", "value": "1"}}`, "/a/key"},
		{`{"a": {"key": "vm.swappiness;reboot", "value": "1"}}`, "/a/key"},
		{`{"a": {"key": "", "value": "1"}}`, "/a/key"},
		{`{"a": {"key": "vm.swappiness", "value": "1\nkernel.panic = 0"}}`, "/a/value"},
		{`{"a": {"key": "vm.swappiness", "value": ""}}`, "/a/value"},
		{`{"a": {"key": "vm.swappiness"}}`, "/a/value"},
		{`{"a": {"key": "vm.swappiness", "value": true}}`, "/a/value"},
		{`{"a": {"key": "vm.swappiness", "value": "1", "ensure": "gone"}}`, "/a/ensure"},
		{`{"a": {"key": "vm.swappiness", "value": "1"}, "b": {"key": "vm/swappiness", "value": "2"}}`, "/b/key"},
		{`{"a": {"key": "vm.swappiness", "value": "1", "extra": 1}}`, "/a"},
		{`{"a.b": {"key": "vm.swappiness", "value": "1"}}`, "/a.b"},
		{`{"prune": "yes"}`, "/prune"},
	} {
		t.Run(tc.raw, func(t *testing.T) {
			_, err := p.Decode(env, json.RawMessage(tc.raw))
			if got := providertest.Invalid(t, err); !reflect.DeepEqual(got, []string{tc.ptr}) {
				t.Fatalf("pointers %q, want %q (%v)", got, tc.ptr, err)
			}
		})
	}
}

func TestCanonical(t *testing.T) {
	for in, want := range map[string]string{
		"net.ipv4.ip_forward":                 "net.ipv4.ip_forward",
		"net/ipv4/ip_forward":                 "net.ipv4.ip_forward",
		"net/ipv4/conf/eth0.100/rp_filter":    "net.ipv4.conf.eth0/100.rp_filter",
		"net.ipv4.conf.eth0/100.rp_filter":    "net.ipv4.conf.eth0/100.rp_filter",
		"net.ipv6.conf.wlP1p1s0.disable_ipv6": "net.ipv6.conf.wlP1p1s0.disable_ipv6",
	} {
		got, err := canonical(in)
		if err != nil || got != want {
			t.Errorf("canonical(%q) = %q, %v; want %q", in, got, err, want)
		}
		if pp := "/" + procRel(got); pp != "/proc/sys/"+joinSlash(components(in)) {
			t.Errorf("procRel(%q) = %q", got, pp)
		}
	}
}

func joinSlash(c []string) string {
	s := c[0]
	for _, x := range c[1:] {
		s += "/" + x
	}
	return s
}

func TestCloudScope(t *testing.T) {
	info, _ := providers.Lookup(ID)
	scoper, ok := info.New().(providers.CloudScoper)
	if !ok {
		t.Fatal("sysctl does not implement providers.CloudScoper")
	}
	twin := json.RawMessage(`{
		"prune": false,
		"fwd": {"key": "net.ipv4.ip_forward", "value": "1"},
		"core": {"key": "kernel.core_pattern", "value": "|/tmp/x"},
		"coreSlash": {"key": "kernel/core_pattern", "value": "|/tmp/x"},
		"modprobe": {"key": "kernel.modprobe", "value": "/tmp/x"},
		"hotplug": {"key": "kernel.hotplug", "value": "/tmp/x"},
		"binfmt": {"key": "fs.binfmt_misc.register", "value": ":x:E::x::/tmp/x:"},
		"bad": {"key": "not a key", "value": "1"}
	}`)
	var got []string
	for _, fe := range scoper.CloudScope(providers.ScopeRules{Deny: info.CloudDeny}, twin) {
		got = append(got, fe.Pointer)
		if !strings.Contains(fe.Message, "denied by") {
			t.Errorf("%s: %s", fe.Pointer, fe.Message)
		}
	}
	if want := []string{"/binfmt/key", "/core/key", "/coreSlash/key", "/hotplug/key", "/modprobe/key"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("forbidden %q, want %q", got, want)
	}
	got = nil
	for _, fe := range scoper.CloudScope(providers.ScopeRules{Allow: []string{"net.**"}}, twin) {
		got = append(got, fe.Pointer)
	}
	if want := []string{"/binfmt/key", "/core/key", "/coreSlash/key", "/hotplug/key", "/modprobe/key"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("with allow: forbidden %q, want %q", got, want)
	}
	if got := scoper.CloudScope(providers.ScopeRules{Deny: []string{}}, twin); len(got) != 0 {
		t.Fatalf("an explicit empty deny list forbids %v", got)
	}
}
