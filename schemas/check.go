package schemas

import (
	"bytes"
	"encoding/json"
	"math/big"
	"strconv"
	"strings"
	"unicode/utf8"
)

// maxDepth bounds how deep validation follows subschemas, so that a $ref
// cycle that consumes nothing ({"$ref": "#"} at the root) ends.
const maxDepth = 256

// maxSteps bounds the subschemas one validation visits: anyOf and oneOf
// branches under a recursive $ref can make the work exponential in the
// document's depth, and a third-party schema must not hang the agent.
const maxSteps = 1 << 20

// checker collects the problems of one document.
type checker struct {
	out   []Problem
	steps *int // visits left, shared with the checkers of branches
}

// branch is a checker for a subschema whose problems are weighed before
// they are kept (anyOf, oneOf, not, if).
func (c *checker) branch() *checker { return &checker{steps: c.steps} }

func (c *checker) add(ptr, msg string) {
	c.out = append(c.out, Problem{Pointer: ptr, Message: msg})
}

// valid reports whether v passes n, without recording anything.
func (c *checker) valid(n *node, v any, ptr string, depth int) bool {
	sub := c.branch()
	sub.check(n, v, ptr, depth)
	return len(sub.out) == 0
}

// check validates v, found at the JSON pointer ptr, against n. Its rules
// and messages are those of the console's schema.js.
func (c *checker) check(n *node, v any, ptr string, depth int) {
	if n.always != nil {
		if !*n.always {
			c.add(ptr, "not allowed")
		}
		return
	}
	if depth > maxDepth {
		c.add(ptr, "the schema nests deeper than "+strconv.Itoa(maxDepth)+" levels here (a $ref cycle?)")
		return
	}
	if *c.steps <= 0 {
		if *c.steps == 0 {
			c.add(ptr, "validation stopped: the schema takes more than "+strconv.Itoa(maxSteps)+" steps on this document")
			*c.steps = -1
		}
		return
	}
	*c.steps--
	depth++
	if n.refNode != nil {
		c.check(n.refNode, v, ptr, depth)
	}
	t := jsonType(v)
	if n.types != nil {
		ok := false
		for _, want := range n.types {
			if want == t || (want == "number" && t == "integer") {
				ok = true
				break
			}
		}
		if !ok {
			c.add(ptr, "expected "+strings.Join(n.types, " or ")+", got "+t)
			return // the other rules of the type do not apply
		}
	}
	if n.enum != nil {
		ok := false
		for _, e := range n.enum {
			if equal(e, v) {
				ok = true
				break
			}
		}
		if !ok {
			shown := make([]string, len(n.enum))
			for i, e := range n.enum {
				shown[i] = show(e)
			}
			c.add(ptr, "must be one of "+strings.Join(shown, ", "))
		}
	}
	if n.hasConst && !equal(n.konst, v) {
		c.add(ptr, "must be "+show(n.konst))
	}

	switch t {
	case "string":
		c.checkString(n, v.(string), ptr)
	case "integer", "number":
		c.checkNumber(n, v.(json.Number), ptr)
	case "array":
		c.checkArray(n, v.([]any), ptr, depth)
	case "object":
		c.checkObject(n, v.(map[string]any), ptr, depth)
	}

	for _, s := range n.allOf {
		c.check(s, v, ptr, depth)
	}
	if n.anyOf != nil {
		var errs []Problem
		ok := false
		for _, s := range n.anyOf {
			sub := c.branch()
			sub.check(s, v, ptr, depth)
			if len(sub.out) == 0 {
				ok = true
				break
			}
			errs = append(errs, sub.out...)
		}
		if !ok {
			c.out = append(c.out, errs...)
		}
	}
	if n.oneOf != nil {
		var errs []Problem
		var passed []string
		for i, s := range n.oneOf {
			sub := c.branch()
			sub.check(s, v, ptr, depth)
			if len(sub.out) == 0 {
				passed = append(passed, strconv.Itoa(i))
			} else {
				errs = append(errs, sub.out...)
			}
		}
		switch {
		case len(passed) == 0:
			c.out = append(c.out, errs...)
		case len(passed) > 1:
			c.add(ptr, "matches more than one of its alternatives ("+strings.Join(passed, ", ")+")")
		}
	}
	if n.not != nil && c.valid(n.not, v, ptr, depth) {
		c.add(ptr, "not allowed")
	}
	if n.ifNode != nil {
		if c.valid(n.ifNode, v, ptr, depth) {
			if n.thenNode != nil {
				c.check(n.thenNode, v, ptr, depth)
			}
		} else if n.elseNode != nil {
			c.check(n.elseNode, v, ptr, depth)
		}
	}
}

