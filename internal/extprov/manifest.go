// Package extprov runs external providers: programs outside the agent that
// own one section each and speak the provider protocol (package
// providers/plugin, docs/provider-protocol.md) on their stdin and stdout.
//
// A manifest per provider in a providers.d directory names the program;
// Load reads and checks every manifest (schema, StrictModes, protocol
// version, section ids a built-in owns), starts each program once to ask
// what it is (describe) and returns a Host whose Infos join the built-in
// providers. A manifest that fails is refused with a located error; the
// others start. The Host owns the processes: it starts them on use,
// keeps them for their keep-alive, relaunches a crashed one with backoff
// and stops them all on Close.
package extprov

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/twinlet/twinlet/internal/policy"
	"github.com/twinlet/twinlet/providers/plugin"
	"github.com/twinlet/twinlet/schemas"
)

// DefaultDirs are where manifests are read from when the agent config
// names none: the packages' directory first, then the local one. A local
// manifest with the same file name replaces the packaged one.
var DefaultDirs = []string{"/usr/lib/twinlet/providers.d", "/etc/twinlet/providers.d"}

// DefaultKeepAlive is how long a process stays after its last call.
const DefaultKeepAlive = 5 * time.Minute

//go:embed manifest.schema.json
var manifestSchema []byte

// Manifest is one external provider's manifest.
type Manifest struct {
	// File is where it was read.
	File            string   `json:"-"`
	APIVersion      string   `json:"apiVersion"`
	Kind            string   `json:"kind"`
	Section         string   `json:"section"`
	Description     string   `json:"description"`
	Executable      string   `json:"executable"`
	Args            []string `json:"args"`
	ProtocolVersion int      `json:"protocolVersion"`
	User            string   `json:"user"`
	Timeout         string   `json:"timeout"`
	KeepAlive       string   `json:"keepAlive"`
	DependsOn       []string `json:"dependsOn"`

	timeout   time.Duration
	keepAlive time.Duration
	cred      *cred // nil: run as the agent's user
	at        func(pointer string) string
}

type cred struct {
	name     string
	uid, gid uint32
	groups   []uint32
}

// Problem is a refused manifest or provider, located as file:line:col.
type Problem struct {
	// Pos is "file:line:col" (or the file alone).
	Pos string `json:"pos"`
	// Section is the manifest's section id when it was read.
	Section string `json:"section,omitempty"`
	Message string `json:"message"`
}

func (p Problem) String() string { return p.Pos + ": " + p.Message }

// ParseManifest reads and checks one manifest file: StrictModes on the
// file and on its executable, the schema, the protocol version and the
// user. Every problem is located.
func ParseManifest(file string) (*Manifest, []Problem) {
	data, err := policy.ReadSecure(file)
	if err != nil {
		return nil, []Problem{{Pos: file, Section: untrustedSection(file), Message: strings.TrimPrefix(err.Error(), file+": ")}}
	}
	m, probs := parseManifest(file, data)
	if len(probs) > 0 {
		return nil, probs
	}
	if err := checkExecutable(m.Executable); err != nil {
		return nil, []Problem{{Pos: m.at("/executable"), Section: m.Section, Message: err.Error()}}
	}
	return m, nil
}

// sectionPattern is the manifest schema's pattern of a section id.
var sectionPattern = regexp.MustCompile(`^[a-z][A-Za-z0-9]{0,62}$`)

// untrustedSection reads the section id of a manifest that failed
// StrictModes (or could not be read securely), for its refusal only: so
// that the section it names reports ProviderRefused with the reason
// instead of being an unknown section. Nothing else of the file is used;
// "" when no id can be read.
func untrustedSection(file string) string {
	f, err := os.Open(file)
	if err != nil {
		return ""
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return ""
	}
	data, err := io.ReadAll(io.LimitReader(f, policy.MaxFileSize))
	if err != nil {
		return ""
	}
	var m struct {
		Section string `yaml:"section"`
	}
	if yaml.Unmarshal(data, &m) != nil || !sectionPattern.MatchString(m.Section) {
		return ""
	}
	return m.Section
}

