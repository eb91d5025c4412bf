package schemas

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v5"

	"github.com/twinlet/twinlet/internal/testutil"
)

// A general-purpose JSON Schema library (test-only: it is not in the
// binaries) is the reference: on every embedded schema and on schemas
// that use each supported keyword, over valid documents and every
// one-change mutation of them, ours must accept exactly what it accepts.

// reference compiles raw with the library.
func reference(t *testing.T, name string, raw []byte) *jsonschema.Schema {
	t.Helper()
	c := jsonschema.NewCompiler()
	c.Draft = jsonschema.Draft2020
	u := "https://twinlet.dev/test/" + name + ".json"
	if err := c.AddResource(u, bytes.NewReader(raw)); err != nil {
		t.Fatal(err)
	}
	s, err := c.Compile(u)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return s
}

// keywordSchemas use what no embedded schema does, or in other ways.
var keywordSchemas = map[string]struct {
	schema string
	seeds  []string
}{
	"numbers": {`{"type":"object","properties":{
		"a":{"type":"number","minimum":-1.5,"maximum":10},
		"b":{"type":"integer","exclusiveMinimum":0,"exclusiveMaximum":100,"multipleOf":5},
		"c":{"multipleOf":0.01},
		"d":{"enum":[1,2.0,"x",null,[1],{"k":1}]},
		"e":{"const":{"a":[1,2]}}}}`,
		[]string{`{"a":1,"b":5,"c":0.25,"d":2,"e":{"a":[1,2]}}`, `{"a":-1.5,"b":95,"c":3,"d":{"k":1}}`}},
	"patterns": {`{"type":"object","patternProperties":{"^x-":{"type":"string"},"^[a-z]+$":{"type":"integer"}},
		"additionalProperties":{"type":"boolean"},"propertyNames":{"maxLength":8},
		"dependentRequired":{"from":["to"]},"minProperties":1,"maxProperties":4}`,
		[]string{`{"x-a":"s","abc":1,"B":true}`, `{"from":1,"to":2}`}},
	"arrays": {`{"type":"array","prefixItems":[{"type":"string"},{"type":"integer"}],"items":{"type":"boolean"},
		"minItems":1,"maxItems":4,"uniqueItems":true}`,
		[]string{`["a",1,true,false]`, `["a"]`}},
	"logic": {`{"$defs":{"pos":{"type":"integer","minimum":1}},
		"oneOf":[{"$ref":"#/$defs/pos"},{"type":"string","pattern":"^[0-9]+$"},{"type":"integer","maximum":3}],
		"not":{"const":"13"}}`,
		[]string{`7`, `"42"`, `-4`}},
	"conditional": {`{"type":"object","if":{"properties":{"kind":{"const":"file"}},"required":["kind"]},
		"then":{"required":["path"]},"else":{"properties":{"path":false}},
		"anyOf":[{"required":["kind"]},{"required":["name"]}],
		"allOf":[{"properties":{"name":{"type":"string","minLength":2}}}],
		"dependentSchemas":{"mode":{"properties":{"mode":{"pattern":"^0[0-7]{3}$"}}}}}`,
		[]string{`{"kind":"file","path":"/x","mode":"0644"}`, `{"kind":"dir","name":"ab"}`, `{"name":"xy"}`}},
	"recursive": {`{"type":"object","properties":{"name":{"type":"string"},"children":{"type":"array","items":{"$ref":"#"}}},
		"required":["name"],"additionalProperties":false}`,
		[]string{`{"name":"a","children":[{"name":"b","children":[{"name":"c"}]}]}`}},
	"booleans": {`{"properties":{"yes":true,"no":false},"items":false}`, []string{`{"yes":[1]}`, `[]`, `"s"`}},
}

// extraSeeds are valid documents of the embedded schemas that have no
// examples.
var extraSeeds = map[string][]string{
	"commands":     {`{"definitions": {"restart-kiosk": {"argv": ["systemctl", "restart", "kiosk"], "user": "kiosk", "workingDir": "/srv", "timeout": "1m30s", "env": {"A": "b"}, "maxOutput": 1024, "chroot": false}}, "runs": {"c-1": {"name": "restart-kiosk"}}, "cloudAllow": ["restart-*"], "results": {"keep": 5, "report": 2, "reportOutput": 64}, "reportingMode": "minimal"}`},
	"fleetconfig":  {`{"apiVersion": "twinlet.dev/v1", "kind": "FleetConfig", "metadata": {"name": "base"}, "spec": {"targetCondition": "*", "priority": 5, "sections": {"hostname": {"name": "a"}}, "rollout": {"maxFailed": "5%", "stages": [{"name": "canary", "target": "tags.ring='canary'", "minReady": 90}]}}}`},
	"enrollment":   {`{"apiVersion": "twinlet.dev/v1", "kind": "Enrollment", "metadata": {"name": "dev-1"}, "spec": {"attestation": {"type": "symmetricKey"}, "iotHubs": ["a.azure-devices.net"]}}`},
	"policy":       {`{"apiVersion": "twinlet.dev/v1", "kind": "DevicePolicy", "metadata": {"name": "base"}, "spec": {"mode": "enforce", "hostname": {"name": "kiosk"}}}`},
	"deviceconfig": {`{"apiVersion": "twinlet.dev/v1", "kind": "DeviceConfig", "metadata": {"name": "dev-1"}, "spec": {"tags": {"ring": "canary"}, "desired": {"hostname": {"name": "a"}}}}`},
}