func (c *checker) checkString(n *node, s, ptr string) {
	if n.minLength < 0 && n.maxLength < 0 && n.pattern == nil {
		return
	}
	l := utf8.RuneCountInString(s)
	if n.minLength >= 0 && l < n.minLength {
		c.add(ptr, "at least "+strconv.Itoa(n.minLength)+" characters, got "+strconv.Itoa(l))
	}
	if n.maxLength >= 0 && l > n.maxLength {
		c.add(ptr, "at most "+strconv.Itoa(n.maxLength)+" characters, got "+strconv.Itoa(l))
	}
	if n.pattern != nil && !n.pattern.MatchString(s) {
		if n.description != "" {
			c.add(ptr, "invalid value: "+firstSentence(n.description))
		} else {
			c.add(ptr, "invalid value (does not match "+n.patternSrc+")")
		}
	}
}

func (c *checker) checkNumber(n *node, num json.Number, ptr string) {
	if n.minimum == nil && n.maximum == nil && n.exclMin == nil && n.exclMax == nil && n.multipleOf == nil {
		return
	}
	r, ok := rat(num)
	if !ok {
		c.add(ptr, "not a number: "+num.String())
		return
	}
	if n.minimum != nil && r.Cmp(n.minimum) < 0 {
		c.add(ptr, "must be >= "+n.minimumSrc)
	}
	if n.maximum != nil && r.Cmp(n.maximum) > 0 {
		c.add(ptr, "must be <= "+n.maximumSrc)
	}
	if n.exclMin != nil && r.Cmp(n.exclMin) <= 0 {
		c.add(ptr, "must be > "+n.exclMinSrc)
	}
	if n.exclMax != nil && r.Cmp(n.exclMax) >= 0 {
		c.add(ptr, "must be < "+n.exclMaxSrc)
	}
	if n.multipleOf != nil && !new(big.Rat).Quo(r, n.multipleOf).IsInt() {
		c.add(ptr, "must be a multiple of "+n.multipleOfSrc)
	}
}

func (c *checker) checkArray(n *node, a []any, ptr string, depth int) {
	if n.minItems >= 0 && len(a) < n.minItems {
		c.add(ptr, "at least "+strconv.Itoa(n.minItems)+" items")
	}
	if n.maxItems >= 0 && len(a) > n.maxItems {
		c.add(ptr, "at most "+strconv.Itoa(n.maxItems)+" items")
	}
	if n.uniqueItems {
		for i := range a {
			for j := i + 1; j < len(a); j++ {
				if equal(a[i], a[j]) {
					c.add(ptr, "items "+strconv.Itoa(i)+" and "+strconv.Itoa(j)+" are equal")
				}
			}
		}
	}
	for i, s := range n.prefixItems {
		if i < len(a) {
			c.check(s, a[i], ptr+"/"+strconv.Itoa(i), depth)
		}
	}
	if n.items != nil {
		for i := len(n.prefixItems); i < len(a); i++ {
			c.check(n.items, a[i], ptr+"/"+strconv.Itoa(i), depth)
		}
	}
}

