package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"

	yamlv3 "go.yaml.in/yaml/v3"
	"sigs.k8s.io/yaml"

	"github.com/twinlet/twinlet/internal/iothub"
)

// inputError is a problem in an input file, located as file:line.
type inputError struct {
	file string
	line int // 0: unknown
	msg  string
}

func (e *inputError) Error() string {
	if e.line > 0 {
		return fmt.Sprintf("%s:%d: %s", e.file, e.line, e.msg)
	}
	return fmt.Sprintf("%s: %s", e.file, e.msg)
}

var yamlLineErr = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// readPatch parses a twin patch, JSON or YAML, from the file called name:
//
//	tags: {…}
//	properties: {desired: {…}}   # or, shorter, desired: {…}
//
// null deletes a key, as in the service's PATCH. Errors point at name:line.
func readPatch(name string, data []byte) (iothub.TwinPatch, error) {
	if err := strictJSON(name, data); err != nil {
		return iothub.TwinPatch{}, err
	}
	var root yamlv3.Node
	if err := yamlv3.Unmarshal(data, &root); err != nil {
		msg := strings.TrimPrefix(err.Error(), "yaml: ")
		line := 0
		if m := yamlLineErr.FindStringSubmatch(err.Error()); m != nil {
			fmt.Sscan(m[1], &line)
			msg = m[2]
		}
		return iothub.TwinPatch{}, &inputError{name, line, msg}
	}
	if root.Kind == 0 || len(root.Content) == 0 {
		return iothub.TwinPatch{}, &inputError{name, 0, "empty document: expected tags and/or properties.desired"}
	}
	doc := root.Content[0]
	if doc.Kind != yamlv3.MappingNode {
		return iothub.TwinPatch{}, &inputError{name, doc.Line, "expected a mapping with tags and/or properties.desired"}
	}
	if err := checkDuplicates(name, doc); err != nil {
		return iothub.TwinPatch{}, err
	}
	var desiredAt int
	for i := 0; i+1 < len(doc.Content); i += 2 {
		k, v := doc.Content[i], doc.Content[i+1]
		switch k.Value {
		case "tags":
			if err := checkSection(name, "tags", v); err != nil {
				return iothub.TwinPatch{}, err
			}
		case "desired":
			if desiredAt != 0 {
				return iothub.TwinPatch{}, &inputError{name, k.Line, fmt.Sprintf("desired properties given twice (also at line %d)", desiredAt)}
			}
			desiredAt = k.Line
			if err := checkSection(name, "desired", v); err != nil {
				return iothub.TwinPatch{}, err
			}
		case "properties":
			if v.Kind != yamlv3.MappingNode {
				return iothub.TwinPatch{}, &inputError{name, v.Line, "properties: expected a mapping with desired"}
			}
			if err := checkDuplicates(name, v); err != nil {
				return iothub.TwinPatch{}, err
			}
			for j := 0; j+1 < len(v.Content); j += 2 {
				pk, pv := v.Content[j], v.Content[j+1]
				switch pk.Value {
				case "desired":
					if desiredAt != 0 {
						return iothub.TwinPatch{}, &inputError{name, pk.Line, fmt.Sprintf("desired properties given twice (also at line %d)", desiredAt)}
					}
					desiredAt = pk.Line
					if err := checkSection(name, "properties.desired", pv); err != nil {
						return iothub.TwinPatch{}, err
					}
				case "reported":
					return iothub.TwinPatch{}, &inputError{name, pk.Line, "properties.reported is written by the device, not by the service"}
				default:
					return iothub.TwinPatch{}, &inputError{name, pk.Line, fmt.Sprintf("unknown key properties.%s (want desired)", pk.Value)}
				}
			}
		default:
			return iothub.TwinPatch{}, &inputError{name, k.Line, fmt.Sprintf("unknown key %q (want tags, properties.desired or desired)", k.Value)}
		}
	}

	// The structure is known good; convert with the YAML→JSON rules of
	// sigs.k8s.io/yaml and keep numbers exact.
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		return iothub.TwinPatch{}, &inputError{name, 0, err.Error()}
	}
	var top struct {
		Tags       map[string]any `json:"tags"`
		Desired    map[string]any `json:"desired"`
		Properties struct {
			Desired map[string]any `json:"desired"`
		} `json:"properties"`
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.UseNumber()
	if err := dec.Decode(&top); err != nil {
		return iothub.TwinPatch{}, &inputError{name, 0, err.Error()}
	}
	p := iothub.TwinPatch{Tags: top.Tags, Desired: top.Desired}
	if p.Desired == nil {
		p.Desired = top.Properties.Desired
	}
	if p.Tags == nil && p.Desired == nil {
		return iothub.TwinPatch{}, &inputError{name, doc.Line, "nothing to patch: expected tags and/or properties.desired"}
	}
	return p, nil
}

// checkSection checks that a tags or desired section is a mapping whose
// keys, at every level, are valid twin keys.
func checkSection(file, at string, n *yamlv3.Node) error {
	if n.Kind != yamlv3.MappingNode {
		return &inputError{file, n.Line, fmt.Sprintf("%s: expected a mapping", at)}
	}
	return checkKeys(file, at, n)
}

func checkKeys(file, at string, n *yamlv3.Node) error {
	switch n.Kind {
	case yamlv3.MappingNode:
		if err := checkDuplicates(file, n); err != nil {
			return err
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i]
			if k.Kind == yamlv3.ScalarNode {
				switch {
				case k.Value == "":
					return &inputError{file, k.Line, fmt.Sprintf("%s: empty key", at)}
				case strings.ContainsAny(k.Value, ".$ "):
					return &inputError{file, k.Line, fmt.Sprintf("%s: key %q: twin keys may not contain '.', '$' or spaces", at, k.Value)}
				}
			}
			if err := checkKeys(file, at+"."+k.Value, n.Content[i+1]); err != nil {
				return err
			}
		}
	case yamlv3.SequenceNode:
		for _, c := range n.Content {
			if err := checkKeys(file, at+"[]", c); err != nil {
				return err
			}
		}
	}
	return nil
}

// checkDuplicates refuses a mapping that names a key twice (the node API
// of yaml.v3 does not).
func checkDuplicates(file string, n *yamlv3.Node) error {
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k := n.Content[i]
		if line, dup := seen[k.Value]; dup {
			return &inputError{file, k.Line, fmt.Sprintf("key %q given twice (also at line %d)", k.Value, line)}
		}
		seen[k.Value] = k.Line
	}
	return nil
}

// strictJSON holds a document that starts with '{' to the JSON grammar
// (YAML would accept, say, a trailing comma) and locates its errors.
func strictJSON(file string, data []byte) error {
	trimmed := bytes.TrimLeft(data, " \t\r\n")
	if len(trimmed) == 0 || trimmed[0] != '{' || json.Valid(data) {
		return nil
	}
	var v any
	err := json.Unmarshal(data, &v)
	var se *json.SyntaxError
	if errors.As(err, &se) {
		off := min(int(se.Offset), len(data))
		return &inputError{file, bytes.Count(data[:off], []byte("\n")) + 1, "invalid JSON: " + se.Error()}
	}
	return &inputError{file, 0, fmt.Sprintf("invalid JSON: %v", err)}
}
