package query

// WherePaths returns every path the WHERE condition reads, each as its
// segments (configurations.[[c1]].status is ["configurations", "c1",
// "status"]), in order of appearance, duplicates included. A query without
// WHERE reads nothing. Callers use it to index which twin changes can
// change a match.
func (q *Query) WherePaths() [][]string {
	var out [][]string
	var walk func(c cond)
	add := func(o operand) {
		if !o.isLit {
			out = append(out, append([]string(nil), o.path...))
		}
	}
	walk = func(c cond) {
		switch x := c.(type) {
		case andCond:
			walk(x.l)
			walk(x.r)
		case orCond:
			walk(x.l)
			walk(x.r)
		case notCond:
			walk(x.c)
		case boolCond:
			add(x.x)
		case compareCond:
			add(x.left)
			add(x.right)
		case inCond:
			add(x.x)
		case callCond:
			for _, a := range x.args {
				add(a)
			}
		}
	}
	if q.where != nil {
		walk(q.where)
	}
	return out
}

// ParseAfter parses prefix+src as one query, with any syntax error located
// in src alone: for a condition written on its own (an IoT Hub
// configuration's targetCondition "tags.site = 'x'") that is parsed after a
// fixed "SELECT * FROM devices WHERE ".
func ParseAfter(prefix, src string) (*Query, error) {
	q, err := Parse(prefix + src)
	if err != nil {
		se := err.(*SyntaxError)
		se.Pos -= len(prefix)
		if se.Pos < 0 {
			se.Pos = 0
		}
		se.src, se.hasSrc = src, true
		return nil, se
	}
	return q, nil
}
