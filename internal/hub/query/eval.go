package query

import (
	"encoding/json"
	"strings"
)

// tri is a three-valued truth: a condition on an undefined value is
// neither true nor false.
type tri int8

const (
	triFalse tri = iota
	triTrue
	triUndef
)

func triOf(b bool) tri {
	if b {
		return triTrue
	}
	return triFalse
}

type cond interface {
	eval(doc map[string]any) tri
}

type operand struct {
	path  path
	lit   any
	isLit bool
}

// value returns the operand's value in doc; ok is false when undefined.
func (o operand) value(doc map[string]any) (any, bool) {
	if o.isLit {
		return o.lit, true
	}
	return lookup(doc, o.path)
}

type andCond struct{ l, r cond }

func (c andCond) eval(doc map[string]any) tri {
	l := c.l.eval(doc)
	if l == triFalse {
		return triFalse
	}
	r := c.r.eval(doc)
	switch {
	case r == triFalse:
		return triFalse
	case l == triTrue && r == triTrue:
		return triTrue
	}
	return triUndef
}

type orCond struct{ l, r cond }

func (c orCond) eval(doc map[string]any) tri {
	l := c.l.eval(doc)
	if l == triTrue {
		return triTrue
	}
	r := c.r.eval(doc)
	switch {
	case r == triTrue:
		return triTrue
	case l == triFalse && r == triFalse:
		return triFalse
	}
	return triUndef
}

type notCond struct{ c cond }

func (c notCond) eval(doc map[string]any) tri {
	switch c.c.eval(doc) {
	case triTrue:
		return triFalse
	case triFalse:
		return triTrue
	}
	return triUndef
}

// boolCond is a bare operand used as a condition (WHERE true,
// WHERE properties.reported.enabled).
type boolCond struct{ x operand }

func (c boolCond) eval(doc map[string]any) tri {
	v, ok := c.x.value(doc)
	if b, isBool := v.(bool); ok && isBool {
		return triOf(b)
	}
	return triUndef
}

type compareCond struct {
	op          string // = != < <= > >=
	left, right operand
}

func (c compareCond) eval(doc map[string]any) tri {
	l, lok := c.left.value(doc)
	r, rok := c.right.value(doc)
	if !lok || !rok {
		return triUndef
	}
	return compare(c.op, l, r)
}

// compare applies op to two defined values. Values of different kinds are
// incomparable (undefined); null, booleans, objects and arrays have only
// equality.
func compare(op string, l, r any) tri {
	lk, lv := classify(l)
	rk, rv := classify(r)
	if lk != rk || lk == kOther {
		return triUndef
	}
	switch op {
	case "=":
		return triOf(equal(lk, lv, rv))
	case "!=":
		return triOf(!equal(lk, lv, rv))
	}
	var c int
	switch lk {
	case kNumber:
		a, b := lv.(float64), rv.(float64)
		switch {
		case a < b:
			c = -1
		case a > b:
			c = 1
		}
	case kString:
		c = strings.Compare(lv.(string), rv.(string))
	default:
		return triUndef
	}
	switch op {
	case "<":
		return triOf(c < 0)
	case "<=":
		return triOf(c <= 0)
	case ">":
		return triOf(c > 0)
	case ">=":
		return triOf(c >= 0)
	}
	return triUndef
}

func equal(k kind, a, b any) bool {
	switch k {
	case kNull:
		return true
	case kBool, kNumber, kString:
		return a == b
	case kObject:
		am, bm := a.(map[string]any), b.(map[string]any)
		if len(am) != len(bm) {
			return false
		}
		for key, av := range am {
			bv, ok := bm[key]
			if !ok || !deepEqual(av, bv) {
				return false
			}
		}
		return true
	case kArray:
		as, bs := a.([]any), b.([]any)
		if len(as) != len(bs) {
			return false
		}
		for i := range as {
			if !deepEqual(as[i], bs[i]) {
				return false
			}
		}
		return true
	}
	return false
}

func deepEqual(a, b any) bool {
	ak, av := classify(a)
	bk, bv := classify(b)
	return ak == bk && ak != kOther && equal(ak, av, bv)
}

type kind uint8

const (
	kOther kind = iota
	kNull
	kBool
	kNumber
	kString
	kObject
	kArray
)

// classify returns the JSON kind of v and v normalised (numbers as float64).
func classify(v any) (kind, any) {
	switch x := v.(type) {
	case nil:
		return kNull, nil
	case bool:
		return kBool, x
	case string:
		return kString, x
	case float64:
		return kNumber, x
	case float32:
		return kNumber, float64(x)
	case int:
		return kNumber, float64(x)
	case int8:
		return kNumber, float64(x)
	case int16:
		return kNumber, float64(x)
	case int32:
		return kNumber, float64(x)
	case int64:
		return kNumber, float64(x)
	case uint:
		return kNumber, float64(x)
	case uint8:
		return kNumber, float64(x)
	case uint16:
		return kNumber, float64(x)
	case uint32:
		return kNumber, float64(x)
	case uint64:
		return kNumber, float64(x)
	case json.Number:
		f, err := x.Float64()
		if err != nil {
			return kOther, v
		}
		return kNumber, f
	case map[string]any:
		return kObject, x
	case []any:
		return kArray, x
	}
	return kOther, v
}

type inCond struct {
	x      operand
	list   []any
	negate bool
}

// eval: IN is true when x equals an element; NIN when it equals none.
// Elements of another type simply do not match; only an undefined x makes
// the result undefined.
func (c inCond) eval(doc map[string]any) tri {
	v, ok := c.x.value(doc)
	if !ok {
		return triUndef
	}
	found := false
	for _, e := range c.list {
		if compare("=", v, e) == triTrue {
			found = true
			break
		}
	}
	return triOf(found != c.negate)
}

type function struct {
	arity   int
	pathArg bool // the first argument must be a path
	eval    func(args []any, defined []bool) tri
}

func isKind(k kind) function {
	return function{arity: 1, eval: func(a []any, d []bool) tri {
		if !d[0] {
			return triFalse
		}
		got, _ := classify(a[0])
		return triOf(got == k)
	}}
}

func stringFunc(f func(s, sub string) bool) function {
	return function{arity: 2, eval: func(a []any, d []bool) tri {
		if !d[0] || !d[1] {
			return triUndef
		}
		s, ok1 := a[0].(string)
		sub, ok2 := a[1].(string)
		if !ok1 || !ok2 {
			return triUndef
		}
		return triOf(f(s, sub))
	}}
}

var functions = map[string]function{
	"IS_DEFINED": {arity: 1, pathArg: true, eval: func(_ []any, d []bool) tri { return triOf(d[0]) }},
	"IS_NULL":    isKind(kNull),
	"IS_BOOL":    isKind(kBool),
	"IS_NUMBER":  isKind(kNumber),
	"IS_STRING":  isKind(kString),
	"IS_OBJECT":  isKind(kObject),
	"IS_ARRAY":   isKind(kArray),
	"STARTSWITH": stringFunc(strings.HasPrefix),
	"ENDSWITH":   stringFunc(strings.HasSuffix),
	"CONTAINS":   stringFunc(strings.Contains),
}

type callCond struct {
	fn   function
	args []operand
}

func (c callCond) eval(doc map[string]any) tri {
	vals := make([]any, len(c.args))
	defined := make([]bool, len(c.args))
	for i, a := range c.args {
		vals[i], defined[i] = a.value(doc)
	}
	return c.fn.eval(vals, defined)
}
