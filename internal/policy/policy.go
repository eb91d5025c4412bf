// Package policy reads local policy files (Kubernetes-style DevicePolicy
// manifests in YAML), checks their permissions, and maps JSON pointers back
// to file:line:col so that every problem says where it is.
package policy

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/twinlet/twinlet/schemas"
)

// Mode says which layer a policy belongs to.
type Mode string

// The two policy modes.
const (
	Enforce Mode = "enforce"
	Default Mode = "default"
)

// Document is one parsed DevicePolicy.
type Document struct {
	// File is the path it was read from; Index its position among the
	// documents of that file (0 for the first).
	File  string
	Index int
	Name  string
	Mode  Mode
	// Sections maps section ids to their JSON.
	Sections map[string]json.RawMessage
	// Validated is the document's ValidatedDigest when it was loaded by
	// LoadDirValidated, "" otherwise.
	Validated string
	root      *yaml.Node
}

// Source names a document for status and errors: "base.yaml" or
// "base.yaml#2" for a later document of a multi-document file.
func (d *Document) Source() string {
	s := filepath.Base(d.File)
	if d.Index > 0 {
		s += "#" + strconv.Itoa(d.Index+1)
	}
	return s
}

// Locate returns "file:line:col" for a JSON pointer into the section (the
// nearest existing ancestor when the pointer names something absent).
func (d *Document) Locate(section, pointer string) string {
	return locate(d.File, d.root, "/spec/"+escape(section)+pointer)
}

// Problem is a located problem in a policy file.
type Problem struct {
	File    string // the policy file
	Section string // the section it concerns, when known
	Pos     string // file:line:col
	Pointer string // JSON pointer relative to the section, or to the document when Section is ""
	Message string
}

func (p Problem) String() string {
	ptr := p.Pointer
	if p.Section != "" {
		ptr = "/spec/" + escape(p.Section) + p.Pointer
	}
	if ptr == "" {
		return fmt.Sprintf("%s: %s", p.Pos, p.Message)
	}
	return fmt.Sprintf("%s: %s: %s", p.Pos, ptr, p.Message)
}

// Set is everything read from a policy directory.
type Set struct {
	Docs []*Document
	// Problems are problems of whole files or documents (syntax, wrong
	// kind, unsafe permissions, unknown sections).
	Problems []Problem
	// Failed lists the files that could not be used at all.
	Failed map[string]bool
	// Hash identifies the content of every file read ("sha256:…").
	Hash string
}

// MaxFileSize bounds a policy file; bigger content belongs in a referenced
// artifact, not a policy.
const MaxFileSize = 4 << 20

// LoadDir reads every *.yaml and *.yml file of dir in lexical order. A
// missing directory is an empty set. known reports whether a section id
// belongs to a provider; unknown sections are problems.
func LoadDir(dir string, known func(string) bool) (*Set, error) {
	return LoadDirValidated(dir, known, nil)
}

