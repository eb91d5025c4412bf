// Package ntp provides the "ntp" section: the time servers of the root's
// time synchronisation daemon, systemd-timesyncd or chrony, whichever the
// root has.
//
//	"ntp": { "servers": ["ntp1.corp.example", "10.0.0.1"], "fallback": ["pool.ntp.org"] }
//
// chrony is chosen when <root>/etc/chrony is a directory or chrony's unit
// file is installed; twinlet then owns the sources file
// /etc/chrony/sources.d/twinlet.sources (one "server <name> iburst" line
// per server, fallback ones last). Otherwise twinlet owns the timesyncd
// drop-in /etc/systemd/timesyncd.conf.d/twinlet.conf (NTP= and
// FallbackNTP=). enabled: false removes twinlet's file.
//
// On a running system (the root is "/" and systemd is PID 1) a change is
// followed by `systemctl try-restart systemd-timesyncd.service` or
// `chronyc reload sources`, and the sync state is reported from
// `timedatectl show-timesync` / `timedatectl show` or `chronyc tracking`.
// Elsewhere it is "unknown", with a message.
package ntp

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"

	"github.com/twinlet/twinlet/providers"
)

// ID is the section id.
const ID = "ntp"

// The files twinlet owns, as device paths.
const (
	TimesyncdPath = "/etc/systemd/timesyncd.conf.d/twinlet.conf"
	ChronyPath    = "/etc/chrony/sources.d/twinlet.sources"
)

// The daemons.
const (
	Timesyncd = "systemd-timesyncd"
	Chrony    = "chrony"
)

const fallbackMark = "# fallback (chrony has none: used like the servers above)\n"

const header = "# Managed by twinlet (section \"ntp\"): edits are overwritten.\n"

func init() {
	// After packages, which may install chrony: the daemon is detected
	// from what the root has.
	providers.Register(providers.Info{ID: ID, Kind: providers.Object, New: New, DependsOn: []string{"packages"}})
}

// New returns the ntp provider.
func New() providers.Provider { return Provider{} }

// Provider implements the ntp section.
type Provider struct{}

// Spec is the decoded section.
type Spec struct {
	Servers  []string
	Fallback []string
	// HasFallback is true when fallback was given (an empty list then
	// turns timesyncd's compiled-in fallback off).
	HasFallback bool
	Enabled     bool
}

// Observed is what the provider observed.
type Observed struct {
	// Daemon is systemd-timesyncd or chrony.
	Daemon string `json:"daemon"`
	// Path is the device path of twinlet's file.
	Path string `json:"path"`
	// Exists says whether twinlet's file exists.
	Exists bool `json:"exists"`
	// Servers and Fallback are the servers twinlet's file configures.
	Servers  []string `json:"servers"`
	Fallback []string `json:"fallback,omitempty"`
	// Synchronized is yes, no or unknown.
	Synchronized string `json:"synchronized"`
	// Server is the server in use, when known.
	Server string `json:"server,omitempty"`
	// Message says what could not be observed, or what keeps the file
	// from taking effect.
	Message string `json:"message,omitempty"`

	content []byte
	live    bool
}

// Decode implements providers.Provider.
func (Provider) Decode(env *providers.Env, raw json.RawMessage) (providers.Spec, error) {
	var in struct {
		Servers  []string  `json:"servers"`
		Fallback *[]string `json:"fallback"`
		Enabled  *bool     `json:"enabled"`
		// The reconciler handles reportingMode (and strips it).
		ReportingMode json.RawMessage `json:"reportingMode"`
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		return nil, providers.Invalid("", "%v", err)
	}
	s := Spec{Servers: in.Servers, Enabled: in.Enabled == nil || *in.Enabled}
	if in.Fallback != nil {
		s.Fallback, s.HasFallback = *in.Fallback, true
	}
	errs := &providers.InvalidError{}
	seen := map[string]string{}
	check := func(field string, list []string) {
		for i, srv := range list {
			ptr := providers.Pointer(field, fmt.Sprint(i))
			if err := checkServer(srv); err != nil {
				errs.Add(ptr, "%v", err)
				continue
			}
			key := strings.ToLower(strings.TrimSuffix(srv, "."))
			if other, dup := seen[key]; dup {
				errs.Add(ptr, "%s is already listed at %s", srv, other)
			}
			seen[key] = ptr
		}
	}
	check("servers", s.Servers)
	check("fallback", s.Fallback)
	if s.Enabled && len(s.Servers) == 0 && len(s.Fallback) == 0 {
		errs.Add("/servers", "at least one server is required (or enabled: false)")
	}
	if err := errs.OrNil(); err != nil {
		return nil, err
	}
	return s, nil
}