func TestAgreesWithReference(t *testing.T) {
	type target struct {
		name  string
		raw   []byte
		seeds []string
	}
	var targets []target
	for _, id := range IDs() {
		raw, _ := Raw(id)
		var s struct{ Examples []json.RawMessage }
		if err := json.Unmarshal(raw, &s); err != nil {
			t.Fatal(err)
		}
		tg := target{name: id, raw: raw, seeds: extraSeeds[id]}
		for _, ex := range s.Examples {
			tg.seeds = append(tg.seeds, string(ex))
		}
		targets = append(targets, tg)
	}
	for name, k := range keywordSchemas {
		targets = append(targets, target{name: name, raw: []byte(k.schema), seeds: k.seeds})
	}
	sort.Slice(targets, func(i, j int) bool { return targets[i].name < targets[j].name })

	docs, invalid := 0, 0
	for _, tg := range targets {
		ref := reference(t, tg.name, tg.raw)
		ours, err := Compile(tg.name, tg.raw)
		if err != nil {
			t.Fatal(err)
		}
		if len(tg.seeds) == 0 && tg.name != "defs" {
			t.Errorf("%s: no example to mutate", tg.name)
		}
		for _, seed := range tg.seeds {
			var v any
			if err := json.Unmarshal([]byte(seed), &v); err != nil {
				t.Fatalf("%s seed %s: %v", tg.name, seed, err)
			}
			if probs, err := ours.Validate([]byte(seed)); err != nil || probs != nil {
				t.Errorf("%s: seed %s is not valid: %v %v", tg.name, seed, probs, err)
			}
			for _, m := range append([]any{v}, testutil.Mutations(v, mutationValues)...) {
				doc, _ := json.Marshal(m)
				docs++
				probs, err := ours.Validate(doc)
				if err != nil {
					t.Fatal(err)
				}
				var rv any
				dec := json.NewDecoder(bytes.NewReader(doc))
				dec.UseNumber()
				if err := dec.Decode(&rv); err != nil {
					t.Fatal(err)
				}
				refErr := ref.Validate(rv)
				if (len(probs) == 0) != (refErr == nil) {
					t.Errorf("%s %s:\n  ours: %v\n  reference: %v", tg.name, doc, probs, refErr)
				}
				if len(probs) > 0 {
					invalid++
				}
				for _, p := range probs {
					if (p.Pointer != "" && p.Pointer[0] != '/') || p.Message == "" {
						t.Errorf("%s %s: bad problem %+v", tg.name, doc, p)
					}
				}
			}
		}
	}
	if invalid == 0 || invalid == docs {
		t.Fatalf("%d of %d documents invalid: the mutations must give both", invalid, docs)
	}
	t.Logf("%d documents over %d schemas, %d invalid", docs, len(targets), invalid)
}

// mutationValues are what each place of a seed is replaced by.
var mutationValues = []any{"", "x", "13", "Bad_Value!", "/abs/path", "a/../b", strings.Repeat("a", 300), "é", 0.0, -1.0, 1.5, 5.0, 1e9, 0.3,
	true, false, nil, []any{}, []any{"x"}, []any{"x", "x"}, []any{1.0, true}, map[string]any{}, map[string]any{"k": 1.0}}

