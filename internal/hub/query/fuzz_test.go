package query

import (
	"encoding/json"
	"errors"
	"testing"
)

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"SELECT * FROM devices",
		"SELECT deviceId, properties.reported.hostname.__status.state AS s FROM devices WHERE tags.env = 'prod'",
		"SELECT COUNT() AS n FROM devices WHERE configurations.[[cfg1]].status = 'Applied'",
		"SELECT tags.env, COUNT() FROM devices.modules WHERE NOT (a.b IN [1, 'x', true, null]) GROUP BY tags.env",
		`select top 3 * from devices where IS_DEFINED(a) or STARTSWITH(b, "c\u00e9") and x <> -1.5e3`,
		"SELECT * FROM devices WHERE a.b NIN ['x'] AND (c >= .5 OR d < 'z')",
		"SELECT * FROM devices WHERE tags.x = 'a",
		"SELECT * FROM devices WHERE configurations.[[x",
	} {
		f.Add(s)
	}
	var docs []map[string]any
	if err := json.Unmarshal([]byte(fleet), &docs); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, s string) {
		q, err := Parse(s)
		if err != nil {
			var se *SyntaxError
			if !errors.As(err, &se) {
				t.Fatalf("Parse(%q) error %T %v, want *SyntaxError", s, err, err)
			}
			if se.Pos < 0 || se.Pos > len(s) {
				t.Fatalf("Parse(%q): Pos %d outside [0,%d]", s, se.Pos, len(s))
			}
			_ = se.Error()
			return
		}
		if q.From != "devices" && q.From != "devices.modules" {
			t.Fatalf("Parse(%q): From = %q", s, q.From)
		}
		for _, d := range docs {
			q.Match(d)
			q.Project(d)
		}
		if q.IsAggregate() {
			q.Aggregate(docs)
		}
	})
}
