package dps

import (
	"testing"
)

// FuzzParseOperation: whatever the service (or something in between)
// answers, parsing never panics, and an assignment always carries its
// registration state while a pending operation carries its id.
func FuzzParseOperation(f *testing.F) {
	for _, s := range []string{
		assigned,
		`{"operationId":"op","status":"assigning"}`,
		`{"operationId":"o","status":"failed","registrationState":{"status":"failed","errorCode":400208}}`,
		`{"registrationState":{"status":"assigned"}}`,
		`{"status":"assigned"}`, `{}`, `null`, `[]`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		op, final, err := parseOperation(body)
		if err != nil {
			return
		}
		if final && op.RegistrationState == nil {
			t.Fatal("final without a registration state")
		}
		if !final && op.OperationID == "" {
			t.Fatal("pending without an operation id")
		}
	})
}

// FuzzCheckRegistrationID: the id check never panics and accepts only
// what the service allows.
func FuzzCheckRegistrationID(f *testing.F) {
	for _, s := range []string{"dev-1", "a.b_c:d-", "", "x.", "ä"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		if CheckRegistrationID(id) != nil {
			return
		}
		if len(id) == 0 || len(id) > 128 {
			t.Fatalf("accepted %q", id)
		}
		for _, r := range id {
			if r > 127 || r == ' ' || r == '/' {
				t.Fatalf("accepted %q", id)
			}
		}
	})
}