// CloudScope implements providers.CloudScoper. The globs of cloud.ntp
// (deny, allow) match each server the twin names, in servers and in
// fallback, as a host name in lower case without a final dot ("." is the
// separator: "*.corp.example" is one label, "**.corp.example" any number;
// "10.**" the addresses 10.x.x.x). There are no default denials: without
// rules the twin may set any server, and enabled. A config that wants
// time sources from local policy alone leaves ntp out of cloud.sections.
func (Provider) CloudScope(rules providers.ScopeRules, twin json.RawMessage) []providers.FieldError {
	var in struct {
		Servers  []string `json:"servers"`
		Fallback []string `json:"fallback"`
	}
	if json.Unmarshal(twin, &in) != nil {
		return nil
	}
	var out []providers.FieldError
	for _, list := range []struct {
		field string
		names []string
	}{{"servers", in.Servers}, {"fallback", in.Fallback}} {
		for i, srv := range list.names {
			if why, no := rules.Forbids(strings.ToLower(strings.TrimSuffix(srv, ".")), '.'); no {
				out = append(out, providers.FieldError{Pointer: providers.Pointer(list.field, fmt.Sprint(i)), Message: why})
			}
		}
	}
	return out
}

// checkServer accepts an IPv4 or IPv6 address (no zone) or an RFC 1123
// host name (labels of letters, digits and '-', not starting or ending in
// '-', at most 63 characters each, 253 in all, a final dot allowed).
func checkServer(s string) error {
	if a, err := netip.ParseAddr(s); err == nil {
		if a.Zone() != "" {
			return fmt.Errorf("%q: an address with a zone is not supported", s)
		}
		return nil
	}
	name := strings.TrimSuffix(s, ".")
	if name == "" || len(name) > 253 {
		return fmt.Errorf("%q is not a host name or an IP address (1 to 253 characters)", s)
	}
	for _, label := range strings.Split(name, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("%q is not a host name or an IP address (labels of 1 to 63 letters, digits and '-', not starting or ending in '-')", s)
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return fmt.Errorf("%q is not a host name or an IP address (character %q)", s, c)
			}
		}
	}
	if strings.Count(name, ".") == 3 && strings.Trim(name, "0123456789.") == "" {
		return fmt.Errorf("%q is not a valid IPv4 address", s)
	}
	return nil
}

// daemon says which daemon the root has, and the device path of the file
// twinlet owns for it.
func daemon(root *providers.Dir) (string, string) {
	if fi, err := root.Stat("etc/chrony"); err == nil && fi.IsDir() {
		return Chrony, ChronyPath
	}
	if hasUnit(root, "chrony.service") {
		return Chrony, ChronyPath
	}
	return Timesyncd, TimesyncdPath
}

// hasUnit reports whether the root has a unit file for unit.
func hasUnit(root *providers.Dir, unit string) bool {
	for _, dir := range []string{"usr/lib/systemd/system/", "lib/systemd/system/", "etc/systemd/system/"} {
		if _, err := root.Stat(dir + unit); err == nil {
			return true
		}
	}
	return false
}

func booted(root *providers.Dir) bool {
	fi, err := root.Lstat("run/systemd/system")
	return err == nil && fi.IsDir()
}

