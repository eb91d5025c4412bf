package query

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
)

// twins decodes JSON documents as the hub has them.
func twins(t testing.TB, js string) []map[string]any {
	t.Helper()
	var docs []map[string]any
	if err := json.Unmarshal([]byte(js), &docs); err != nil {
		t.Fatal(err)
	}
	return docs
}

const fleet = `[
 {"deviceId":"d1","status":"enabled","connectionState":"Connected",
  "tags":{"env":"prod","site":"ams","floor":3,"canary":true},
  "properties":{"desired":{"hostname":{"name":"kiosk-1"}},
                "reported":{"hostname":{"__status":{"state":"Ready"}},"temp":21.5,"nothing":null}},
  "configurations":{"base-cfg":{"status":"Applied"}}},
 {"deviceId":"d2","status":"enabled","connectionState":"Disconnected",
  "tags":{"env":"test","site":"ams","floor":"3"},
  "properties":{"desired":{},"reported":{"hostname":{"__status":{"state":"Failed"}},"temp":30}},
  "configurations":{"base-cfg":{"status":"Targeted"}}},
 {"deviceId":"d3","status":"disabled","connectionState":"Disconnected",
  "tags":{"env":"prod","site":"fra"},
  "properties":{"desired":{},"reported":{}}},
 {"deviceId":"d4","status":"enabled","connectionState":"Connected",
  "properties":{"desired":{},"reported":{"hostname":{"__status":{"state":"Ready"}},"list":[1,2]}}}
]`

func matching(t *testing.T, q *Query, docs []map[string]any) string {
	t.Helper()
	var ids []string
	for _, d := range docs {
		if q.Match(d) {
			ids = append(ids, d["deviceId"].(string))
		}
	}
	return strings.Join(ids, ",")
}

func TestMatch(t *testing.T) {
	docs := twins(t, fleet)
	tests := []struct {
		where string
		want  string
	}{
		{"", "d1,d2,d3,d4"},
		{"WHERE deviceId = 'd1'", "d1"},
		{`WHERE deviceId = "d2"`, "d2"},
		{"where tags.env = 'prod'", "d1,d3"},
		{"WHERE tags.env != 'prod'", "d2"},    // d4 has no env: undefined
		{"WHERE tags.env <> 'prod'", "d2"},    // same operator
		{"WHERE tags.floor = 3", "d1"},        // d2's "3" is a string
		{"WHERE tags.floor != 3", ""},         // cross-type is undefined, not true
		{"WHERE NOT (tags.floor = 3)", ""},    // NOT undefined stays undefined
		{"WHERE NOT tags.env = 'prod'", "d2"}, // NOT applies to the whole comparison
		{"WHERE tags.floor >= 3", "d1"},
		{"WHERE properties.reported.temp > 21", "d1,d2"},
		{"WHERE properties.reported.temp > 21.5", "d2"},
		{"WHERE properties.reported.temp <= 21.5", "d1"},
		{"WHERE properties.reported.temp < 1e2", "d1,d2"},
		{"WHERE properties.reported.temp > -1", "d1,d2"},
		{"WHERE deviceId < 'd3'", "d1,d2"},
		{"WHERE deviceId >= 'd3'", "d3,d4"},
		{"WHERE tags.canary = true", "d1"},
		{"WHERE tags.canary", "d1"},
		{"WHERE tags.canary = false", ""},
		{"WHERE tags.canary < true", ""}, // booleans have no order
		{"WHERE properties.reported.nothing = null", "d1"},
		{"WHERE IS_NULL(properties.reported.nothing)", "d1"},
		{"WHERE IS_NULL(properties.reported.temp)", ""},
		{"WHERE is_defined(tags.env)", "d1,d2,d3"},
		{"WHERE NOT IS_DEFINED(tags.env)", "d4"},
		{"WHERE NOT IS_DEFINED(tags.env) OR tags.env != 'prod'", "d2,d4"},
		{"WHERE IS_DEFINED(properties.reported.nothing)", "d1"},
		{"WHERE IS_STRING(tags.floor)", "d2"},
		{"WHERE IS_NUMBER(tags.floor)", "d1"},
		{"WHERE IS_OBJECT(tags)", "d1,d2,d3"},
		{"WHERE IS_ARRAY(properties.reported.list)", "d4"},
		{"WHERE STARTSWITH(tags.site, 'am')", "d1,d2"},
		{"WHERE ENDSWITH(deviceId, '4')", "d4"},
		{"WHERE CONTAINS(tags.site, 'r')", "d3"},
		{"WHERE tags.env = 'prod' AND status = 'enabled'", "d1"},
		{"WHERE tags.env = 'test' OR status = 'disabled'", "d2,d3"},
		{"WHERE tags.env = 'prod' AND (status = 'disabled' OR connectionState = 'Connected')", "d1,d3"},
		{"WHERE tags.env = 'prod' AND status = 'disabled' OR connectionState = 'Connected'", "d1,d3,d4"},
		{"WHERE (tags.env = 'prod' OR tags.env = 'test') AND NOT (tags.site = 'fra')", "d1,d2"},
		{"WHERE NOT NOT deviceId = 'd1'", "d1"},
		// Undefined is absorbed by OR true and AND false.
		{"WHERE tags.missing = 1 OR deviceId = 'd4'", "d4"},
		{"WHERE NOT (tags.missing = 1 AND deviceId = 'd4')", "d1,d2,d3"},
		{"WHERE deviceId IN ['d1', 'd3', 7]", "d1,d3"},
		{"WHERE deviceId NIN ['d1', 'd3']", "d2,d4"},
		{"WHERE deviceId NOT IN ['d1', 'd3']", "d2,d4"},
		{"WHERE tags.env NIN ['prod']", "d2"}, // undefined env stays out
		{"WHERE tags.floor IN [3]", "d1"},
		{"WHERE tags.floor IN []", ""},
		{"WHERE properties.reported.hostname.__status.state = 'Ready'", "d1,d4"},
		{"WHERE configurations.[[base-cfg]].status = 'Applied'", "d1"},
		{"WHERE configurations.[[base-cfg]].status IN ['Applied', 'Targeted']", "d1,d2"},
		{"WHERE 'Ready' = properties.reported.hostname.__status.state", "d1,d4"},
		{"WHERE properties.reported.temp = properties.reported.temp", "d1,d2"},
		{"WHERE tags = tags", "d1,d2,d3"},
		{"WHERE properties.reported.list = properties.reported.list", "d4"},
		{"WHERE tags.site = 'ams' AND tags.env = 'test'\n", "d2"},
		{"WHERE true", "d1,d2,d3,d4"},
		{"WHERE false OR deviceId = 'd2'", "d2"},
		{"WHERE properties.reported.temp", ""}, // not a boolean
	}
	for _, tt := range tests {
		t.Run(tt.where, func(t *testing.T) {
			q, err := Parse("SELECT * FROM devices " + tt.where)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if got := matching(t, q, docs); got != tt.want {
				t.Errorf("matched %q, want %q", got, tt.want)
			}
		})
	}
}

