// Package hostname provides the "hostname" section: the device's name in
// <root>/etc/hostname, the 127.0.1.1 line of <root>/etc/hosts and, when the
// root is the running system, the kernel's hostname.
//
// Names follow RFC 1123 and are lowercase only: host names are compared
// without regard to case by DNS, so a mixed-case name would be reported
// back differently by other tools and never look converged. They are also
// at most 64 bytes long, the limit of the Linux kernel (HOST_NAME_MAX),
// which is stricter than RFC 1123's 253.
package hostname

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"

	"github.com/twinlet/twinlet/providers"
)

// ID is the section id.
const ID = "hostname"

// MaxLen is the longest name the Linux kernel accepts (HOST_NAME_MAX).
const MaxLen = 64

func init() {
	providers.Register(providers.Info{ID: ID, Kind: providers.Object, New: New})
}

// New returns the hostname provider.
func New() providers.Provider { return Provider{} }

// Provider implements the hostname section.
type Provider struct{}

// Spec is the desired host name.
type Spec struct {
	Name string
}

// Observed is what the provider reports.
type Observed struct {
	// Name is the content of /etc/hostname ("" when it is missing).
	Name string `json:"name"`
	// HostsMatches says whether /etc/hosts maps 127.0.1.1 to the
	// desired name.
	HostsMatches bool `json:"hostsMatches"`
	// Running is the kernel's host name, observed only when the root is
	// the running system.
	Running *string `json:"running,omitempty"`

	hostsLine string // the current 127.0.1.1 names, for the plan
}

// Decode implements providers.Provider.
func (Provider) Decode(env *providers.Env, raw json.RawMessage) (providers.Spec, error) {
	var in struct {
		Name *string `json:"name"`
		// Settings handled by the reconciler.
		Meta          json.RawMessage `json:"__meta"`
		ReportingMode json.RawMessage `json:"reportingMode"`
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		return nil, providers.Invalid("", "%v", err)
	}
	if in.Name == nil {
		return nil, providers.Invalid("/name", "a name is required")
	}
	if err := Validate(*in.Name); err != nil {
		return nil, providers.Invalid("/name", "%v", err)
	}
	return Spec{Name: *in.Name}, nil
}

// Validate checks that name is a lowercase RFC 1123 host name of at most
// MaxLen bytes.
func Validate(name string) error {
	if name == "" {
		return errors.New("must not be empty")
	}
	if len(name) > MaxLen {
		return fmt.Errorf("%q is %d bytes long; Linux allows at most %d", name, len(name), MaxLen)
	}
	for i, label := range strings.Split(name, ".") {
		switch {
		case label == "":
			return fmt.Errorf("%q: label %d is empty", name, i+1)
		case len(label) > 63:
			return fmt.Errorf("%q: label %q is longer than 63 characters", name, label)
		case label[0] == '-' || label[len(label)-1] == '-':
			return fmt.Errorf("%q: label %q must not start or end with '-'", name, label)
		}
		for _, r := range label {
			switch {
			case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-':
			case r >= 'A' && r <= 'Z':
				return fmt.Errorf("%q: use lowercase letters only", name)
			default:
				return fmt.Errorf("%q: %q is not allowed (RFC 1123 allows a-z, 0-9, '-' and '.' between labels)", name, r)
			}
		}
	}
	return nil
}

// Observe implements providers.Provider.
func (Provider) Observe(ctx context.Context, env *providers.Env, spec providers.Spec) (providers.Observed, error) {
	s := spec.(Spec)
	var o Observed
	b, err := readFile(env, "/etc/hostname")
	if err != nil {
		return nil, fmt.Errorf("observe hostname: %w", err)
	}
	o.Name = strings.TrimSpace(string(b))
	hosts, err := readFile(env, "/etc/hosts")
	if err != nil {
		return nil, fmt.Errorf("observe hostname: %w", err)
	}
	o.HostsMatches = bytes.Equal(rewriteHosts(hosts, s.Name), hosts)
	o.hostsLine = currentLine(hosts)
	if env.IsHostRoot() {
		running, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("observe hostname: %w", err)
		}
		o.Running = &running
	}
	return &o, nil
}

// Plan implements providers.Provider.
func (Provider) Plan(spec providers.Spec, observed providers.Observed) ([]providers.Change, error) {
	s, o := spec.(Spec), observed.(*Observed)
	var out []providers.Change
	if o.Name != s.Name {
		out = append(out, providers.Change{Action: providers.Update, Item: "name", Before: quoteOrNone(o.Name), After: s.Name, Data: op{what: "name", name: s.Name}})
	}
	if !o.HostsMatches {
		out = append(out, providers.Change{Action: providers.Update, Item: "hosts", Before: "127.0.1.1 " + quoteOrNone(o.hostsLine), After: "127.0.1.1 " + strings.Join(names(s.Name), " "), Data: op{what: "hosts", name: s.Name}})
	}
	if o.Running != nil && *o.Running != s.Name {
		out = append(out, providers.Change{Action: providers.Update, Item: "running", Before: quoteOrNone(*o.Running), After: s.Name, Data: op{what: "running", name: s.Name}})
	}
	return out, nil
}

