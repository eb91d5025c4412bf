package schemas

import (
	"reflect"
	"testing"
)

// FuzzCompileValidate: a third-party provider's schema and any document
// never make the validator panic or loop, and the same input always gives
// the same problems.
func FuzzCompileValidate(f *testing.F) {
	for _, k := range keywordSchemas {
		for _, seed := range k.seeds {
			f.Add([]byte(k.schema), []byte(seed))
		}
	}
	f.Add([]byte(`{"$ref":"#"}`), []byte(`{}`))
	f.Add([]byte(`{"$defs":{"a":{"items":{"$ref":"#/$defs/a"}}},"$ref":"#/$defs/a"}`), []byte(`[[[[]]]]`))
	f.Fuzz(func(t *testing.T, schema, doc []byte) {
		s, err := Compile("fuzz", schema)
		if err != nil {
			return
		}
		a, err := s.Validate(doc)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := s.Validate(doc)
		if !reflect.DeepEqual(a, b) {
			t.Fatalf("two runs differ: %v and %v", a, b)
		}
	})
}
