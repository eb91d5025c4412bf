package schemas

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"math/big"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// The validator is our own: a JSON Schema draft 2020-12 validator for the
// keywords below, the same rules and messages as the console's
// (internal/console/static/schema.js), so that the page and the agent
// refuse the same documents with the same words. A general-purpose library
// compiled five meta-schemas in its package init, a fifth of the CPU of a
// no-op `twinlet apply --once` and a megabyte of heap in every process,
// for drafts and keywords no twinlet schema uses.
//
// A schema that uses a keyword this validator does not implement is
// refused when it is compiled, with the keyword's location: a third-party
// provider's schema is never enforced less than it says. Keywords that are
// only annotations (title, description, default, examples, format, …) and
// unknown keywords are ignored, as the specification says.

// draft2020 is the one $schema accepted (with or without its empty
// fragment).
const draft2020 = "https://json-schema.org/draft/2020-12/schema"

// unsupported are the draft 2020-12 (and older) keywords this validator
// does not implement, with what to use instead where there is something.
var unsupported = map[string]string{
	"$anchor":               "",
	"$dynamicAnchor":        "",
	"$dynamicRef":           "",
	"$recursiveRef":         "",
	"$recursiveAnchor":      "",
	"$vocabulary":           "",
	"unevaluatedProperties": "use additionalProperties",
	"unevaluatedItems":      "use items",
	"contains":              "",
	"minContains":           "",
	"maxContains":           "",
	"contentSchema":         "",
	"dependencies":          "draft 2020-12 has dependentRequired and dependentSchemas",
	"additionalItems":       "draft 2020-12 has prefixItems and items",
}

// node is one compiled subschema.
type node struct {
	loc string // JSON pointer of the subschema in its schema document

	always *bool // a boolean schema

	ref     string
	refNode *node

	types    []string
	enum     []any
	hasConst bool
	konst    any

	minLength, maxLength int // -1: absent
	pattern              *regexp.Regexp
	patternSrc           string
	description          string

	minimum, maximum, exclMin, exclMax, multipleOf *big.Rat
	minimumSrc, maximumSrc, exclMinSrc, exclMaxSrc string
	multipleOfSrc                                  string

	minItems, maxItems int // -1: absent
	uniqueItems        bool
	prefixItems        []*node
	items              *node

	required           []string
	minProps, maxProps int // -1: absent
	propertyNames      *node
	properties         map[string]*node
	patternProps       []patternProp
	additional         *node
	dependentRequired  []dependency
	dependentSchemas   []dependentSchema

	allOf, anyOf, oneOf []*node
	not, ifNode         *node
	thenNode, elseNode  *node
}

type patternProp struct {
	src string
	re  *regexp.Regexp
	n   *node
}

type dependency struct {
	name  string
	needs []string
}

type dependentSchema struct {
	name string
	n    *node
}

// compiler turns one schema document into nodes.
type compiler struct {
	name  string           // the schema's name in errors
	nodes map[string]*node // every subschema by its location
	refs  []*node          // nodes with a $ref, resolved at the end
}

// compileSchema compiles a JSON Schema document.
func compileSchema(name string, raw []byte) (*node, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var doc any
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("schema %s: not JSON: %w", name, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("schema %s: more than one JSON value", name)
	}
	c := &compiler{name: name, nodes: map[string]*node{}}
	root, err := c.compile(doc, "")
	if err != nil {
		return nil, err
	}
	for _, n := range c.refs {
		target, ok := c.resolve(n.ref)
		if !ok {
			return nil, c.errorf(n.loc+"/$ref", "%q does not point to a subschema of this schema", n.ref)
		}
		n.refNode = target
	}
	return root, nil
}

func (c *compiler) errorf(loc, format string, args ...any) error {
	if loc == "" {
		loc = "/"
	}
	return fmt.Errorf("schema %s: %s: %s", c.name, loc, fmt.Sprintf(format, args...))
}

// resolve finds the subschema a local $ref ("#", "#/$defs/item") names.
func (c *compiler) resolve(ref string) (*node, bool) {
	frag, ok := strings.CutPrefix(ref, "#")
	if !ok {
		return nil, false
	}
	if frag != "" && !strings.HasPrefix(frag, "/") {
		return nil, false
	}
	// A $ref's fragment is a URI fragment: percent-decode it first.
	if strings.Contains(frag, "%") {
		u, err := unescapeFragment(frag)
		if err != nil {
			return nil, false
		}
		frag = u
	}
	n, ok := c.nodes[frag]
	return n, ok
}

func unescapeFragment(s string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '%' {
			b.WriteByte(s[i])
			continue
		}
		if i+2 >= len(s) {
			return "", fmt.Errorf("bad escape")
		}
		v, err := strconv.ParseUint(s[i+1:i+3], 16, 8)
		if err != nil {
			return "", err
		}
		b.WriteByte(byte(v))
		i += 2
	}
	return b.String(), nil
}

