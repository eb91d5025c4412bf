// Package schemas embeds the JSON Schemas (draft 2020-12) of every provider
// section and of the local policy file, and validates documents against
// them. They are the single source of truth for validation; `twinlet schema`
// prints them.
package schemas

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	neturl "net/url"
	"regexp"
	"sort"
	"strings"
	"sync"

	"github.com/santhosh-tekuri/jsonschema/v5"
)

//go:embed *.json
var files embed.FS

// PolicyID is the schema id of a local policy file (DevicePolicy).
const PolicyID = "policy"

// Problem is one validation problem located by a JSON pointer into the
// validated document.
type Problem struct {
	Pointer string
	Message string
}

// compiled holds each embedded schema once it has been compiled: a
// schema is compiled the first time a document is validated against it,
// so that a run pays only for the sections it has (compiling checks the
// schema against the draft's meta-schema, which costs more than most
// validations).
var (
	mu       sync.Mutex
	compiled = map[string]*jsonschema.Schema{}
)

// get returns the compiled embedded schema id.
func get(id string) (*jsonschema.Schema, error) {
	mu.Lock()
	defer mu.Unlock()
	if s, ok := compiled[id]; ok {
		return s, nil
	}
	raw, ok := Raw(id)
	if !ok {
		return nil, fmt.Errorf("no schema %q", id)
	}
	c := jsonschema.NewCompiler()
	c.Draft = jsonschema.Draft2020
	if err := c.AddResource(url(id), bytes.NewReader(raw)); err != nil {
		return nil, fmt.Errorf("schema %s: %w", id, err)
	}
	s, err := c.Compile(url(id))
	if err != nil {
		return nil, fmt.Errorf("schema %s: %w", id, err)
	}
	compiled[id] = s
	return s, nil
}

func url(id string) string { return "https://twinlet.dev/schemas/" + id + ".json" }

// Digest identifies the text of a schema: the first 16 hex digits of its
// SHA-256. A document that passed a schema with the same digest before
// passes it again.
func Digest(raw []byte) string {
	sum := sha256.Sum256(raw)
	return hex.EncodeToString(sum[:8])
}