type op struct {
	what string // name, hosts or running
	name string
}

// Apply implements providers.Provider.
func (Provider) Apply(ctx context.Context, env *providers.Env, c providers.Change) error {
	o, ok := c.Data.(op)
	if !ok {
		return fmt.Errorf("apply hostname/%s: not a change of this provider", c.Item)
	}
	var err error
	switch o.what {
	case "name":
		err = writeFile(env, "/etc/hostname", []byte(o.name+"\n"))
	case "hosts":
		var cur []byte
		if cur, err = readFile(env, "/etc/hosts"); err == nil {
			if next := rewriteHosts(cur, o.name); !bytes.Equal(next, cur) {
				err = writeFile(env, "/etc/hosts", next)
			}
		}
	case "running":
		if !env.IsHostRoot() {
			return nil // runtime changes only on the running system
		}
		if cur, herr := os.Hostname(); herr == nil && cur == o.name {
			return nil
		}
		err = syscall.Sethostname([]byte(o.name))
	default:
		err = fmt.Errorf("unknown change %q", o.what)
	}
	if err != nil {
		return fmt.Errorf("apply hostname/%s: %w", c.Item, err)
	}
	return nil
}

func quoteOrNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

// readFile reads a device path inside the root (through the root
// handle; relative links inside the root are followed, absolute ones
// refused); a missing file is empty.
func readFile(env *providers.Env, p string) ([]byte, error) {
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

// writeFile atomically replaces a device path inside the root, keeping
// the mode of the file it replaces (0644 for a new one). A link at p is
// replaced, not followed.
func writeFile(env *providers.Env, p string, data []byte) error {
	rel, err := providers.Rel(p)
	if err != nil {
		return err
	}
	root, err := env.OpenRoot()
	if err != nil {
		return err
	}
	defer root.Close()
	mode := os.FileMode(0o644)
	if fi, err := root.Lstat(rel); err == nil && fi.Mode().IsRegular() {
		mode = fi.Mode().Perm()
	}
	return root.WriteFileAtomic(rel, data, providers.FileMeta{Mode: mode})
}

// names are the host names the 127.0.1.1 line starts with: the name, and
// its first label when the name is fully qualified.
func names(name string) []string {
	if short, _, ok := strings.Cut(name, "."); ok {
		return []string{name, short}
	}
	return []string{name}
}

const loopback = "127.0.1.1"

// currentLine returns the names of the first 127.0.1.1 line of hosts.
func currentLine(hosts []byte) string {
	for _, line := range strings.Split(string(hosts), "\n") {
		body, _, _ := strings.Cut(line, "#")
		if f := strings.Fields(body); len(f) > 0 && f[0] == loopback {
			return strings.Join(f[1:], " ")
		}
	}
	return ""
}

// rewriteHosts returns hosts with its 127.0.1.1 line naming name: the
// line's first name (the previous host name) and that name's first label
// are replaced by names(name); other aliases on the line, its comment and
// every other line are kept. Further 127.0.1.1 lines are dropped so that
// the mapping is unambiguous. A missing line is added after the 127.0.0.1
// line (or at the end); a missing file gets the usual loopback entries.
// rewriteHosts is idempotent: rewriteHosts(rewriteHosts(h)) ==
// rewriteHosts(h).
func rewriteHosts(hosts []byte, name string) []byte {
	want := names(name)
	if len(hosts) == 0 {
		return []byte("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n" + loopback + "\t" + strings.Join(want, " ") + "\n")
	}
	text := string(hosts)
	if !strings.HasSuffix(text, "\n") {
		text += "\n"
	}
	lines := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
	var out []string
	done := false
	after := -1 // index in out of the last 127.0.0.1 line
	for _, line := range lines {
		body, comment, hasComment := strings.Cut(line, "#")
		f := strings.Fields(body)
		if len(f) > 0 && f[0] == "127.0.0.1" {
			after = len(out)
		}
		if len(f) == 0 || f[0] != loopback {
			out = append(out, line)
			continue
		}
		if done {
			continue // a second 127.0.1.1 line
		}
		done = true
		drop := map[string]bool{}
		for _, n := range want {
			drop[n] = true
		}
		if len(f) > 1 {
			for _, n := range names(f[1]) {
				drop[n] = true
			}
		}
		all := append([]string{}, want...)
		for _, alias := range f[min(2, len(f)):] {
			if !drop[alias] {
				drop[alias] = true
				all = append(all, alias)
			}
		}
		nl := loopback + "\t" + strings.Join(all, " ")
		if hasComment {
			nl += " #" + comment
		}
		out = append(out, nl)
	}
	if !done {
		nl := loopback + "\t" + strings.Join(want, " ")
		if after >= 0 {
			out = append(out[:after+1], append([]string{nl}, out[after+1:]...)...)
		} else {
			out = append(out, nl)
		}
	}
	return []byte(strings.Join(out, "\n") + "\n")
}

// WatchPaths implements providers.PathWatcher: the host paths of
// /etc/hostname and /etc/hosts (for watches only).
func (Provider) WatchPaths(env *providers.Env, spec providers.Spec) []string {
	return []string{env.HostPath("/etc/hostname"), env.HostPath("/etc/hosts")}
}
