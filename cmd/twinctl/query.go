package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"sort"
	"strconv"
)

func init() {
	register(&command{name: "query", args: `"SELECT …"`, nargs: 1, setup: query})
}

func query(fs *flag.FlagSet) runFunc {
	pageSize := fs.Int("page-size", 0, "rows per request (x-ms-max-item-count); 0 lets the hub choose")
	return func(ctx context.Context, c *cli, args []string) error {
		if *pageSize < 0 {
			return usagef("--page-size: must not be negative, got %d", *pageSize)
		}
		sc, err := c.client()
		if err != nil {
			return err
		}
		defer sc.Close()
		rows := []json.RawMessage{}
		for row, err := range sc.Query(ctx, args[0], *pageSize) {
			if err != nil {
				return err
			}
			rows = append(rows, row)
		}
		if ok, err := c.emit(rows); ok {
			return err
		}
		return renderRows(c, rows)
	}
}

// renderRows prints query results as a table: twins as a summary (ids,
// status, connection, version), other rows with a column per key.
func renderRows(c *cli, raw []json.RawMessage) error {
	rows := make([]map[string]any, 0, len(raw))
	for _, r := range raw {
		var m map[string]any
		if err := json.Unmarshal(r, &m); err != nil {
			// not an object: show it as the only column
			m = map[string]any{"value": json.RawMessage(r)}
		}
		rows = append(rows, m)
	}
	if len(rows) == 0 {
		_, err := fmt.Fprintln(c.stdout, "no results")
		return err
	}
	if _, twins := rows[0]["properties"].(map[string]any); twins {
		header := []string{"DEVICE", "MODULE", "STATUS", "CONNECTION", "VERSION"}
		var out [][]string
		for _, m := range rows {
			out = append(out, []string{str(m["deviceId"]), str(m["moduleId"]), str(m["status"]), str(m["connectionState"]), str(m["version"])})
		}
		return table(c.stdout, header, out)
	}
	seen := map[string]bool{}
	var keys []string
	for _, m := range rows {
		for k := range m {
			if !seen[k] {
				seen[k] = true
				keys = append(keys, k)
			}
		}
	}
	rank := func(k string) int {
		switch k {
		case "deviceId":
			return 0
		case "moduleId":
			return 1
		}
		return 2
	}
	sort.Slice(keys, func(i, j int) bool {
		if rank(keys[i]) != rank(keys[j]) {
			return rank(keys[i]) < rank(keys[j])
		}
		return keys[i] < keys[j]
	})
	var out [][]string
	for _, m := range rows {
		r := make([]string, len(keys))
		for i, k := range keys {
			if v, ok := m[k]; ok {
				r[i] = scalar(v)
			}
		}
		out = append(out, r)
	}
	return table(c.stdout, keys, out)
}

// str renders an optional field: "" when absent.
func str(v any) string {
	switch x := v.(type) {
	case nil:
		return ""
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64)
	}
	return scalar(v)
}
