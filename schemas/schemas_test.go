package schemas

import (
	"strings"
	"testing"
)

func TestEverySchemaCompiles(t *testing.T) {
	if err := Check(); err != nil {
		t.Fatal(err)
	}
	if len(IDs()) < 2 || !Has(PolicyID) {
		t.Fatalf("ids = %v", IDs())
	}
}

func TestValidateLocates(t *testing.T) {
	probs, err := Validate(PolicyID, []byte(`{"apiVersion":"twinlet.dev/v1","kind":"DevicePolicy","metadata":{"name":"Bad Name","x":1},"spec":{}}`))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, p := range probs {
		got = append(got, p.Pointer+": "+p.Message)
	}
	s := strings.Join(got, "\n")
	if !strings.Contains(s, "/metadata/x: unknown field 'x'") {
		t.Errorf("unknown field not located at the field:\n%s", s)
	}
	if !strings.Contains(s, "/metadata/name: invalid value: The policy's name") {
		t.Errorf("pattern failure does not describe the value:\n%s", s)
	}
	if _, err := Validate("nope", []byte(`{}`)); err == nil {
		t.Error("unknown schema id accepted")
	}
}
