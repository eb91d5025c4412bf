// Package deviceinfo provides the read-only "deviceInfo" section: what the
// device is (OS, kernel, architecture, CPU, memory, boot time, TPM) and
// which agent runs on it. It is reported on every pass and has no desired
// state.
//
// The OS comes from the root (<root>/etc/os-release, else
// <root>/usr/lib/os-release); kernel, CPU, memory, boot time and TPM come
// from the running machine's /proc, /sys and /dev. A source that is missing
// or unreadable is reported as "unknown", never as an error. Nothing that
// changes on its own (uptime, free memory) is reported, so the section
// does not churn the twin.
package deviceinfo

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/twinlet/twinlet/internal/version"
	"github.com/twinlet/twinlet/providers"
)

// ID is the section id.
const ID = "deviceInfo"

// Unknown is reported for what cannot be read.
const Unknown = "unknown"

func init() {
	providers.Register(providers.Info{ID: ID, Kind: providers.Object, ReadOnly: true, New: New})
}

// New returns the deviceInfo provider reading the machine's /proc, /sys
// and /dev.
func New() providers.Provider { return &Provider{Proc: "/proc", Sys: "/sys", Dev: "/dev"} }

// Provider implements the deviceInfo section. Proc, Sys and Dev are the
// host directories it reads machine facts from; tests point them at
// fabricated trees.
type Provider struct {
	Proc, Sys, Dev string
}

// Info is what the provider reports. Numbers that cannot be read are the
// string "unknown".
type Info struct {
	OSName        string `json:"osName"`
	OSVersion     string `json:"osVersion"`
	OSID          string `json:"osId"`
	OSPrettyName  string `json:"osPrettyName"`
	KernelRelease string `json:"kernelRelease"`
	Architecture  string `json:"architecture"`
	Hostname      string `json:"hostname"`
	Model         string `json:"model"`
	CPUModel      string `json:"cpuModel"`
	CPUCount      any    `json:"cpuCount"`
	TotalMemory   any    `json:"totalMemoryBytes"`
	BootTime      string `json:"bootTime"`
	AgentVersion  string `json:"agentVersion"`
	TPM           bool   `json:"tpmPresent"`
}

// Decode implements providers.Provider. The section has no desired state:
// it accepts nothing, null, or an object with only the settings the
// reconciler handles (__meta, reportingMode).
func (*Provider) Decode(env *providers.Env, raw json.RawMessage) (providers.Spec, error) {
	if len(bytes.TrimSpace(raw)) == 0 || bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
		return struct{}{}, nil
	}
	var in map[string]json.RawMessage
	if err := json.Unmarshal(raw, &in); err != nil {
		return nil, providers.Invalid("", "%v", err)
	}
	errs := &providers.InvalidError{}
	for k := range in {
		if k != "__meta" && k != "reportingMode" {
			errs.Add("/"+strings.NewReplacer("~", "~0", "/", "~1").Replace(k), "deviceInfo is read-only; only reportingMode can be set")
		}
	}
	if err := errs.OrNil(); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

// Observe implements providers.Provider. It never fails except when ctx
// is done.
func (p *Provider) Observe(ctx context.Context, env *providers.Env, spec providers.Spec) (providers.Observed, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	info := &Info{AgentVersion: version.Version}
	osr := p.osRelease(env)
	info.OSName = or(osr["NAME"], Unknown)
	info.OSVersion = or(osr["VERSION_ID"], or(osr["VERSION"], Unknown))
	info.OSID = or(osr["ID"], Unknown)
	info.OSPrettyName = or(osr["PRETTY_NAME"], Unknown)
	info.KernelRelease = or(firstLine(filepath.Join(p.Proc, "sys/kernel/osrelease")), Unknown)
	info.Architecture = or(firstLine(filepath.Join(p.Proc, "sys/kernel/arch")), unameArch(runtime.GOARCH))
	info.Hostname = p.hostname(env)
	info.Model = p.model()
	info.CPUModel, info.CPUCount = p.cpu()
	info.TotalMemory = p.memory()
	info.BootTime = p.bootTime()
	info.TPM = exists(filepath.Join(p.Dev, "tpmrm0")) || exists(filepath.Join(p.Sys, "class/tpm/tpm0"))
	return info, nil
}

// Plan implements providers.Provider: there is never anything to do.
func (*Provider) Plan(spec providers.Spec, observed providers.Observed) ([]providers.Change, error) {
	return []providers.Change{}, nil
}

