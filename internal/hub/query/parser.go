package query

import (
	"fmt"
	"math"
	"strings"
)

type parser struct {
	toks []token
	i    int
}

func (p *parser) peek() token { return p.toks[p.i] }

func (p *parser) next() token {
	t := p.toks[p.i]
	if t.kind != tEOF {
		p.i++
	}
	return t
}

func (p *parser) errorf(t token, format string, args ...any) error {
	return &SyntaxError{Pos: t.pos, Msg: fmt.Sprintf(format, args...)}
}

// isKeyword reports whether t is the (case-insensitive) keyword kw.
func isKeyword(t token, kw string) bool {
	return t.kind == tIdent && strings.EqualFold(t.text, kw)
}

func isPunct(t token, s string) bool { return t.kind == tPunct && t.text == s }

func (p *parser) acceptKeyword(kw string) bool {
	if isKeyword(p.peek(), kw) {
		p.i++
		return true
	}
	return false
}

func (p *parser) acceptPunct(s string) bool {
	if isPunct(p.peek(), s) {
		p.i++
		return true
	}
	return false
}

func (p *parser) expectKeyword(kw, after string) error {
	if !p.acceptKeyword(kw) {
		return p.errorf(p.peek(), "expected %s%s, found %s", kw, after, p.peek())
	}
	return nil
}

func (p *parser) expectPunct(s, after string) error {
	if !p.acceptPunct(s) {
		return p.errorf(p.peek(), "expected '%s'%s, found %s", s, after, p.peek())
	}
	return nil
}

// reserved words cannot begin a path (they can follow a '.').
var reserved = map[string]bool{
	"SELECT": true, "FROM": true, "WHERE": true, "AND": true, "OR": true,
	"NOT": true, "IN": true, "NIN": true, "AS": true, "GROUP": true,
	"BY": true, "TOP": true, "TRUE": true, "FALSE": true, "NULL": true,
}

func isReserved(t token) bool {
	return t.kind == tIdent && reserved[strings.ToUpper(t.text)]
}

func (p *parser) parseQuery() (*Query, error) {
	q := &Query{}
	if err := p.expectKeyword("SELECT", " at the start of the query"); err != nil {
		return nil, err
	}
	if p.acceptKeyword("TOP") {
		t := p.next()
		if t.kind != tNumber || t.num < 1 || t.num != math.Trunc(t.num) || t.num > math.MaxInt32 {
			return nil, p.errorf(t, "expected a positive whole number after TOP, found %s", t)
		}
		q.top = int(t.num)
	}
	if err := p.parseSelectList(q); err != nil {
		return nil, err
	}
	if err := p.expectKeyword("FROM", " after the SELECT list"); err != nil {
		return nil, err
	}
	ft := p.peek()
	from, err := p.parsePath("a collection after FROM")
	if err != nil {
		return nil, err
	}
	switch strings.ToLower(from.String()) {
	case "devices":
		q.From = "devices"
	case "devices.modules":
		q.From = "devices.modules"
	default:
		return nil, p.errorf(ft, "unsupported collection %q: expected devices or devices.modules", from.String())
	}
	if p.acceptKeyword("WHERE") {
		c, err := p.parseOr()
		if err != nil {
			return nil, err
		}
		q.where = c
	}
	if p.acceptKeyword("GROUP") {
		if err := p.expectKeyword("BY", " after GROUP"); err != nil {
			return nil, err
		}
		for {
			gp, err := p.parsePath("a path after GROUP BY")
			if err != nil {
				return nil, err
			}
			q.groupBy = append(q.groupBy, gp)
			if !p.acceptPunct(",") {
				break
			}
		}
	}
	if t := p.peek(); t.kind != tEOF {
		return nil, p.errorf(t, "unexpected %s", t)
	}
	if err := q.check(); err != nil {
		return nil, err
	}
	return q, nil
}