// IDs lists the ids of the embedded schemas, sorted.
func IDs() []string {
	ents, _ := fs.ReadDir(files, ".")
	var out []string
	for _, e := range ents {
		if name, ok := strings.CutSuffix(e.Name(), ".json"); ok {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

// Raw returns the text of the schema with the id.
func Raw(id string) ([]byte, bool) {
	b, err := files.ReadFile(id + ".json")
	return b, err == nil
}

// Has reports whether a schema with the id is embedded.
func Has(id string) bool {
	_, ok := Raw(id)
	return ok
}

// Check compiles every embedded schema and returns the first error; a test
// calls it so that a broken schema never ships.
func Check() error {
	for _, id := range IDs() {
		if _, err := get(id); err != nil {
			return err
		}
	}
	return nil
}

var additionalRE = regexp.MustCompile(`^additionalProperties (.+) not allowed$`)
var quotedRE = regexp.MustCompile(`'((?:[^']|'')*)'`)

// Validate validates the JSON document doc against the schema id and
// returns its problems, most specific first, one per location and
// message. A nil result means valid.
func Validate(id string, doc []byte) ([]Problem, error) {
	s, err := get(id)
	if err != nil {
		return nil, err
	}
	return validate(id, s, doc)
}

// Schema is a schema that is not embedded here: the schema of a
// third-party provider's section (providers.Info.Schema) or of a direct
// method's payload (providers.Method.Schema).
type Schema struct {
	name string
	raw  []byte
	once sync.Once
	s    *jsonschema.Schema
	err  error
}

// Compile compiles a JSON Schema (draft 2020-12 unless it says otherwise).
// name identifies it in errors ("certificates.get payload").
func Compile(name string, raw []byte) (*Schema, error) {
	s := Deferred(name, raw)
	s.once.Do(s.compile)
	if s.err != nil {
		return nil, s.err
	}
	return s, nil
}

// Deferred is Compile put off until the schema is first used: a direct
// method's payload schema costs nothing in a run that never calls the
// method. A broken schema then fails the first Validate.
func Deferred(name string, raw []byte) *Schema {
	return &Schema{name: name, raw: raw}
}

func (s *Schema) compile() {
	if len(bytes.TrimSpace(s.raw)) == 0 {
		s.err = fmt.Errorf("schema %s: empty", s.name)
		return
	}
	c := jsonschema.NewCompiler()
	c.Draft = jsonschema.Draft2020
	u := "https://twinlet.dev/schemas/x/" + neturl.PathEscape(s.name) + ".json"
	if err := c.AddResource(u, bytes.NewReader(s.raw)); err != nil {
		s.err = fmt.Errorf("schema %s: %w", s.name, err)
		return
	}
	if s.s, s.err = c.Compile(u); s.err != nil {
		s.err = fmt.Errorf("schema %s: %w", s.name, s.err)
	}
}

// Validate validates a JSON document and returns its problems located by
// JSON pointers, as the package's Validate does. A nil result means valid.
func (s *Schema) Validate(doc []byte) ([]Problem, error) {
	s.once.Do(s.compile)
	if s.err != nil {
		return nil, s.err
	}
	return validate(s.name, s.s, doc)
}

func validate(id string, s *jsonschema.Schema, doc []byte) ([]Problem, error) {
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return []Problem{{Pointer: "", Message: "not JSON: " + err.Error()}}, nil
	}
	err := s.Validate(v)
	if err == nil {
		return nil, nil
	}
	var ve *jsonschema.ValidationError
	if !errors.As(err, &ve) {
		return nil, fmt.Errorf("validate %s: %w", id, err)
	}
	return leaves(ve), nil
}

// leaves flattens a validation error tree into its most specific causes.
// An unknown property is located at the property itself, not its parent.
func leaves(ve *jsonschema.ValidationError) []Problem {
	var out []Problem
	seen := map[Problem]bool{}
	var walk func(*jsonschema.ValidationError)
	walk = func(e *jsonschema.ValidationError) {
		if len(e.Causes) > 0 {
			for _, c := range e.Causes {
				walk(c)
			}
			return
		}
		if m := additionalRE.FindStringSubmatch(e.Message); m != nil {
			for _, q := range quotedRE.FindAllStringSubmatch(m[1], -1) {
				p := Problem{Pointer: unpercent(e.InstanceLocation) + "/" + escape(q[1]), Message: "unknown field " + q[0]}
				if !seen[p] {
					seen[p] = true
					out = append(out, p)
				}
			}
			return
		}
		msg := e.Message
		if strings.HasPrefix(msg, "does not match pattern") {
			if d := describe(e.AbsoluteKeywordLocation); d != "" {
				msg = "invalid value: " + d
			}
		}
		p := Problem{Pointer: unpercent(e.InstanceLocation), Message: msg}
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	walk(ve)
	sort.SliceStable(out, func(i, j int) bool { return out[i].Pointer < out[j].Pointer })
	return out
}

// unpercent undoes the percent-encoding the validator applies to pointer
// tokens, so that pointers match the document's keys.
func unpercent(ptr string) string {
	if !strings.Contains(ptr, "%") {
		return ptr
	}
	if u, err := neturl.PathUnescape(ptr); err == nil {
		return u
	}
	return ptr
}

// describe returns the description of the schema that holds the keyword
// at an absolute keyword location ("…/hostname.json#/properties/name/pattern"),
// so that a pattern failure says what is expected instead of a regex.
func describe(loc string) string {
	file, ptr, ok := strings.Cut(loc, "#")
	if !ok {
		return ""
	}
	id := strings.TrimSuffix(file[strings.LastIndex(file, "/")+1:], ".json")
	raw, ok := Raw(id)
	if !ok {
		return ""
	}
	var node any
	if json.Unmarshal(raw, &node) != nil {
		return ""
	}
	toks := strings.Split(strings.TrimPrefix(ptr, "/"), "/")
	for _, t := range toks[:len(toks)-1] {
		t = strings.NewReplacer("~1", "/", "~0", "~").Replace(t)
		switch n := node.(type) {
		case map[string]any:
			node = n[t]
		default:
			return ""
		}
	}
	if m, ok := node.(map[string]any); ok {
		d, _ := m["description"].(string)
		return d
	}
	return ""
}

func escape(tok string) string {
	return strings.NewReplacer("~", "~0", "/", "~1").Replace(tok)
}