func (c *checker) checkObject(n *node, o map[string]any, ptr string, depth int) {
	if len(n.required) > 0 {
		var missing []string
		for _, k := range n.required {
			if _, ok := o[k]; !ok {
				missing = append(missing, "'"+k+"'")
			}
		}
		if len(missing) > 0 {
			c.add(ptr, "missing "+strings.Join(missing, ", "))
		}
	}
	if n.minProps >= 0 && len(o) < n.minProps {
		c.add(ptr, "at least "+strconv.Itoa(n.minProps)+" properties")
	}
	if n.maxProps >= 0 && len(o) > n.maxProps {
		c.add(ptr, "at most "+strconv.Itoa(n.maxProps)+" properties")
	}
	if n.propertyNames != nil || n.properties != nil || n.patternProps != nil || n.additional != nil {
		for k, v := range o {
			p := ptr + "/" + escape(k)
			if n.propertyNames != nil {
				c.check(n.propertyNames, k, p, depth)
			}
			matched := false
			if s, ok := n.properties[k]; ok {
				matched = true
				c.check(s, v, p, depth)
			}
			for _, pp := range n.patternProps {
				if pp.re.MatchString(k) {
					matched = true
					c.check(pp.n, v, p, depth)
				}
			}
			if !matched && n.additional != nil {
				if n.additional.always != nil && !*n.additional.always {
					c.add(p, "unknown field '"+k+"'")
				} else {
					c.check(n.additional, v, p, depth)
				}
			}
		}
	}
	for _, d := range n.dependentRequired {
		if _, ok := o[d.name]; !ok {
			continue
		}
		var missing []string
		for _, need := range d.needs {
			if _, ok := o[need]; !ok {
				missing = append(missing, "'"+need+"'")
			}
		}
		if len(missing) > 0 {
			c.add(ptr, "'"+d.name+"' needs "+strings.Join(missing, ", "))
		}
	}
	for _, d := range n.dependentSchemas {
		if _, ok := o[d.name]; ok {
			c.check(d.n, o, ptr, depth)
		}
	}
}

// jsonType is the JSON Schema type of a value decoded with UseNumber: a
// number without a fractional part is an integer (1.0 is).
func jsonType(v any) string {
	switch x := v.(type) {
	case nil:
		return "null"
	case bool:
		return "boolean"
	case string:
		return "string"
	case json.Number:
		if r, ok := rat(x); ok && r.IsInt() {
			return "integer"
		}
		return "number"
	case []any:
		return "array"
	case map[string]any:
		return "object"
	}
	return "unknown"
}

// rat is the exact value of a JSON number.
func rat(n json.Number) (*big.Rat, bool) {
	s := n.String()
	// The common case, a small integer, without big.Rat's parser.
	if i, err := strconv.ParseInt(s, 10, 64); err == nil {
		return new(big.Rat).SetInt64(i), true
	}
	return new(big.Rat).SetString(s)
}

// equal is JSON equality: numbers by value, objects by members.
func equal(a, b any) bool {
	switch x := a.(type) {
	case nil:
		return b == nil
	case bool:
		y, ok := b.(bool)
		return ok && x == y
	case string:
		y, ok := b.(string)
		return ok && x == y
	case json.Number:
		y, ok := b.(json.Number)
		if !ok {
			return false
		}
		if x == y {
			return true
		}
		rx, ok1 := rat(x)
		ry, ok2 := rat(y)
		return ok1 && ok2 && rx.Cmp(ry) == 0
	case []any:
		y, ok := b.([]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for i := range x {
			if !equal(x[i], y[i]) {
				return false
			}
		}
		return true
	case map[string]any:
		y, ok := b.(map[string]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for k, xv := range x {
			yv, ok := y[k]
			if !ok || !equal(xv, yv) {
				return false
			}
		}
		return true
	}
	return false
}

// show is a value as JSON, as the page's JSON.stringify shows it.
func show(v any) string {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return "?"
	}
	return strings.TrimSuffix(b.String(), "\n")
}

// firstSentence is a description up to its first ". ", or without its
// final period.
func firstSentence(d string) string {
	if i := strings.Index(d, ". "); i > 0 {
		return d[:i]
	}
	return strings.TrimSuffix(d, ".")
}
