package fleet

import (
	"fmt"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// locError is a problem at a YAML position.
type locError struct {
	line, col int
	msg       string
}

func (e *locError) Error() string { return e.msg }

// convert turns a YAML node into a JSON-compatible value and refuses what
// JSON cannot say: non-string keys, duplicate keys, aliases and merge keys
// (which also rules out alias bombs).
func convert(n *yaml.Node, depth int) (any, error) {
	if depth > 64 {
		return nil, &locError{n.Line, n.Column, "nested too deeply"}
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
			if k.Tag == "!!merge" {
				return nil, &locError{k.Line, k.Column, "merge keys (<<) are not supported"}
			}
			if k.Kind != yaml.ScalarNode || (k.Tag != "!!str" && k.Tag != "!!int" && k.Tag != "!!bool") {
				return nil, &locError{k.Line, k.Column, "mapping keys must be strings"}
			}
			if _, dup := m[k.Value]; dup {
				return nil, &locError{k.Line, k.Column, fmt.Sprintf("duplicate key %q", k.Value)}
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
		return nil, &locError{n.Line, n.Column, "aliases are not supported in fleet files"}
	case yaml.ScalarNode:
		switch n.Tag {
		case "!!null":
			return nil, nil
		case "!!bool":
			var b bool
			if err := n.Decode(&b); err != nil {
				return nil, &locError{n.Line, n.Column, err.Error()}
			}
			return b, nil
		case "!!int", "!!float":
			var f any
			if err := n.Decode(&f); err != nil {
				return nil, &locError{n.Line, n.Column, err.Error()}
			}
			return f, nil
		case "!!str", "!!binary", "!!timestamp":
			return n.Value, nil
		default:
			return nil, &locError{n.Line, n.Column, fmt.Sprintf("unsupported YAML tag %s", n.Tag)}
		}
	}
	return nil, &locError{n.Line, n.Column, "unsupported YAML node"}
}

// locate walks a JSON pointer through a YAML node tree and returns
// "file:line:col" of the deepest node it reaches (the key, for
// containers).
func locate(file string, root *yaml.Node, pointer string) string {
	n := root
	if n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	line, col := n.Line, n.Column
	if pointer != "" {
		for _, tok := range strings.Split(pointer[1:], "/") {
			tok = strings.NewReplacer("~1", "/", "~0", "~").Replace(tok)
			var next *yaml.Node
			switch n.Kind {
			case yaml.MappingNode:
				for i := 0; i+1 < len(n.Content); i += 2 {
					if n.Content[i].Value == tok {
						next = n.Content[i+1]
						line, col = n.Content[i].Line, n.Content[i].Column
						if next.Kind == yaml.ScalarNode {
							line, col = next.Line, next.Column
						}
						break
					}
				}
			case yaml.SequenceNode:
				if i, err := strconv.Atoi(tok); err == nil && i >= 0 && i < len(n.Content) {
					next = n.Content[i]
					line, col = next.Line, next.Column
				}
			}
			if next == nil {
				break
			}
			n = next
		}
	}
	return fmt.Sprintf("%s:%d:%d", file, line, col)
}

func yamlErrPos(file string, err error) string {
	msg := err.Error()
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