func parseManifest(file string, data []byte) (*Manifest, []Problem) {
	var node yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&node); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, []Problem{{Pos: file + ":1:1", Message: "empty manifest"}}
		}
		pos, msg := policy.YAMLSyntaxError(file, err)
		return nil, []Problem{{Pos: pos, Message: msg}}
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, []Problem{{Pos: fmt.Sprintf("%s:%d:1", file, extra.Line), Message: "one manifest per file: a second YAML document"}}
	}
	at := func(ptr string) string { return policy.Locate(file, &node, ptr) }
	v, err := policy.YAMLToJSON(&node)
	if err != nil {
		var ye *policy.YAMLError
		if errors.As(err, &ye) {
			return nil, []Problem{{Pos: fmt.Sprintf("%s:%d:%d", file, ye.Line, ye.Col), Message: ye.Msg}}
		}
		return nil, []Problem{{Pos: at(""), Message: err.Error()}}
	}
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, []Problem{{Pos: at(""), Message: err.Error()}}
	}
	s, err := manifestValidator()
	if err != nil {
		return nil, []Problem{{Pos: file, Message: err.Error()}}
	}
	sp, err := s.Validate(raw)
	if err != nil {
		return nil, []Problem{{Pos: file, Message: err.Error()}}
	}
	// A manifest that fails its schema still names the section it meant
	// (when that field is sound), so that the section reports the refusal.
	section := ""
	if obj, ok := v.(map[string]any); ok {
		if id, ok := obj["section"].(string); ok && sectionPattern.MatchString(id) {
			section = id
		}
	}
	var probs []Problem
	for _, p := range sp {
		probs = append(probs, Problem{Pos: at(p.Pointer), Section: section, Message: strings.TrimPrefix(p.Pointer+": ", ": ") + p.Message})
	}
	if len(probs) > 0 {
		return nil, probs
	}
	m := &Manifest{File: file, at: at}
	if err := json.Unmarshal(raw, m); err != nil {
		return nil, []Problem{{Pos: at(""), Message: err.Error()}}
	}
	fail := func(ptr, format string, args ...any) []Problem {
		return []Problem{{Pos: at(ptr), Section: m.Section, Message: ptr + ": " + fmt.Sprintf(format, args...)}}
	}
	if m.ProtocolVersion != plugin.ProtocolMajor {
		return nil, fail("/protocolVersion", "the provider speaks protocol version %d; this agent speaks version %d only (update the agent or the provider)", m.ProtocolVersion, plugin.ProtocolMajor)
	}
	m.keepAlive = DefaultKeepAlive
	for ptr, d := range map[string]struct {
		s   string
		dst *time.Duration
	}{"/timeout": {m.Timeout, &m.timeout}, "/keepAlive": {m.KeepAlive, &m.keepAlive}} {
		if d.s == "" {
			continue
		}
		v, err := time.ParseDuration(d.s)
		if err != nil {
			return nil, fail(ptr, "%v", err)
		}
		if ptr == "/timeout" && v <= 0 {
			return nil, fail(ptr, "must be more than 0")
		}
		*d.dst = v
	}
	if m.User != "" {
		c, err := lookupUser(m.User)
		if err != nil {
			return nil, fail("/user", "%v", err)
		}
		m.cred = c
	}
	return m, nil
}

var compiledManifest *schemas.Schema

func manifestValidator() (*schemas.Schema, error) {
	if compiledManifest != nil {
		return compiledManifest, nil
	}
	s, err := schemas.Compile("provider manifest", manifestSchema)
	if err != nil {
		return nil, err
	}
	compiledManifest = s
	return s, nil
}

// lookupUser resolves the user a provider runs as. Only root can run a
// program as someone else; an agent that is not root runs it as itself
// and refuses any other user.
func lookupUser(name string) (*cred, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("no user %q on this system", name)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return nil, fmt.Errorf("user %q: uid %s gid %s are not numbers", name, u.Uid, u.Gid)
	}
	euid := os.Geteuid()
	if uint64(euid) == uid {
		return nil, nil // already that user
	}
	if euid != 0 {
		return nil, fmt.Errorf("the agent runs as uid %d, not root, so it cannot run the provider as %q (uid %d)", euid, name, uid)
	}
	c := &cred{name: name, uid: uint32(uid), gid: uint32(gid)}
	gids, err := u.GroupIds()
	if err == nil {
		for _, g := range gids {
			if n, err := strconv.ParseUint(g, 10, 32); err == nil {
				c.groups = append(c.groups, uint32(n))
			}
		}
	}
	return c, nil
}

// checkExecutable applies StrictModes to the program: it must be a
// regular, executable file that nobody but root or the agent's user can
// change or replace.
func checkExecutable(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("executable: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("executable %s: not a regular file", path)
	}
	if fi.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("executable %s: not executable (mode %04o)", path, fi.Mode().Perm())
	}
	if err := policy.Trusted(path); err != nil {
		return fmt.Errorf("executable %w", err)
	}
	return nil
}

// manifestFiles lists the manifests of dirs: *.yaml and *.yml, sorted by
// name; a later directory's file replaces an earlier one's of the same
// name. A directory that does not exist has none.
func manifestFiles(dirs []string) ([]string, []Problem) {
	byName := map[string]string{}
	var probs []Problem
	for _, dir := range dirs {
		ents, err := os.ReadDir(dir)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			probs = append(probs, Problem{Pos: dir, Message: err.Error()})
			continue
		}
		for _, e := range ents {
			n := e.Name()
			if strings.HasPrefix(n, ".") || !(strings.HasSuffix(n, ".yaml") || strings.HasSuffix(n, ".yml")) {
				continue
			}
			byName[n] = filepath.Join(dir, n)
		}
	}
	names := make([]string, 0, len(byName))
	for n := range byName {
		names = append(names, n)
	}
	sort.Strings(names)
	out := make([]string, 0, len(names))
	for _, n := range names {
		out = append(out, byName[n])
	}
	return out, probs
}

// Declares reports whether a manifest in dirs that reads and passes its
// schema declares the section id. It starts nothing: the agent config
// uses it to accept cloud rules for external sections before they are
// described.
func Declares(dirs []string, id string) bool {
	files, _ := manifestFiles(dirs)
	for _, f := range files {
		data, err := policy.ReadSecure(f)
		if err != nil {
			continue
		}
		if m, probs := parseManifest(f, data); len(probs) == 0 && m.Section == id {
			return true
		}
	}
	return false
}
