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
	"sync"

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
	// root is the document's YAML; a document taken from a Cache has
	// data (its file's content) instead, parsed when a position is
	// first asked for.
	root     *yaml.Node
	data     []byte
	rootOnce sync.Once
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
	return locate(d.File, d.node(), "/spec/"+escape(section)+pointer)
}

// node returns the document's YAML, parsing its file when it came from a
// Cache.
func (d *Document) node() *yaml.Node {
	d.rootOnce.Do(func() {
		if d.root != nil || d.data == nil {
			return
		}
		dec := yaml.NewDecoder(bytes.NewReader(d.data))
		for i := 0; ; i++ {
			var n yaml.Node
			if err := dec.Decode(&n); err != nil {
				return
			}
			if i == d.Index {
				d.root = &n
				return
			}
		}
	})
	return d.root
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
	// CacheChanged says that LoadDirCached changed its cache.
	CacheChanged bool
}

// MaxFileSize bounds a policy file; bigger content belongs in a referenced
// artifact, not a policy.
const MaxFileSize = 4 << 20

// LoadDir reads every *.yaml and *.yml file of dir in lexical order. A
// missing directory is an empty set. known reports whether a section id
// belongs to a provider; unknown sections are problems.
func LoadDir(dir string, known func(string) bool) (*Set, error) {
	return LoadDirCached(dir, known, nil)
}

// Cache remembers, by a digest of their content (and of the policy schema
// and of the conversion), the documents of policy files that parsed and
// passed the policy schema, so that a run from a timer neither parses
// YAML nor compiles the policy schema for files that have not changed. A
// cached document locates positions by parsing its file on demand. The
// agent keeps its cache in its state directory.
type Cache map[string][]CachedDoc

// CachedDoc is a Document as a Cache keeps it.
type CachedDoc struct {
	Index    int                        `json:"index"`
	Name     string                     `json:"name"`
	Mode     Mode                       `json:"mode"`
	Sections map[string]json.RawMessage `json:"sections"`
}

// conversion names the YAML-to-JSON conversion; change it when the
// conversion changes, so that no cache written by another version is
// trusted.
const conversion = "yaml-v3-json-1"

func cacheKey(data []byte) string {
	schema, _ := schemas.Raw(schemas.PolicyID)
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%d\x00", conversion, len(schema))
	h.Write(schema)
	h.Write(data)
	return hex.EncodeToString(h.Sum(nil))
}

// LoadDirCached is LoadDir that takes the documents of a file from cache
// when its content is the same, and records in cache the files it parsed
// without problems, forgetting files no longer there. A nil cache parses
// every file. Set.CacheChanged says whether cache changed.
func LoadDirCached(dir string, known func(string) bool, cache Cache) (*Set, error) {
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
	used := map[string]bool{}
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
		var key string
		if cache != nil {
			key = cacheKey(data)
			used[key] = true
			if docs, ok := fromCache(path, data, cache[key], known); ok {
				set.Docs = append(set.Docs, docs...)
				continue
			}
		}
		docs, probs := Parse(path, data, known)
		set.Docs = append(set.Docs, docs...)
		set.Problems = append(set.Problems, probs...)
		if len(docs) == 0 && len(probs) > 0 {
			set.Failed[path] = true
		}
		if cache != nil && len(probs) == 0 {
			cached := make([]CachedDoc, 0, len(docs))
			for _, d := range docs {
				cached = append(cached, CachedDoc{Index: d.Index, Name: d.Name, Mode: d.Mode, Sections: d.Sections})
			}
			cache[key] = cached
			set.CacheChanged = true
		}
	}
	for k := range cache {
		if !used[k] {
			delete(cache, k)
			set.CacheChanged = true
		}
	}
	set.Hash = "sha256:" + hex.EncodeToString(h.Sum(nil))
	return set, nil
}

// fromCache returns a file's documents from its cache entry, when it has
// one and every section is still known (a provider may have gone).
func fromCache(path string, data []byte, cached []CachedDoc, known func(string) bool) ([]*Document, bool) {
	if cached == nil {
		return nil, false
	}
	docs := make([]*Document, 0, len(cached))
	for _, c := range cached {
		for id := range c.Sections {
			if known != nil && !known(id) {
				return nil, false
			}
		}
		docs = append(docs, &Document{File: path, Index: c.Index, Name: c.Name, Mode: c.Mode, Sections: c.Sections, data: data})
	}
	return docs, true
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
		d, p := parseDoc(file, i, &node, known)
		probs = append(probs, p...)
		if d != nil {
			docs = append(docs, d)
		}
	}
	return docs, probs
}

func parseDoc(file string, index int, node *yaml.Node, known func(string) bool) (*Document, []Problem) {
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
	var doc struct {
		Metadata struct{ Name string }
		Spec     map[string]json.RawMessage
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		return nil, []Problem{{File: file, Pos: file, Message: err.Error()}}
	}
	d := &Document{File: file, Index: index, Name: doc.Metadata.Name, Mode: Default, Sections: map[string]json.RawMessage{}, root: node}
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
