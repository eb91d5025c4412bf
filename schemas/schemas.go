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
	"fmt"
	"io/fs"
	"sort"
	"strconv"
	"strings"
	"sync"
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
// so that a run pays only for the sections it has.
var (
	mu       sync.Mutex
	compiled = map[string]*node{}
)

// get returns the compiled embedded schema id.
func get(id string) (*node, error) {
	mu.Lock()
	defer mu.Unlock()
	if s, ok := compiled[id]; ok {
		return s, nil
	}
	raw, ok := Raw(id)
	if !ok {
		return nil, fmt.Errorf("no schema %q", id)
	}
	s, err := compileSchema(id, raw)
	if err != nil {
		return nil, err
	}
	compiled[id] = s
	return s, nil
}

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

// Validate validates the JSON document doc against the schema id and
// returns its problems, most specific first, one per location and
// message. A nil result means valid.
func Validate(id string, doc []byte) ([]Problem, error) {
	s, err := get(id)
	if err != nil {
		return nil, err
	}
	return validate(s, doc)
}

// Schema is a schema that is not embedded here: the schema of a
// third-party provider's section (providers.Info.Schema) or of a direct
// method's payload (providers.Method.Schema).
type Schema struct {
	name string
	raw  []byte
	once sync.Once
	s    *node
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
	s.s, s.err = compileSchema(s.name, s.raw)
}

// Validate validates a JSON document and returns its problems located by
// JSON pointers, as the package's Validate does. A nil result means valid.
func (s *Schema) Validate(doc []byte) ([]Problem, error) {
	s.once.Do(s.compile)
	if s.err != nil {
		return nil, s.err
	}
	return validate(s.s, doc)
}

func validate(s *node, doc []byte) ([]Problem, error) {
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return []Problem{{Pointer: "", Message: "not JSON: " + err.Error()}}, nil
	}
	steps := maxSteps
	c := checker{steps: &steps}
	c.check(s, v, "", 0)
	if steps < 0 {
		// Stopped: what was found is partial, and the document is not
		// valid (it may not be refused for what was not checked).
		c.out = append(c.out, Problem{Pointer: "", Message: "validation stopped: the schema takes more than " + strconv.Itoa(maxSteps) + " steps on this document"})
	}
	return dedupe(c.out), nil
}

// dedupe drops repeated problems (one location, one message) and sorts
// them by location, keeping the order of those at one location.
func dedupe(ps []Problem) []Problem {
	if len(ps) == 0 {
		return nil
	}
	seen := make(map[Problem]bool, len(ps))
	out := ps[:0]
	for _, p := range ps {
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Pointer < out[j].Pointer })
	return out
}

var pointerEscaper = strings.NewReplacer("~", "~0", "/", "~1")

// escape is a key as a JSON pointer token.
func escape(tok string) string {
	if !strings.ContainsAny(tok, "~/") {
		return tok
	}
	return pointerEscaper.Replace(tok)
}