// TestCompileRefuses: a schema this validator would enforce less than it
// says, or that is not a schema, is refused with the location.
func TestCompileRefuses(t *testing.T) {
	for _, c := range []struct{ schema, want string }{
		{`{"properties":{"a":{"unevaluatedProperties":false}}}`, "/properties/a/unevaluatedProperties: keyword unevaluatedProperties is not supported"},
		{`{"contains":{"type":"string"}}`, "/contains: keyword contains"},
		{`{"items":[{"type":"string"}]}`, "/items: items must be a schema"},
		{`{"dependencies":{"a":["b"]}}`, "dependentRequired"},
		{`{"$schema":"http://json-schema.org/draft-07/schema#"}`, "/$schema: \"http://json-schema.org/draft-07/schema#\" is not supported"},
		{`{"$ref":"other.json#/x"}`, "/$ref: only a $ref within the schema"},
		{`{"$ref":"#/$defs/missing"}`, "/$ref: \"#/$defs/missing\" does not point to a subschema"},
		{`{"$defs":{"a":{"type":"strng"}}}`, "/$defs/a/type: \"strng\" is not a JSON Schema type"},
		{`{"properties":{"a":{"pattern":"(["}}}`, "/properties/a/pattern: not a regular expression"},
		{`{"patternProperties":{"(":{}}}`, "/patternProperties/(: not a regular expression"},
		{`{"minLength":-1}`, "/minLength: minLength must be a non-negative integer"},
		{`{"maxItems":1.5}`, "/maxItems: maxItems must be a non-negative integer"},
		{`{"multipleOf":0}`, "/multipleOf: multipleOf must be greater than 0"},
		{`{"required":["a","a"]}`, "/required/1: required must be an array of distinct strings"},
		{`{"anyOf":[]}`, "/anyOf: anyOf must be a non-empty array of schemas"},
		{`{"properties":{"a":3}}`, "/properties/a: a schema must be an object or a boolean, not integer"},
		{`{"properties":{"a":{"$id":"x"}}}`, "/properties/a/$id: $id is allowed only at the root"},
		{`[]`, "/: a schema must be an object or a boolean, not array"},
		{`{"type":"object"} {}`, "more than one JSON value"},
		{`{"type":`, "not JSON"},
	} {
		_, err := Compile("test", []byte(c.schema))
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.HasPrefix(err.Error(), "schema test: ") {
			t.Errorf("%s: err = %v, want %q", c.schema, err, c.want)
		}
	}
	// What is only an annotation, or unknown, is not refused.
	for _, ok := range []string{
		`{"$schema":"https://json-schema.org/draft/2020-12/schema","$id":"https://x/y.json","$comment":"c","title":"t","description":"d",` +
			`"default":1,"examples":[1],"deprecated":true,"readOnly":true,"writeOnly":false,"format":"date-time","x-vendor":{"a":1}}`,
		`{"$schema":"https://json-schema.org/draft/2020-12/schema#"}`,
		`true`, `false`,
	} {
		if _, err := Compile("test", []byte(ok)); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
}

// TestMessages pins the messages, which are the console's (schema.js).
func TestMessages(t *testing.T) {
	s, err := Compile("m", []byte(`{"type":"object","required":["name","id"],"additionalProperties":false,"properties":{
		"name":{"type":"string","pattern":"^[a-z]+$","description":"A lower-case name. Letters only."},
		"tag":{"type":"string","pattern":"^t"},
		"size":{"type":"integer","minimum":1,"maximum":9},
		"mode":{"enum":["a","b"]},"list":{"type":"array","maxItems":1,"uniqueItems":true},
		"path~/x":{"type":"string","maxLength":2}}}`))
	if err != nil {
		t.Fatal(err)
	}
	probs, err := s.Validate([]byte(`{"name":"Bad","tag":"x","size":0.5,"mode":"c","list":[1,1],"path~/x":"abc","extra":1}`))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, p := range probs {
		got = append(got, p.Pointer+": "+p.Message)
	}
	want := []string{
		": missing 'id'",
		"/extra: unknown field 'extra'",
		"/list: at most 1 items",
		"/list: items 0 and 1 are equal",
		"/mode: must be one of \"a\", \"b\"",
		"/name: invalid value: A lower-case name",
		"/path~0~1x: at most 2 characters, got 3",
		"/size: expected integer, got number",
		"/tag: invalid value (does not match ^t)",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if p, _ := s.Validate([]byte(`{"name":`)); len(p) != 1 || !strings.HasPrefix(p[0].Message, "not JSON") {
		t.Errorf("truncated document: %v", p)
	}
	cyc, err := Compile("cycle", []byte(`{"$defs":{"a":{"$ref":"#/$defs/b"},"b":{"$ref":"#/$defs/a"}},"$ref":"#/$defs/a"}`))
	if err != nil {
		t.Fatal(err)
	}
	if p, _ := cyc.Validate([]byte(`1`)); len(p) != 1 || !strings.Contains(p[0].Message, "$ref cycle") {
		t.Errorf("a $ref cycle: %v", p)
	}
	// Branches under a recursive $ref: exponential in the depth of the
	// document, stopped by the step budget.
	exp, err := Compile("exp", []byte(`{"oneOf":[{"items":{"$ref":"#"}},{"items":{"$ref":"#"}}]}`))
	if err != nil {
		t.Fatal(err)
	}
	deep := strings.Repeat("[", 40) + strings.Repeat("]", 40)
	p, _ := exp.Validate([]byte(deep))
	if !strings.Contains(fmt.Sprint(p), "{ validation stopped: the schema takes more than") {
		t.Errorf("an exponential schema: %v", p)
	}
}