// Observe implements providers.Provider.
func (Provider) Observe(ctx context.Context, env *providers.Env, spec providers.Spec) (providers.Observed, error) {
	root, err := env.OpenRoot()
	if err != nil {
		return nil, fmt.Errorf("observe ntp: %w", err)
	}
	defer root.Close()
	o := &Observed{Synchronized: "unknown", Servers: []string{}}
	o.Daemon, o.Path = daemon(root)
	b, err := root.ReadFileIfExists(strings.TrimPrefix(o.Path, "/"))
	if err != nil {
		return nil, fmt.Errorf("observe ntp: %w", err)
	}
	if b != nil {
		o.Exists, o.content = true, b
		o.Servers, o.Fallback = parse(o.Daemon, b)
	}
	var notes []string
	if o.Daemon == Timesyncd && !hasUnit(root, "systemd-timesyncd.service") {
		notes = append(notes, "neither chrony nor systemd-timesyncd is installed in this root: the timesyncd drop-in takes effect once timesyncd is")
	}
	if o.Daemon == Chrony {
		conf, _ := root.ReadFileIfExists("etc/chrony/chrony.conf")
		if conf != nil && !readsSourcesDir(conf) {
			notes = append(notes, "chrony.conf has no \"sourcedir /etc/chrony/sources.d\": chrony does not read twinlet's sources")
		}
	}
	o.live = env.IsHostRoot() && booted(root)
	if o.live {
		sync, server, err := syncState(ctx, env, o.Daemon)
		if err != nil {
			notes = append(notes, "sync state not observable: "+err.Error())
		} else {
			o.Synchronized, o.Server = sync, server
		}
	} else {
		notes = append(notes, "sync state not observable: systemd is not running this root")
	}
	o.Message = strings.Join(notes, "; ")
	return o, nil
}

func readsSourcesDir(conf []byte) bool {
	for _, line := range strings.Split(string(conf), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "sourcedir" && strings.TrimSuffix(f[1], "/") == "/etc/chrony/sources.d" {
			return true
		}
	}
	return false
}

// syncState asks the running daemon whether the clock is synchronised.
func syncState(ctx context.Context, env *providers.Env, d string) (string, string, error) {
	if d == Chrony {
		b, err := env.Runner.Run(ctx, "chronyc", "-n", "tracking")
		if err != nil {
			return "", "", err
		}
		kv := colonFields(string(b))
		sync := "no"
		if kv["Leap status"] != "" && kv["Leap status"] != "Not synchronised" {
			sync = "yes"
		}
		return sync, kv["Reference ID"], nil
	}
	b, err := env.Runner.Run(ctx, "timedatectl", "show", "--property=NTPSynchronized", "--value")
	if err != nil {
		return "", "", err
	}
	sync := strings.TrimSpace(string(b))
	if sync != "yes" {
		sync = "no"
	}
	server := ""
	if b, err := env.Runner.Run(ctx, "timedatectl", "show-timesync", "--property=ServerName", "--value"); err == nil {
		server = strings.TrimSpace(string(b))
	}
	return sync, server, nil
}