func TestStringEscapes(t *testing.T) {
	doc := map[string]any{"tags": map[string]any{"s": `it's "x" \ é`}}
	for _, q := range []string{
		`SELECT * FROM devices WHERE tags.s = 'it\'s "x" \\ é'`,
		`SELECT * FROM devices WHERE tags.s = "it's \"x\" \\ \u00e9"`,
	} {
		pq, err := Parse(q)
		if err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		if !pq.Match(doc) {
			t.Errorf("%s: no match", q)
		}
	}
}

func TestFrom(t *testing.T) {
	tests := []struct{ q, from string }{
		{"SELECT * FROM devices", "devices"},
		{"select * from Devices", "devices"},
		{"SELECT * FROM devices.modules", "devices.modules"},
		{"SELECT * FROM DEVICES.MODULES WHERE moduleId = 'twinlet'", "devices.modules"},
	}
	for _, tt := range tests {
		q, err := Parse(tt.q)
		if err != nil {
			t.Fatalf("%s: %v", tt.q, err)
		}
		if q.From != tt.from {
			t.Errorf("%s: From = %q, want %q", tt.q, q.From, tt.from)
		}
	}
}

func TestProject(t *testing.T) {
	docs := twins(t, fleet)
	tests := []struct {
		q    string
		doc  int
		want string
	}{
		{"SELECT deviceId FROM devices", 0, `{"deviceId":"d1"}`},
		{"SELECT deviceId, status FROM devices", 2, `{"deviceId":"d3","status":"disabled"}`},
		{"SELECT deviceId, properties.reported.hostname.__status.state FROM devices", 0,
			`{"deviceId":"d1","state":"Ready"}`},
		{"SELECT deviceId AS id, properties.reported.hostname.__status.state AS hostname FROM devices", 2,
			`{"id":"d3"}`}, // undefined paths are left out
		{"SELECT tags FROM devices", 2, `{"tags":{"env":"prod","site":"fra"}}`},
		{"SELECT properties.reported.nothing FROM devices", 0, `{"nothing":null}`},
		{"SELECT configurations.[[base-cfg]].status AS s FROM devices", 1, `{"s":"Targeted"}`},
		{"SELECT TOP 2 deviceId FROM devices", 3, `{"deviceId":"d4"}`},
	}
	for _, tt := range tests {
		t.Run(tt.q, func(t *testing.T) {
			q, err := Parse(tt.q)
			if err != nil {
				t.Fatal(err)
			}
			if q.IsAggregate() || q.SelectAll() {
				t.Fatalf("IsAggregate = %t, SelectAll = %t", q.IsAggregate(), q.SelectAll())
			}
			got, _ := json.Marshal(q.Project(docs[tt.doc]))
			if string(got) != tt.want {
				t.Errorf("got %s, want %s", got, tt.want)
			}
		})
	}

	q, err := Parse("SELECT * FROM devices")
	if err != nil {
		t.Fatal(err)
	}
	if got := q.Project(docs[1]); !reflect.DeepEqual(got, docs[1]) {
		t.Errorf("SELECT * changed the document: %v", got)
	}
	if q.Top() != 0 || !q.SelectAll() {
		t.Errorf("Top = %d, SelectAll = %t", q.Top(), q.SelectAll())
	}
	q, err = Parse("select top 5 * from devices")
	if err != nil {
		t.Fatal(err)
	}
	if q.Top() != 5 {
		t.Errorf("Top = %d, want 5", q.Top())
	}
}