// LoadDirValidated is LoadDir that skips the policy schema for documents it
// validated before: validated holds digests (ValidatedDigest) of documents
// that passed the policy schema, and gains those that pass now. The agent
// keeps it in its state, so that a run from a timer does not compile the
// schema to check files that have not changed. A nil map validates all.
func LoadDirValidated(dir string, known func(string) bool, validated map[string]bool) (*Set, error) {
	set := &Set{Failed: map[string]bool{}}
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		set.Hash = hashOf(nil)
		return set, nil
	}
	if err != nil {
		return nil, fmt.Errorf("policy dir: %w", err)
	}
	var names []string
	for _, e := range ents {
		n := e.Name()
		if strings.HasPrefix(n, ".") || e.IsDir() {
			continue
		}
		if strings.HasSuffix(n, ".yaml") || strings.HasSuffix(n, ".yml") {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	h := sha256.New()
	for _, n := range names {
		path := filepath.Join(dir, n)
		data, err := ReadSecure(path)
		fmt.Fprintf(h, "%s\x00%d\x00", n, len(data))
		h.Write(data)
		if err != nil {
			set.Failed[path] = true
			set.Problems = append(set.Problems, Problem{File: path, Pos: path, Message: strings.TrimPrefix(err.Error(), path+": ")})
			continue
		}
		docs, probs := parse(path, data, known, validated)
		set.Docs = append(set.Docs, docs...)
		set.Problems = append(set.Problems, probs...)
		if len(docs) == 0 && len(probs) > 0 {
			set.Failed[path] = true
		}
	}
	set.Hash = "sha256:" + hex.EncodeToString(h.Sum(nil))
	return set, nil
}

// HashDir hashes what LoadDir would read without parsing it, for the
// periodic re-read that catches what inotify missed.
func HashDir(dir string) string {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return hashOf(nil)
	}
	h := sha256.New()
	for _, e := range ents {
		n := e.Name()
		if strings.HasPrefix(n, ".") || e.IsDir() || !(strings.HasSuffix(n, ".yaml") || strings.HasSuffix(n, ".yml")) {
			continue
		}
		data, _ := ReadSecure(filepath.Join(dir, n))
		fmt.Fprintf(h, "%s\x00%d\x00", n, len(data))
		h.Write(data)
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

func hashOf(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

// Parse parses the documents of one policy file. Documents with problems
// are left out; the problems say where they are.
func Parse(file string, data []byte, known func(string) bool) ([]*Document, []Problem) {
	return parse(file, data, known, nil)
}

func parse(file string, data []byte, known func(string) bool, validated map[string]bool) ([]*Document, []Problem) {
	var docs []*Document
	var probs []Problem
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for i := 0; ; i++ {
		var node yaml.Node
		err := dec.Decode(&node)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			probs = append(probs, Problem{File: file, Pos: yamlErrPos(file, err), Message: yamlErrMsg(err)})
			break
		}
		if node.Kind == 0 || (len(node.Content) == 1 && node.Content[0].Tag == "!!null") {
			continue // an empty document
		}
		d, p := parseDoc(file, i, &node, known, validated)
		probs = append(probs, p...)
		if d != nil {
			docs = append(docs, d)
		}
	}
	return docs, probs
}

// ValidatedDigest identifies a policy document (as JSON) under the policy
// schema, for LoadDirValidated.
func ValidatedDigest(raw []byte) string {
	schema, _ := schemas.Raw(schemas.PolicyID)
	return schemas.Digest(append(append([]byte(schemas.Digest(schema)), '\n'), raw...))
}

func parseDoc(file string, index int, node *yaml.Node, known func(string) bool, validated map[string]bool) (*Document, []Problem) {
	at := func(ptr string) string { return locate(file, node, ptr) }
	v, err := YAMLToJSON(node)
	if err != nil {
		var le *YAMLError
		if errors.As(err, &le) {
			return nil, []Problem{{File: file, Pos: fmt.Sprintf("%s:%d:%d", file, le.Line, le.Col), Message: le.Msg}}
		}
		return nil, []Problem{{File: file, Pos: file, Message: err.Error()}}
	}
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, []Problem{{File: file, Pos: file, Message: err.Error()}}
	}
	digest := ""
	if validated != nil {
		digest = ValidatedDigest(raw)
	}
	if digest == "" || !validated[digest] {
		schemaProbs, err := schemas.Validate(schemas.PolicyID, raw)
		if err != nil {
			return nil, []Problem{{File: file, Pos: file, Message: err.Error()}}
		}
		if len(schemaProbs) > 0 {
			var out []Problem
			for _, sp := range schemaProbs {
				out = append(out, Problem{File: file, Pos: at(sp.Pointer), Pointer: sp.Pointer, Message: sp.Message})
			}
			return nil, out
		}
		if digest != "" {
			validated[digest] = true
		}
	}
	var doc struct {
		Metadata struct{ Name string }
		Spec     map[string]json.RawMessage
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		return nil, []Problem{{File: file, Pos: file, Message: err.Error()}}
	}
	d := &Document{File: file, Index: index, Name: doc.Metadata.Name, Mode: Default, Sections: map[string]json.RawMessage{}, Validated: digest, root: node}
	var probs []Problem
	for id, sec := range doc.Spec {
		if id == "mode" {
			var m string
			_ = json.Unmarshal(sec, &m)
			d.Mode = Mode(m)
			continue
		}
		if known != nil && !known(id) {
			probs = append(probs, Problem{File: file, Pos: at("/spec/" + escape(id)), Pointer: "/spec/" + escape(id),
				Message: fmt.Sprintf("unknown section %q", id)})
			continue
		}
		d.Sections[id] = sec
	}
	sort.Slice(probs, func(i, j int) bool { return probs[i].Pointer < probs[j].Pointer })
	return d, probs
}

// YAMLError is a problem at a position of a YAML document.
type YAMLError struct {
	Line, Col int
	Msg       string
}

func (e *YAMLError) Error() string { return e.Msg }

// YAMLToJSON converts a YAML node to a JSON-compatible value, refusing
// what JSON cannot say (non-string keys, duplicate keys, aliases and merge
// keys, which also rules out alias bombs); problems are *YAMLError. The
// fleet repository's files are read the same way.
func YAMLToJSON(n *yaml.Node) (any, error) {
	return convert(n, 0)
}

// Locate is locate for other readers of YAML documents (the fleet
// repository): "file:line:col" of the deepest node a JSON pointer reaches.
func Locate(file string, root *yaml.Node, pointer string) string {
	return locate(file, root, pointer)
}

func convert(n *yaml.Node, depth int) (any, error) {
	if depth > 64 {
		return nil, &YAMLError{n.Line, n.Column, "nested too deeply"}
	}
	switch n.Kind {
	case yaml.DocumentNode:
		if len(n.Content) == 0 {
			return nil, nil
		}
		return convert(n.Content[0], depth+1)
	case yaml.MappingNode:
		m := make(map[string]any, len(n.Content)/2)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if k.Kind != yaml.ScalarNode || (k.Tag != "!!str" && k.Tag != "!!int" && k.Tag != "!!bool") {
				return nil, &YAMLError{k.Line, k.Column, "mapping keys must be strings"}
			}
			if k.Tag == "!!merge" {
				return nil, &YAMLError{k.Line, k.Column, "merge keys (<<) are not supported"}
			}
			if _, dup := m[k.Value]; dup {
				return nil, &YAMLError{k.Line, k.Column, fmt.Sprintf("duplicate key %q", k.Value)}
			}
			cv, err := convert(v, depth+1)
			if err != nil {
				return nil, err
			}
			m[k.Value] = cv
		}
		return m, nil
	case yaml.SequenceNode:
		s := make([]any, 0, len(n.Content))
		for _, c := range n.Content {
			cv, err := convert(c, depth+1)
			if err != nil {
				return nil, err
			}
			s = append(s, cv)
		}
		return s, nil
	case yaml.AliasNode:
		return nil, &YAMLError{n.Line, n.Column, "aliases are not supported"}
	case yaml.ScalarNode:
		switch n.Tag {
		case "!!null":
			return nil, nil
		case "!!bool":
			var b bool
			if err := n.Decode(&b); err != nil {
				return nil, &YAMLError{n.Line, n.Column, err.Error()}
			}
			return b, nil
		case "!!int", "!!float":
			var f any
			if err := n.Decode(&f); err != nil {
				return nil, &YAMLError{n.Line, n.Column, err.Error()}
			}
			return f, nil
		case "!!str", "!!binary", "!!timestamp":
			return n.Value, nil
		default:
			return nil, &YAMLError{n.Line, n.Column, fmt.Sprintf("unsupported YAML tag %s", n.Tag)}
		}
	}
	return nil, &YAMLError{n.Line, n.Column, "unsupported YAML node"}
}