// Apply implements providers.Provider. It is never called, since Plan
// returns no change.
func (*Provider) Apply(ctx context.Context, env *providers.Env, c providers.Change) error {
	return fmt.Errorf("apply deviceInfo/%s: deviceInfo is read-only", c.Item)
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// firstLine returns the trimmed first line of a file, "" when unreadable.
func firstLine(p string) string {
	b, err := os.ReadFile(p)
	if err != nil {
		return ""
	}
	line, _, _ := strings.Cut(string(b), "\n")
	return strings.TrimSpace(strings.TrimRight(line, "\x00"))
}

// unameArch maps a Go architecture to the name uname -m uses.
func unameArch(goarch string) string {
	if m, ok := map[string]string{"amd64": "x86_64", "arm64": "aarch64", "386": "i686", "arm": "armv7l", "ppc64le": "ppc64le", "riscv64": "riscv64", "s390x": "s390x"}[goarch]; ok {
		return m
	}
	return goarch
}

// osRelease reads os-release from the root.
func (p *Provider) osRelease(env *providers.Env) map[string]string {
	for _, dev := range []string{"/etc/os-release", "/usr/lib/os-release"} {
		b, err := readRoot(env, dev)
		if err != nil || b == nil {
			continue
		}
		return parseOSRelease(b)
	}
	return map[string]string{}
}

// readRoot reads a device path through the root handle; a missing file
// is nil.
func readRoot(env *providers.Env, p string) ([]byte, error) {
	rel, err := providers.Rel(p)
	if err != nil {
		return nil, err
	}
	root, err := env.OpenRoot()
	if err != nil {
		return nil, err
	}
	defer root.Close()
	return root.ReadFileIfExists(rel)
}

// parseOSRelease parses os-release(5): KEY=value lines, values optionally
// in single or double quotes, with backslash escapes in double quotes.
func parseOSRelease(b []byte) map[string]string {
	out := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || k == "" {
			continue
		}
		switch {
		case len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"':
			var sb strings.Builder
			for i := 1; i < len(v)-1; i++ {
				if v[i] == '\\' && i+1 < len(v)-1 {
					i++
				}
				sb.WriteByte(v[i])
			}
			v = sb.String()
		case len(v) >= 2 && v[0] == '\'' && v[len(v)-1] == '\'':
			v = v[1 : len(v)-1]
		}
		out[k] = v
	}
	return out
}

// hostname is the kernel's name on the running system, else the root's
// /etc/hostname.
func (p *Provider) hostname(env *providers.Env) string {
	if env.IsHostRoot() {
		if h := firstLine(filepath.Join(p.Proc, "sys/kernel/hostname")); h != "" {
			return h
		}
	}
	if b, err := readRoot(env, "/etc/hostname"); err == nil {
		line, _, _ := strings.Cut(string(b), "\n")
		if h := strings.TrimSpace(line); h != "" {
			return h
		}
	}
	return Unknown
}

// model is the board (device tree) or the system (DMI) model.
func (p *Provider) model() string {
	if m := firstLine(filepath.Join(p.Sys, "firmware/devicetree/base/model")); m != "" {
		return m
	}
	vendor := firstLine(filepath.Join(p.Sys, "class/dmi/id/sys_vendor"))
	product := firstLine(filepath.Join(p.Sys, "class/dmi/id/product_name"))
	if m := strings.TrimSpace(vendor + " " + product); m != "" {
		return m
	}
	return Unknown
}

// cpu returns the CPU model and the number of online CPUs.
func (p *Provider) cpu() (string, any) {
	model, count := "", 0
	if b, err := os.ReadFile(filepath.Join(p.Proc, "cpuinfo")); err == nil {
		fallback := ""
		for _, line := range strings.Split(string(b), "\n") {
			k, v, ok := strings.Cut(line, ":")
			if !ok {
				continue
			}
			k, v = strings.TrimSpace(k), strings.TrimSpace(v)
			switch k {
			case "processor":
				count++
			case "model name", "cpu model":
				if model == "" {
					model = v
				}
			case "Processor", "Hardware", "uarch", "isa":
				if fallback == "" {
					fallback = v
				}
			}
		}
		if model == "" {
			model = fallback
		}
	}
	if n, ok := parseCPUList(firstLine(filepath.Join(p.Sys, "devices/system/cpu/online"))); ok {
		count = n
	}
	var c any = Unknown
	if count > 0 {
		c = count
	}
	return or(model, Unknown), c
}

// parseCPUList counts the CPUs of a list like "0-3,6,8-9".
func parseCPUList(s string) (int, bool) {
	if s == "" {
		return 0, false
	}
	n := 0
	for _, part := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			return 0, false
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil || b < a {
				return 0, false
			}
		}
		n += b - a + 1
	}
	return n, true
}

// memory is MemTotal of /proc/meminfo in bytes.
func (p *Provider) memory() any {
	b, err := os.ReadFile(filepath.Join(p.Proc, "meminfo"))
	if err != nil {
		return Unknown
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			f := strings.Fields(rest)
			if len(f) == 0 {
				break
			}
			kb, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil || kb <= 0 {
				break
			}
			return kb * 1024
		}
	}
	return Unknown
}

// bootTime is btime of /proc/stat, in RFC 3339 UTC.
func (p *Provider) bootTime() string {
	b, err := os.ReadFile(filepath.Join(p.Proc, "stat"))
	if err != nil {
		return Unknown
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "btime "); ok {
			sec, err := strconv.ParseInt(strings.TrimSpace(rest), 10, 64)
			if err != nil || sec <= 0 {
				break
			}
			return time.Unix(sec, 0).UTC().Format(time.RFC3339)
		}
	}
	return Unknown
}
