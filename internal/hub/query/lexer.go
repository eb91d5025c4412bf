package query

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// SyntaxError is a query that does not parse. Pos is the byte offset in the
// query where the problem was found.
type SyntaxError struct {
	Pos int
	Msg string

	src    string // the query, to turn Pos into a line and column
	hasSrc bool
}

// Error says where the problem is, as a 1-based line and column (in
// characters), and what it is.
func (e *SyntaxError) Error() string {
	if !e.hasSrc || e.Pos < 0 || e.Pos > len(e.src) {
		return fmt.Sprintf("offset %d: %s", e.Pos, e.Msg)
	}
	before := e.src[:e.Pos]
	line := strings.Count(before, "\n") + 1
	if i := strings.LastIndexByte(before, '\n'); i >= 0 {
		before = before[i+1:]
	}
	col := utf8.RuneCountInString(before) + 1
	return fmt.Sprintf("line %d, column %d: %s", line, col, e.Msg)
}

type tokKind uint8

const (
	tEOF     tokKind = iota
	tIdent           // deviceId, SELECT, __status, $version
	tBracket         // [[cfgId]]: a path segment written in brackets
	tString          // 'x' or "x", text holds the decoded value
	tNumber          // text holds the literal, num the value
	tPunct           // * , . ( ) [ ] = != <> < <= > >=
)

type token struct {
	kind tokKind
	pos  int
	text string
	num  float64
}

func (t token) String() string {
	switch t.kind {
	case tEOF:
		return "end of query"
	case tString:
		return strconv.Quote(t.text)
	case tBracket:
		return "'[[" + t.text + "]]'"
	}
	return "'" + t.text + "'"
}

func isIdentStart(c byte) bool {
	return c == '_' || c == '$' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}

func isIdentPart(c byte) bool {
	return isIdentStart(c) || c >= '0' && c <= '9'
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// lex splits q into tokens; the last one is always tEOF.
func lex(q string) ([]token, error) {
	var toks []token
	i := 0
	for {
		for i < len(q) && (q[i] == ' ' || q[i] == '\t' || q[i] == '\n' || q[i] == '\r') {
			i++
		}
		if i >= len(q) {
			toks = append(toks, token{kind: tEOF, pos: len(q)})
			return toks, nil
		}
		start := i
		c := q[i]
		switch {
		case isIdentStart(c):
			for i < len(q) && isIdentPart(q[i]) {
				i++
			}
			toks = append(toks, token{kind: tIdent, pos: start, text: q[start:i]})
		case isDigit(c) || (c == '-' || c == '.') && i+1 < len(q) && isDigit(q[i+1]) && numberMayStart(toks):
			n, err := lexNumber(q, i)
			if err != nil {
				return nil, err
			}
			v, perr := strconv.ParseFloat(q[i:n], 64)
			if perr != nil {
				return nil, &SyntaxError{Pos: start, Msg: fmt.Sprintf("invalid number %q", q[i:n])}
			}
			toks = append(toks, token{kind: tNumber, pos: start, text: q[i:n], num: v})
			i = n
		case c == '\'' || c == '"':
			s, n, err := lexString(q, i)
			if err != nil {
				return nil, err
			}
			toks = append(toks, token{kind: tString, pos: start, text: s})
			i = n
		case c == '[' && i+1 < len(q) && q[i+1] == '[':
			end := strings.Index(q[i+2:], "]]")
			if end < 0 {
				return nil, &SyntaxError{Pos: start, Msg: "unterminated '[[': expected ']]'"}
			}
			name := q[i+2 : i+2+end]
			if name == "" {
				return nil, &SyntaxError{Pos: start, Msg: "empty name in '[[]]'"}
			}
			toks = append(toks, token{kind: tBracket, pos: start, text: name})
			i += 2 + end + 2
		default:
			p := punct(q[i:])
			if p == "" {
				r, _ := utf8.DecodeRuneInString(q[i:])
				return nil, &SyntaxError{Pos: start, Msg: fmt.Sprintf("unexpected character %q", r)}
			}
			toks = append(toks, token{kind: tPunct, pos: start, text: p})
			i += len(p)
		}
	}
}

// numberMayStart tells a leading '-' or '.' of a number from a path
// separator: after an identifier, ']]' or ')' a '.' continues a path.
func numberMayStart(toks []token) bool {
	if len(toks) == 0 {
		return true
	}
	last := toks[len(toks)-1]
	switch last.kind {
	case tIdent, tBracket, tString, tNumber:
		return false
	case tPunct:
		return last.text != ")" && last.text != "]"
	}
	return true
}

func lexNumber(q string, i int) (int, error) {
	start := i
	if q[i] == '-' {
		i++
	}
	for i < len(q) && isDigit(q[i]) {
		i++
	}
	if i < len(q) && q[i] == '.' {
		i++
		for i < len(q) && isDigit(q[i]) {
			i++
		}
	}
	if i < len(q) && (q[i] == 'e' || q[i] == 'E') {
		j := i + 1
		if j < len(q) && (q[j] == '+' || q[j] == '-') {
			j++
		}
		if j >= len(q) || !isDigit(q[j]) {
			return 0, &SyntaxError{Pos: start, Msg: "invalid number: missing exponent digits"}
		}
		for j < len(q) && isDigit(q[j]) {
			j++
		}
		i = j
	}
	if i < len(q) && isIdentPart(q[i]) {
		return 0, &SyntaxError{Pos: start, Msg: fmt.Sprintf("invalid number %q", q[start:i+1])}
	}
	return i, nil
}

// lexString reads a quoted string starting at q[i] and returns its value and
// the offset after the closing quote. Backslash escapes as in JSON, plus \'.
func lexString(q string, i int) (string, int, error) {
	quote := q[i]
	start := i
	i++
	var b strings.Builder
	for i < len(q) {
		c := q[i]
		switch {
		case c == quote:
			return b.String(), i + 1, nil
		case c == '\\':
			if i+1 >= len(q) {
				return "", 0, &SyntaxError{Pos: start, Msg: "unterminated string"}
			}
			e := q[i+1]
			switch e {
			case '\'', '"', '\\', '/':
				b.WriteByte(e)
			case 'b':
				b.WriteByte('\b')
			case 'f':
				b.WriteByte('\f')
			case 'n':
				b.WriteByte('\n')
			case 'r':
				b.WriteByte('\r')
			case 't':
				b.WriteByte('\t')
			case 'u':
				if i+6 > len(q) {
					return "", 0, &SyntaxError{Pos: i, Msg: `invalid escape: \u needs 4 hex digits`}
				}
				v, err := strconv.ParseUint(q[i+2:i+6], 16, 16)
				if err != nil {
					return "", 0, &SyntaxError{Pos: i, Msg: `invalid escape: \u needs 4 hex digits`}
				}
				b.WriteRune(rune(v))
				i += 4
			default:
				return "", 0, &SyntaxError{Pos: i, Msg: fmt.Sprintf("invalid escape '\\%c'", e)}
			}
			i += 2
		default:
			b.WriteByte(c)
			i++
		}
	}
	return "", 0, &SyntaxError{Pos: start, Msg: "unterminated string"}
}

var puncts = []string{"!=", "<>", "<=", ">=", "*", ",", ".", "(", ")", "[", "]", "=", "<", ">"}

func punct(s string) string {
	for _, p := range puncts {
		if strings.HasPrefix(s, p) {
			return p
		}
	}
	return ""
}