func TestAggregate(t *testing.T) {
	docs := twins(t, fleet)
	tests := []struct {
		q    string
		want string
	}{
		{"SELECT COUNT() AS n FROM devices", `[{"n":4}]`},
		{"SELECT COUNT() FROM devices", `[{"$1":4}]`},
		{"SELECT count() as total FROM devices WHERE tags.env = 'prod'", `[{"total":2}]`},
		{"SELECT COUNT() AS n FROM devices WHERE deviceId = 'nope'", `[{"n":0}]`},
		{"SELECT COUNT() AS n FROM devices WHERE configurations.[[base-cfg]].status = 'Applied'", `[{"n":1}]`},
		{"SELECT COUNT() AS a, COUNT() FROM devices", `[{"$1":4,"a":4}]`},
		{"SELECT properties.reported.hostname.__status.state AS state, COUNT() AS n FROM devices GROUP BY properties.reported.hostname.__status.state",
			`[{"n":2,"state":"Ready"},{"n":1,"state":"Failed"},{"n":1}]`},
		{"SELECT tags.env, tags.site, COUNT() AS n FROM devices WHERE IS_DEFINED(tags.env) GROUP BY tags.env, tags.site",
			`[{"env":"prod","n":1,"site":"ams"},{"env":"test","n":1,"site":"ams"},{"env":"prod","n":1,"site":"fra"}]`},
		{"SELECT tags.floor, COUNT() AS n FROM devices WHERE IS_DEFINED(tags.floor) GROUP BY tags.floor",
			`[{"floor":3,"n":1},{"floor":"3","n":1}]`}, // 3 and "3" are different groups
		{"SELECT status FROM devices GROUP BY status", `[{"status":"enabled"},{"status":"disabled"}]`},
		{"SELECT COUNT() AS n FROM devices WHERE deviceId = 'x' GROUP BY status", `[]`},
	}
	for _, tt := range tests {
		t.Run(tt.q, func(t *testing.T) {
			q, err := Parse(tt.q)
			if err != nil {
				t.Fatal(err)
			}
			if !q.IsAggregate() {
				t.Fatal("IsAggregate = false")
			}
			got, _ := json.Marshal(q.Aggregate(docs))
			if string(got) != tt.want {
				t.Errorf("got %s\nwant %s", got, tt.want)
			}
		})
	}
	q, _ := Parse("SELECT * FROM devices")
	if rows := q.Aggregate(docs); rows != nil {
		t.Errorf("Aggregate on a non-aggregate query = %v, want nil", rows)
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		q       string
		pos     int
		msg     string // a substring of Error()
		lineCol string
	}{
		{"", 0, "expected SELECT", "line 1, column 1"},
		{"DELETE FROM devices", 0, "expected SELECT at the start of the query, found 'DELETE'", "line 1, column 1"},
		{"SELECT", 6, "expected '*', COUNT() or a path after SELECT, found end of query", "line 1, column 7"},
		{"SELECT * devices", 9, "expected FROM after the SELECT list", "line 1, column 10"},
		{"SELECT * FROM", 13, "expected a collection after FROM", ""},
		{"SELECT * FROM devices.jobs", 14, `unsupported collection "devices.jobs"`, ""},
		{"SELECT * FROM twins", 14, "unsupported collection", ""},
		{"SELECT * FROM devices WHERE tags.location =", 43, "expected value after '=', found end of query", "line 1, column 44"},
		{"SELECT * FROM devices WHERE tags.x = 'a", 37, "unterminated string", ""},
		{"SELECT * FROM devices WHERE tags.x = 'a' AND", 44, "expected a condition", ""},
		{"SELECT * FROM devices WHERE (tags.x = 1", 39, "expected ')' to close '('", ""},
		{"SELECT * FROM devices WHERE tags.x IN ('a')", 38, "expected '[' after IN", ""},
		{"SELECT * FROM devices WHERE tags.x IN ['a' 'b']", 43, "expected ',' or ']' in the IN list", ""},
		{"SELECT * FROM devices WHERE tags.x IN [tags.y]", 39, "expected a literal value in the IN list", ""},
		{"SELECT * FROM devices WHERE tags.x = 'a' extra", 41, "unexpected 'extra'", ""},
		{"SELECT * FROM devices WHERE tags.x = 'it''s'", 41, "unexpected", ""},
		{"SELECT * FROM devices WHERE tags. = 1", 34, "expected a property name after '.'", ""},
		{"SELECT * FROM devices WHERE configurations.[[x.status = 1", 43, "unterminated '[['", ""},
		{"SELECT * FROM devices WHERE tags.x # 1", 35, "unexpected character '#'", ""},
		{"SELECT * FROM devices WHERE FOO(tags.x)", 28, "unknown function FOO", ""},
		{"SELECT * FROM devices WHERE IS_DEFINED()", 28, "IS_DEFINED takes 1 argument(s), got 0", ""},
		{"SELECT * FROM devices WHERE IS_DEFINED('x')", 28, "takes a path", ""},
		{"SELECT * FROM devices WHERE tags.x = 1x", 37, "invalid number", ""},
		{"SELECT * FROM devices WHERE tags.x = 1e", 37, "missing exponent", ""},
		{"SELECT * FROM devices WHERE tags.x = 'a\\q'", 39, `invalid escape '\q'`, ""},
		{"SELECT COUNT(x) FROM devices", 13, "COUNT takes no arguments", ""},
		{"SELECT COUNT() AS FROM devices", 18, "expected a name after AS", ""},
		{"SELECT deviceId, COUNT() AS n FROM devices", 7, "deviceId must appear in GROUP BY", ""},
		{"SELECT * FROM devices GROUP BY status", 7, "SELECT * cannot be used with GROUP BY", ""},
		{"SELECT tags.x, properties.desired.x FROM devices", 15, `duplicate column name "x"`, ""},
		{"SELECT TOP 0 * FROM devices", 11, "positive whole number after TOP", ""},
		{"SELECT TOP 1.5 * FROM devices", 11, "positive whole number after TOP", ""},
		{"SELECT * FROM devices GROUP status", 28, "expected BY after GROUP", ""},
		{"SELECT *\nFROM devices\nWHERE tags.é = 1", 33, "unexpected character 'é'", "line 3, column 12"},
		{"SELECT *\nFROM devices\nWHERE 'é' = ", 35, "expected value after '='", "line 3, column 13"},
	}
	for _, tt := range tests {
		t.Run(tt.q, func(t *testing.T) {
			_, err := Parse(tt.q)
			var se *SyntaxError
			if !errors.As(err, &se) {
				t.Fatalf("err = %v, want *SyntaxError", err)
			}
			if se.Pos != tt.pos {
				t.Errorf("Pos = %d, want %d (%v)", se.Pos, tt.pos, err)
			}
			if !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("Error() = %q, want it to contain %q", err, tt.msg)
			}
			if tt.lineCol != "" && !strings.HasPrefix(err.Error(), tt.lineCol+": ") {
				t.Errorf("Error() = %q, want prefix %q", err, tt.lineCol)
			}
		})
	}
}

func TestSyntaxErrorWithoutSource(t *testing.T) {
	e := &SyntaxError{Pos: 3, Msg: "boom"}
	if got := e.Error(); got != "offset 3: boom" {
		t.Errorf("Error() = %q", got)
	}
}

func TestJSONNumbers(t *testing.T) {
	dec := json.NewDecoder(strings.NewReader(`{"tags":{"n":10}}`))
	dec.UseNumber()
	var doc map[string]any
	if err := dec.Decode(&doc); err != nil {
		t.Fatal(err)
	}
	q, err := Parse("SELECT * FROM devices WHERE tags.n > 9.5 AND tags.n IN [10]")
	if err != nil {
		t.Fatal(err)
	}
	if !q.Match(doc) {
		t.Error("json.Number 10 does not match > 9.5 AND IN [10]")
	}
	if !q.Match(map[string]any{"tags": map[string]any{"n": 10}}) {
		t.Error("int 10 does not match")
	}
}