func colonFields(s string) map[string]string {
	out := map[string]string{}
	for _, line := range strings.Split(s, "\n") {
		k, v, ok := strings.Cut(line, ":")
		if ok {
			out[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	return out
}

// parse reads the servers back from twinlet's file.
func parse(d string, b []byte) (servers, fallback []string) {
	servers = []string{}
	inFallback := false
	for _, line := range strings.Split(string(b), "\n") {
		if line+"\n" == fallbackMark {
			inFallback = true
		}
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		if d == Chrony {
			f := strings.Fields(line)
			if len(f) >= 2 && (f[0] == "server" || f[0] == "pool") {
				if inFallback {
					fallback = append(fallback, f[1])
				} else {
					servers = append(servers, f[1])
				}
			}
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		switch strings.TrimSpace(k) {
		case "NTP":
			servers = strings.Fields(v)
			if servers == nil {
				servers = []string{}
			}
		case "FallbackNTP":
			fallback = strings.Fields(v)
		}
	}
	return servers, fallback
}

// render is twinlet's file for the daemon.
func render(d string, s Spec) []byte {
	var b strings.Builder
	b.WriteString(header)
	if d == Chrony {
		for _, srv := range s.Servers {
			fmt.Fprintf(&b, "server %s iburst\n", srv)
		}
		if len(s.Fallback) > 0 {
			// chrony has no fallback: these are plain sources after
			// the others, under a comment that tells them apart.
			b.WriteString(fallbackMark)
		}
		for _, srv := range s.Fallback {
			fmt.Fprintf(&b, "server %s iburst\n", srv)
		}
		return []byte(b.String())
	}
	b.WriteString("[Time]\n")
	fmt.Fprintf(&b, "NTP=%s\n", strings.Join(s.Servers, " "))
	if s.HasFallback {
		fmt.Fprintf(&b, "FallbackNTP=%s\n", strings.Join(s.Fallback, " "))
	}
	return []byte(b.String())
}

type op struct {
	daemon, path string
	content      []byte // nil: delete
	live         bool
}

func describe(servers, fallback []string) string {
	s := "servers " + strings.Join(servers, ", ")
	if len(servers) == 0 {
		s = "no servers"
	}
	if len(fallback) > 0 {
		s += "; fallback " + strings.Join(fallback, ", ")
	}
	return s
}

// Plan implements providers.Provider.
func (Provider) Plan(spec providers.Spec, observed providers.Observed) ([]providers.Change, error) {
	s, o := spec.(Spec), observed.(*Observed)
	item := "servers"
	if !s.Enabled {
		if !o.Exists {
			return nil, nil
		}
		return []providers.Change{{Action: providers.Delete, Item: item, Before: o.Path + " (" + describe(o.Servers, o.Fallback) + ")",
			Data: op{daemon: o.Daemon, path: o.Path, live: o.live}}}, nil
	}
	want := render(o.Daemon, s)
	if o.Exists && bytes.Equal(want, o.content) {
		return nil, nil
	}
	fb := s.Fallback
	c := providers.Change{Action: providers.Create, Item: item, After: describe(s.Servers, fb) + " (" + o.Daemon + " " + o.Path + ")",
		Data: op{daemon: o.Daemon, path: o.Path, content: want, live: o.live}}
	if o.Exists {
		c.Action, c.Before = providers.Update, describe(o.Servers, o.Fallback)
		c.After = describe(s.Servers, fb)
	}
	return []providers.Change{c}, nil
}

// Apply implements providers.Provider.
func (Provider) Apply(ctx context.Context, env *providers.Env, c providers.Change) error {
	o, ok := c.Data.(op)
	if !ok {
		return fmt.Errorf("apply ntp/%s: not a change of this provider", c.Item)
	}
	if err := apply(ctx, env, o); err != nil {
		return fmt.Errorf("apply ntp/%s: %w", c.Item, err)
	}
	return nil
}

func apply(ctx context.Context, env *providers.Env, o op) error {
	root, err := env.OpenRoot()
	if err != nil {
		return err
	}
	defer root.Close()
	rel := strings.TrimPrefix(o.path, "/")
	cur, err := root.ReadFileIfExists(rel)
	if err != nil {
		return err
	}
	switch {
	case o.content == nil && cur == nil, o.content != nil && bytes.Equal(cur, o.content):
		return nil
	case o.content == nil:
		if err := root.Remove(rel); err != nil {
			return err
		}
	default:
		if err := root.WriteFileAtomic(rel, o.content, providers.FileMeta{Mode: 0o644}); err != nil {
			return err
		}
	}
	if !o.live {
		return nil
	}
	if o.daemon == Chrony {
		_, err = env.Runner.Run(ctx, "chronyc", "reload", "sources")
	} else {
		_, err = env.Runner.Run(ctx, "systemctl", "try-restart", "systemd-timesyncd.service")
	}
	if err != nil {
		return fmt.Errorf("written, but the daemon did not take it: %w", err)
	}
	return nil
}

// WatchPaths implements providers.PathWatcher.
func (Provider) WatchPaths(env *providers.Env, spec providers.Spec) []string {
	return []string{env.HostPath(TimesyncdPath), env.HostPath(ChronyPath)}
}