// locate walks a JSON pointer through a YAML node tree and returns the
// position of the deepest node it reaches.
func locate(file string, root *yaml.Node, pointer string) string {
	n := root
	if n == nil {
		return file
	}
	if n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	if pointer != "" {
		for _, tok := range strings.Split(pointer[1:], "/") {
			tok = unescape(tok)
			next := child(n, tok)
			if next == nil {
				break
			}
			n = next
		}
	}
	return fmt.Sprintf("%s:%d:%d", file, n.Line, n.Column)
}

// child returns the node for key tok: a scalar value where it stands, a
// mapping or sequence at its key.
func child(n *yaml.Node, tok string) *yaml.Node {
	switch n.Kind {
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == tok {
				v := n.Content[i+1]
				if v.Kind == yaml.MappingNode || v.Kind == yaml.SequenceNode {
					// Point at the key for containers: the line a human looks for.
					return withContent(n.Content[i], v)
				}
				return v
			}
		}
	case yaml.SequenceNode:
		if i, err := strconv.Atoi(tok); err == nil && i >= 0 && i < len(n.Content) {
			return n.Content[i]
		}
	}
	return nil
}

// withContent returns a node positioned at key whose children are v's.
func withContent(key, v *yaml.Node) *yaml.Node {
	c := *v
	c.Line, c.Column = key.Line, key.Column
	return &c
}

// YAMLSyntaxError locates a YAML syntax error from the YAML package as
// "file:line:col" and says what it is, for every reader of YAML files.
func YAMLSyntaxError(file string, err error) (pos, msg string) {
	return yamlErrPos(file, err), yamlErrMsg(err)
}

func yamlErrPos(file string, err error) string {
	msg := err.Error()
	// yaml.v3: "yaml: line 7: did not find expected key"
	if i := strings.Index(msg, "line "); i >= 0 {
		rest := msg[i+5:]
		j := 0
		for j < len(rest) && rest[j] >= '0' && rest[j] <= '9' {
			j++
		}
		if j > 0 {
			return fmt.Sprintf("%s:%s:1", file, rest[:j])
		}
	}
	return file + ":1:1"
}

func yamlErrMsg(err error) string {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	if i := strings.Index(msg, ": "); i >= 0 && strings.HasPrefix(msg, "line ") {
		msg = msg[i+2:]
	}
	return "YAML syntax: " + msg
}

func escape(tok string) string {
	return strings.NewReplacer("~", "~0", "/", "~1").Replace(tok)
}

func unescape(tok string) string {
	return strings.NewReplacer("~1", "/", "~0", "~").Replace(tok)
}
