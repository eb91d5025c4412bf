package main

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"

	"sigs.k8s.io/yaml"
)

// emit writes v as JSON or YAML when --output asks for it and reports
// whether it did; for the table format the caller renders itself.
func (c *cli) emit(v any) (bool, error) {
	switch c.g.output {
	case "json":
		b, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			return true, fmt.Errorf("render json: %w", err)
		}
		_, err = fmt.Fprintf(c.stdout, "%s\n", b)
		return true, err
	case "yaml":
		j, err := json.Marshal(v)
		if err != nil {
			return true, fmt.Errorf("render yaml: %w", err)
		}
		b, err := yaml.JSONToYAML(j)
		if err != nil {
			return true, fmt.Errorf("render yaml: %w", err)
		}
		_, err = c.stdout.Write(b)
		return true, err
	}
	return false, nil
}

// table writes rows under a header, aligned in columns.
func table(w io.Writer, header []string, rows [][]string) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		cells := make([]string, len(r))
		for i, s := range r {
			cells[i] = cell(s)
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	return tw.Flush()
}

// cell makes a value safe for one table cell: one line, no tabs, "-" when
// empty.
func cell(s string) string {
	if s == "" {
		return "-"
	}
	return strings.NewReplacer("\t", " ", "\n", `\n`, "\r", `\r`).Replace(s)
}

// scalar renders a JSON value for a table: strings bare, everything else
// as compact JSON.
func scalar(v any) string {
	switch x := v.(type) {
	case nil:
		return "null"
	case string:
		return x
	}
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}

// flatten lists the leaves of a JSON object as dotted paths, in order,
// skipping "$metadata". Empty objects are leaves.
func flatten(prefix string, m map[string]any, out *[][2]string) {
	keys := make([]string, 0, len(m))
	for k := range m {
		if k == "$metadata" {
			continue
		}
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		p := k
		if prefix != "" {
			p = prefix + "." + k
		}
		if sub, ok := m[k].(map[string]any); ok && len(sub) > 0 {
			flatten(p, sub, out)
			continue
		}
		*out = append(*out, [2]string{p, scalar(m[k])})
	}
}
