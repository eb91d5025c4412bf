// Package query implements the subset of the IoT Hub query language that
// fleets use, over twins decoded from JSON (map[string]any):
//
//	SELECT [TOP n] * | item [AS alias], ...   item: a path or COUNT()
//	FROM devices | devices.modules
//	[WHERE condition]
//	[GROUP BY path, ...]
//
// Conditions combine AND, OR, NOT and parentheses over comparisons
// (= != <> < <= > >=), IN [...], NIN [...] and the functions IS_DEFINED,
// IS_NULL, IS_BOOL, IS_NUMBER, IS_STRING, IS_OBJECT, IS_ARRAY, STARTSWITH,
// ENDSWITH and CONTAINS. Paths are dotted (properties.reported.x.y); a
// segment may be written in double brackets (configurations.[[cfg1]].status).
// Keywords and function names are case-insensitive; paths are not.
//
// Evaluation follows the service (a DocumentDB dialect): a missing path is
// undefined, and a comparison with an undefined value or between values of
// different types is undefined, not false. Undefined propagates through NOT
// (NOT undefined is undefined) and is absorbed by AND false / OR true; a
// document matches only when the condition is true.
package query

import (
	"fmt"
	"strings"
)

// Query is a parsed query. It is immutable and safe for concurrent use.
type Query struct {
	// From is the collection: "devices" or "devices.modules".
	From string

	star    bool
	starPos int
	top     int // 0: no TOP
	items   []selectItem
	where   cond // nil: no WHERE
	groupBy []path
}

type path []string

func (p path) String() string {
	var b strings.Builder
	for i, s := range p {
		if i > 0 {
			b.WriteByte('.')
		}
		if strings.ContainsAny(s, ".[] ") || s == "" {
			b.WriteString("[[" + s + "]]")
		} else {
			b.WriteString(s)
		}
	}
	return b.String()
}

type selectItem struct {
	name  string // the output key
	path  path   // nil for COUNT()
	count bool
	pos   int
}

// Parse parses a query. Errors are *SyntaxError.
func Parse(q string) (*Query, error) {
	toks, err := lex(q)
	if err != nil {
		return nil, located(err, q)
	}
	p := &parser{toks: toks}
	query, err := p.parseQuery()
	if err != nil {
		return nil, located(err, q)
	}
	return query, nil
}

func located(err error, src string) error {
	se := err.(*SyntaxError)
	se.src, se.hasSrc = src, true
	return se
}

// Match reports whether the document satisfies WHERE (true when there is no
// WHERE).
func (q *Query) Match(doc map[string]any) bool {
	if q.where == nil {
		return true
	}
	return q.where.eval(doc) == triTrue
}

// IsAggregate reports SELECT COUNT() AS n style queries, with or without
// GROUP BY.
func (q *Query) IsAggregate() bool {
	if len(q.groupBy) > 0 {
		return true
	}
	for _, it := range q.items {
		if it.count {
			return true
		}
	}
	return false
}

// SelectAll reports SELECT * (rows are whole twins: x-ms-item-type
// "Twin"); Project then returns documents unchanged.
func (q *Query) SelectAll() bool { return q.star }

// Top returns n for SELECT TOP n, or 0 when the query has no TOP.
func (q *Query) Top() int { return q.top }

// Aggregate returns the result rows of an aggregate query over the docs
// that satisfy WHERE (docs that were already filtered with Match may be
// passed as they are). Without GROUP BY there is exactly one row, e.g.
// [{"n": 3}]; with GROUP BY there is one row per distinct combination of
// the grouping values, in order of first appearance, and a grouping value
// that is undefined is left out of its row. It returns nil for a query
// that is not an aggregate.
func (q *Query) Aggregate(docs []map[string]any) []map[string]any {
	if !q.IsAggregate() {
		return nil
	}
	type group struct {
		first map[string]any
		n     int
	}
	var (
		order  []string
		groups = map[string]*group{}
	)
	for _, d := range docs {
		if !q.Match(d) {
			continue
		}
		var kb strings.Builder
		for _, gp := range q.groupBy {
			v, ok := lookup(d, gp)
			writeKey(&kb, v, ok)
			kb.WriteByte(0)
		}
		k := kb.String()
		g := groups[k]
		if g == nil {
			g = &group{first: d}
			groups[k] = g
			order = append(order, k)
		}
		g.n++
	}
	if len(q.groupBy) == 0 && len(order) == 0 {
		groups[""] = &group{}
		order = append(order, "")
	}
	rows := make([]map[string]any, 0, len(order))
	for _, k := range order {
		g := groups[k]
		row := make(map[string]any, len(q.items))
		for _, it := range q.items {
			if it.count {
				row[it.name] = g.n
				continue
			}
			if v, ok := lookup(g.first, it.path); ok {
				row[it.name] = v
			}
		}
		rows = append(rows, row)
	}
	return rows
}

// Project applies the SELECT list to one document: SELECT * returns doc
// unchanged; otherwise each path becomes a key (its alias, or its last
// segment) and paths that are undefined in doc are left out. Values are
// shared with doc, not copied. COUNT() items are ignored: use Aggregate.
func (q *Query) Project(doc map[string]any) map[string]any {
	if q.star {
		return doc
	}
	out := make(map[string]any, len(q.items))
	for _, it := range q.items {
		if it.count {
			continue
		}
		if v, ok := lookup(doc, it.path); ok {
			out[it.name] = v
		}
	}
	return out
}

// lookup follows p through nested objects. ok is false when the path is
// undefined.
func lookup(doc map[string]any, p path) (v any, ok bool) {
	var cur any = doc
	for _, seg := range p {
		m, isMap := cur.(map[string]any)
		if !isMap {
			return nil, false
		}
		cur, ok = m[seg]
		if !ok {
			return nil, false
		}
	}
	return cur, true
}

// writeKey writes a canonical, type-tagged encoding of a value, so that
// equal values (by the query's equality) produce equal keys.
func writeKey(b *strings.Builder, v any, defined bool) {
	if !defined {
		b.WriteString("u")
		return
	}
	switch k, x := classify(v); k {
	case kNull:
		b.WriteString("z")
	case kBool:
		fmt.Fprintf(b, "b%t", x.(bool))
	case kNumber:
		fmt.Fprintf(b, "n%v", x.(float64))
	case kString:
		fmt.Fprintf(b, "s%q", x.(string))
	default:
		fmt.Fprintf(b, "o%v", v)
	}
}