// check validates the SELECT list against aggregation and GROUP BY.
func (q *Query) check() error {
	if q.star {
		if len(q.groupBy) > 0 {
			return &SyntaxError{Pos: q.starPos, Msg: "SELECT * cannot be used with GROUP BY"}
		}
		return nil
	}
	if !q.IsAggregate() {
		return nil
	}
	for _, it := range q.items {
		if it.count {
			continue
		}
		found := false
		for _, g := range q.groupBy {
			if g.String() == it.path.String() {
				found = true
			}
		}
		if !found {
			return &SyntaxError{Pos: it.pos, Msg: fmt.Sprintf("%s must appear in GROUP BY when the query aggregates", it.path)}
		}
	}
	return nil
}

func (p *parser) parseSelectList(q *Query) error {
	if t := p.peek(); p.acceptPunct("*") {
		q.star, q.starPos = true, t.pos
		return nil
	}
	unnamed := 0
	seen := map[string]bool{}
	for {
		t := p.peek()
		it := selectItem{pos: t.pos}
		if isKeyword(t, "COUNT") && isPunct(p.toks[p.i+1], "(") {
			p.i += 2
			if err := p.expectPunct(")", ": COUNT takes no arguments"); err != nil {
				return err
			}
			it.count = true
		} else {
			path, err := p.parsePath("'*', COUNT() or a path after SELECT")
			if err != nil {
				return err
			}
			it.path = path
			it.name = path[len(path)-1]
		}
		if p.acceptKeyword("AS") {
			at := p.next()
			if at.kind != tIdent || isReserved(at) {
				return p.errorf(at, "expected a name after AS, found %s", at)
			}
			it.name = at.text
		} else if it.count {
			unnamed++
			it.name = fmt.Sprintf("$%d", unnamed)
		}
		if seen[it.name] {
			return p.errorf(t, "duplicate column name %q: use AS to rename", it.name)
		}
		seen[it.name] = true
		q.items = append(q.items, it)
		if !p.acceptPunct(",") {
			return nil
		}
	}
}

// parsePath reads ident ('.' (ident | [[name]]))*.
func (p *parser) parsePath(what string) (path, error) {
	t := p.peek()
	if t.kind != tIdent || isReserved(t) {
		return nil, p.errorf(t, "expected %s, found %s", what, t)
	}
	p.i++
	out := path{t.text}
	for p.acceptPunct(".") {
		s := p.next()
		if s.kind != tIdent && s.kind != tBracket {
			return nil, p.errorf(s, "expected a property name after '.', found %s", s)
		}
		out = append(out, s.text)
	}
	return out, nil
}

func (p *parser) parseOr() (cond, error) {
	left, err := p.parseAnd()
	if err != nil {
		return nil, err
	}
	for p.acceptKeyword("OR") {
		right, err := p.parseAnd()
		if err != nil {
			return nil, err
		}
		left = orCond{left, right}
	}
	return left, nil
}

func (p *parser) parseAnd() (cond, error) {
	left, err := p.parseNot()
	if err != nil {
		return nil, err
	}
	for p.acceptKeyword("AND") {
		right, err := p.parseNot()
		if err != nil {
			return nil, err
		}
		left = andCond{left, right}
	}
	return left, nil
}

func (p *parser) parseNot() (cond, error) {
	if p.acceptKeyword("NOT") {
		c, err := p.parseNot()
		if err != nil {
			return nil, err
		}
		return notCond{c}, nil
	}
	return p.parsePrimary()
}

var compareOps = map[string]bool{"=": true, "!=": true, "<>": true, "<": true, "<=": true, ">": true, ">=": true}

