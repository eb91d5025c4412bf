package main

import (
	"encoding/json"
	"errors"
	"testing"
)

func FuzzReadPatch(f *testing.F) {
	for _, s := range []string{
		"tags: {env: prod}\nproperties:\n  desired:\n    a: [1, {b: null}]\n",
		`{"desired": {"x": 1.5e3}, "tags": {"k": "v"}}`,
		"desired:\n  a: &x {b: 1}\n  c: *x\n",
		"tags:\n  a: 1\n  a: 2\n",
		"{\"tags\": {,}}",
		"- 1",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := readPatch("in.yaml", data)
		if err != nil {
			var ie *inputError
			if !errors.As(err, &ie) {
				t.Fatalf("error %T %v, want *inputError", err, err)
			}
			return
		}
		if p.Tags == nil && p.Desired == nil {
			t.Fatal("success without tags or desired")
		}
		if _, err := json.Marshal(p); err != nil {
			t.Fatalf("patch does not encode: %v", err)
		}
	})
}
