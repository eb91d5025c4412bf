package providers

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
)

func TestRegisterRefusesIncompleteMethods(t *testing.T) {
	call := func(context.Context, *Env, json.RawMessage) (any, error) { return nil, nil }
	for _, tc := range []struct {
		m    map[string]Method
		want string
	}{
		{map[string]Method{"get": {Call: call}}, "method x.get has no payload Schema"},
		{map[string]Method{"get": {Schema: json.RawMessage(`{}`)}}, "method x.get has no Call"},
		{map[string]Method{"a.b": {Schema: json.RawMessage(`{}`), Call: call}}, "must be a plain word"},
	} {
		func() {
			defer func() {
				if v := recover(); v == nil || !strings.Contains(v.(string), tc.want) {
					t.Errorf("panic = %v, want %q", v, tc.want)
				}
			}()
			Register(Info{ID: "x", New: func() Provider { return nil }, Methods: tc.m})
		}()
	}
	if _, ok := Lookup("x"); ok {
		t.Fatal("an incomplete provider was registered")
	}
}