func (c *compiler) compile(v any, loc string) (*node, error) {
	n := &node{loc: loc, minLength: -1, maxLength: -1, minItems: -1, maxItems: -1, minProps: -1, maxProps: -1}
	c.nodes[loc] = n
	switch s := v.(type) {
	case bool:
		n.always = &s
		return n, nil
	case map[string]any:
		return n, c.keywords(n, s, loc)
	default:
		return nil, c.errorf(loc, "a schema must be an object or a boolean, not %s", jsonType(v))
	}
}

// keywords compiles the keywords of the schema object s into n, in a
// fixed order so that the first error is always the same.
func (c *compiler) keywords(n *node, s map[string]any, loc string) error {
	keys := make([]string, 0, len(s))
	for k := range s {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if hint, bad := unsupported[k]; bad {
			if hint != "" {
				hint = " (" + hint + ")"
			}
			return c.errorf(loc+"/"+escape(k), "keyword %s is not supported by twinlet's validator%s", k, hint)
		}
	}
	sub := func(k string) (*node, error) { return c.compile(s[k], loc+"/"+escape(k)) }
	subs := func(k string) ([]*node, error) {
		arr, ok := s[k].([]any)
		if !ok || (len(arr) == 0 && k != "prefixItems") {
			return nil, c.errorf(loc+"/"+escape(k), "%s must be a non-empty array of schemas", k)
		}
		out := make([]*node, len(arr))
		for i, e := range arr {
			var err error
			if out[i], err = c.compile(e, loc+"/"+escape(k)+"/"+strconv.Itoa(i)); err != nil {
				return nil, err
			}
		}
		return out, nil
	}
	schemaMap := func(k string) (map[string]*node, error) {
		m, ok := s[k].(map[string]any)
		if !ok {
			return nil, c.errorf(loc+"/"+escape(k), "%s must be an object of schemas", k)
		}
		out := make(map[string]*node, len(m))
		for name, e := range m {
			var err error
			if out[name], err = c.compile(e, loc+"/"+escape(k)+"/"+escape(name)); err != nil {
				return nil, err
			}
		}
		return out, nil
	}
	count := func(k string) (int, error) {
		num, ok := s[k].(json.Number)
		if ok {
			if i, err := strconv.ParseInt(num.String(), 10, 64); err == nil && i >= 0 && i <= 1<<31 {
				return int(i), nil
			}
			if r, ok := new(big.Rat).SetString(num.String()); ok && r.IsInt() && r.Sign() >= 0 && r.Num().IsInt64() && r.Num().Int64() <= 1<<31 {
				return int(r.Num().Int64()), nil
			}
		}
		return 0, c.errorf(loc+"/"+escape(k), "%s must be a non-negative integer", k)
	}
	number := func(k string) (*big.Rat, string, error) {
		num, ok := s[k].(json.Number)
		if ok {
			if r, ok := new(big.Rat).SetString(num.String()); ok {
				return r, num.String(), nil
			}
		}
		return nil, "", c.errorf(loc+"/"+escape(k), "%s must be a number", k)
	}
	// names reads an array of distinct strings (required, dependentRequired).
	names := func(v any, at, what string) ([]string, error) {
		arr, ok := v.([]any)
		if !ok {
			return nil, c.errorf(at, "%s must be an array of strings", what)
		}
		out := make([]string, len(arr))
		seen := map[string]bool{}
		for i, e := range arr {
			str, ok := e.(string)
			if !ok || seen[str] {
				return nil, c.errorf(at+"/"+strconv.Itoa(i), "%s must be an array of distinct strings", what)
			}
			seen[str] = true
			out[i] = str
		}
		return out, nil
	}
	regex := func(p, at string) (*regexp.Regexp, error) {
		re, err := regexp.Compile(p)
		if err != nil {
			return nil, c.errorf(at, "not a regular expression Go accepts: %v", err)
		}
		return re, nil
	}

	var err error
	for _, k := range keys {
		at := loc + "/" + escape(k)
		switch k {
		case "$schema":
			str, _ := s[k].(string)
			if loc != "" {
				return c.errorf(at, "$schema is allowed only at the root")
			}
			if strings.TrimSuffix(str, "#") != draft2020 {
				return c.errorf(at, "%s is not supported: twinlet validates draft 2020-12 (%s)", show(s[k]), draft2020)
			}
		case "$id":
			if loc != "" {
				return c.errorf(at, "$id is allowed only at the root")
			}
			if _, ok := s[k].(string); !ok {
				return c.errorf(at, "$id must be a string")
			}
		case "$ref":
			str, ok := s[k].(string)
			if !ok {
				return c.errorf(at, "$ref must be a string")
			}
			if !strings.HasPrefix(str, "#") {
				return c.errorf(at, "only a $ref within the schema (\"#/$defs/…\") is supported, not %q", str)
			}
			n.ref = str
			c.refs = append(c.refs, n)
		case "$defs", "definitions":
			if _, err = schemaMap(k); err != nil {
				return err
			}
		case "description":
			n.description, _ = s[k].(string)
		case "type":
			switch t := s[k].(type) {
			case string:
				n.types = []string{t}
			case []any:
				for _, e := range t {
					str, _ := e.(string)
					n.types = append(n.types, str)
				}
			default:
				return c.errorf(at, "type must be a type name or an array of them")
			}
			for _, t := range n.types {
				switch t {
				case "null", "boolean", "object", "array", "number", "integer", "string":
				default:
					return c.errorf(at, "%s is not a JSON Schema type", show(t))
				}
			}
		case "enum":
			arr, ok := s[k].([]any)
			if !ok {
				return c.errorf(at, "enum must be an array")
			}
			n.enum = arr
		case "const":
			n.hasConst, n.konst = true, s[k]
		case "minLength":
			n.minLength, err = count(k)
		case "maxLength":
			n.maxLength, err = count(k)
		case "pattern":
			p, ok := s[k].(string)
			if !ok {
				return c.errorf(at, "pattern must be a string")
			}
			n.patternSrc = p
			n.pattern, err = regex(p, at)
		case "minimum":
			n.minimum, n.minimumSrc, err = number(k)
		case "maximum":
			n.maximum, n.maximumSrc, err = number(k)
		case "exclusiveMinimum":
			n.exclMin, n.exclMinSrc, err = number(k)
		case "exclusiveMaximum":
			n.exclMax, n.exclMaxSrc, err = number(k)
		case "multipleOf":
			n.multipleOf, n.multipleOfSrc, err = number(k)
			if err == nil && n.multipleOf.Sign() <= 0 {
				err = c.errorf(at, "multipleOf must be greater than 0")
			}
		case "minItems":
			n.minItems, err = count(k)
		case "maxItems":
			n.maxItems, err = count(k)
		case "uniqueItems":
			b, ok := s[k].(bool)
			if !ok {
				return c.errorf(at, "uniqueItems must be a boolean")
			}
			n.uniqueItems = b
		case "prefixItems":
			n.prefixItems, err = subs(k)
		case "items":
			if _, isArr := s[k].([]any); isArr {
				return c.errorf(at, "items must be a schema (an array of them is prefixItems in draft 2020-12)")
			}
			n.items, err = sub(k)
		case "required":
			n.required, err = names(s[k], at, k)
		case "minProperties":
			n.minProps, err = count(k)
		case "maxProperties":
			n.maxProps, err = count(k)
		case "propertyNames":
			n.propertyNames, err = sub(k)
		case "properties":
			n.properties, err = schemaMap(k)
		case "patternProperties":
			var m map[string]*node
			if m, err = schemaMap(k); err != nil {
				return err
			}
			for p, pn := range m {
				re, err := regex(p, at+"/"+escape(p))
				if err != nil {
					return err
				}
				n.patternProps = append(n.patternProps, patternProp{src: p, re: re, n: pn})
			}
			sort.Slice(n.patternProps, func(i, j int) bool { return n.patternProps[i].src < n.patternProps[j].src })
		case "additionalProperties":
			n.additional, err = sub(k)
		case "dependentRequired":
			m, ok := s[k].(map[string]any)
			if !ok {
				return c.errorf(at, "dependentRequired must be an object of string arrays")
			}
			for _, name := range slices.Sorted(maps.Keys(m)) {
				needs, err := names(m[name], at+"/"+escape(name), "each member of dependentRequired")
				if err != nil {
					return err
				}
				n.dependentRequired = append(n.dependentRequired, dependency{name: name, needs: needs})
			}
		case "dependentSchemas":
			var m map[string]*node
			if m, err = schemaMap(k); err != nil {
				return err
			}
			for _, name := range slices.Sorted(maps.Keys(m)) {
				n.dependentSchemas = append(n.dependentSchemas, dependentSchema{name: name, n: m[name]})
			}
		case "allOf":
			n.allOf, err = subs(k)
		case "anyOf":
			n.anyOf, err = subs(k)
		case "oneOf":
			n.oneOf, err = subs(k)
		case "not":
			n.not, err = sub(k)
		case "if":
			n.ifNode, err = sub(k)
		case "then":
			n.thenNode, err = sub(k)
		case "else":
			n.elseNode, err = sub(k)
		}
		if err != nil {
			return err
		}
	}
	return nil
}