func (p *parser) parsePrimary() (cond, error) {
	t := p.peek()
	if p.acceptPunct("(") {
		c, err := p.parseOr()
		if err != nil {
			return nil, err
		}
		if err := p.expectPunct(")", " to close '('"); err != nil {
			return nil, err
		}
		return c, nil
	}
	if t.kind == tIdent && isPunct(p.toks[p.i+1], "(") {
		if fn, ok := functions[strings.ToUpper(t.text)]; ok {
			return p.parseCall(t, fn)
		}
		return nil, p.errorf(t, "unknown function %s", t.text)
	}
	left, err := p.parseOperand("a condition")
	if err != nil {
		return nil, err
	}
	op := p.peek()
	switch {
	case op.kind == tPunct && compareOps[op.text]:
		p.i++
		right, err := p.parseOperand(fmt.Sprintf("value after '%s'", op.text))
		if err != nil {
			return nil, err
		}
		o := op.text
		if o == "<>" {
			o = "!="
		}
		return compareCond{op: o, left: left, right: right}, nil
	case isKeyword(op, "IN") || isKeyword(op, "NIN"):
		p.i++
		list, err := p.parseList(strings.ToUpper(op.text))
		if err != nil {
			return nil, err
		}
		return inCond{x: left, list: list, negate: isKeyword(op, "NIN")}, nil
	case isKeyword(op, "NOT") && isKeyword(p.toks[p.i+1], "IN"):
		p.i += 2
		list, err := p.parseList("NOT IN")
		if err != nil {
			return nil, err
		}
		return inCond{x: left, list: list, negate: true}, nil
	}
	// A bare operand is a condition when it is the boolean true.
	return boolCond{left}, nil
}

func (p *parser) parseList(after string) ([]any, error) {
	if err := p.expectPunct("[", " after "+after); err != nil {
		return nil, err
	}
	var list []any
	if p.acceptPunct("]") {
		return list, nil
	}
	for {
		t := p.peek()
		v, ok := literal(t)
		if !ok {
			return nil, p.errorf(t, "expected a literal value in the %s list, found %s", after, t)
		}
		p.i++
		list = append(list, v)
		if p.acceptPunct("]") {
			return list, nil
		}
		if err := p.expectPunct(",", " or ']' in the "+after+" list"); err != nil {
			return nil, err
		}
	}
}

// literal converts a literal token to its value.
func literal(t token) (any, bool) {
	switch {
	case t.kind == tString:
		return t.text, true
	case t.kind == tNumber:
		return t.num, true
	case isKeyword(t, "TRUE"):
		return true, true
	case isKeyword(t, "FALSE"):
		return false, true
	case isKeyword(t, "NULL"):
		return nil, true
	}
	return nil, false
}

func (p *parser) parseOperand(what string) (operand, error) {
	t := p.peek()
	if v, ok := literal(t); ok {
		p.i++
		return operand{lit: v, isLit: true}, nil
	}
	if t.kind == tIdent && !isReserved(t) {
		path, err := p.parsePath(what)
		if err != nil {
			return operand{}, err
		}
		return operand{path: path}, nil
	}
	return operand{}, p.errorf(t, "expected %s, found %s", what, t)
}

func (p *parser) parseCall(name token, fn function) (cond, error) {
	p.i += 2 // name (
	var args []operand
	if !p.acceptPunct(")") {
		for {
			a, err := p.parseOperand(fmt.Sprintf("an argument of %s", strings.ToUpper(name.text)))
			if err != nil {
				return nil, err
			}
			args = append(args, a)
			if p.acceptPunct(")") {
				break
			}
			if err := p.expectPunct(",", " or ')' in the arguments of "+strings.ToUpper(name.text)); err != nil {
				return nil, err
			}
		}
	}
	if len(args) != fn.arity {
		return nil, p.errorf(name, "%s takes %d argument(s), got %d", strings.ToUpper(name.text), fn.arity, len(args))
	}
	if fn.pathArg && args[0].isLit {
		return nil, p.errorf(name, "%s takes a path as its first argument", strings.ToUpper(name.text))
	}
	return callCond{fn: fn, args: args}, nil
}
