package standard

import (
	"encoding/json"
	"testing"

	"github.com/twinlet/twinlet/providers"
	"github.com/twinlet/twinlet/providers/providertest"
	"github.com/twinlet/twinlet/schemas"
)

// TestAccountSchemas checks the users and groups schemas the way
// TestSchemas checks the others (in a file of their own, so that
// branches adding providers do not edit the same lines): documents they
// accept decode in the provider, documents they reject are located, and
// every property is described.
func TestAccountSchemas(t *testing.T) {
	const key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHbPCaZAYsz2TUv97U4NLN5/QPn5uwc1jwpj9XVFkZ/G alice@laptop"
	for _, tc := range []struct {
		id, doc string
		valid   bool
		ptr     string
	}{
		{"groups", `{"prune": true, "reportingMode": "minimal", "docker": {"gid": 2000, "members": ["alice"]}, "k": {"name": "kiosk.x", "system": true}, "old": {"ensure": "absent"}}`, true, ""},
		{"groups", `{"docker": {"gid": -1}}`, false, "/docker/gid"},
		{"groups", `{"docker": {"members": ["Alice"]}}`, false, "/docker/members/0"},
		{"groups", `{"docker": {"owner": "x"}}`, false, "/docker/owner"},
		{"users", `{"prune": true, "alice": {"uid": 1001, "primaryGroup": "staff", "groups": ["docker"], "shell": "/bin/bash", "home": "/home/alice", "createHome": true, "authorizedKeys": ["` + key + `"], "passwordHash": "$6$salt$abc"}, "svc": {"name": "svc.app", "system": true}, "gone": {"ensure": "absent"}}`, true, ""},
		{"users", `{"alice": {"uid": "1001"}}`, false, "/alice/uid"},
		{"users", `{"alice": {"uid": 65535}}`, false, "/alice/uid"},
		{"users", `{"alice": {"uid": 100000}}`, true, ""},
		{"users", `{"alice": {"shell": "bash"}}`, false, "/alice/shell"},
		{"users", `{"alice": {"authorizedKeys": ["from=\"x\" ` + key + `"]}}`, false, "/alice/authorizedKeys/0"},
		{"users", `{"alice": {"passwordHash": "plain text"}}`, false, "/alice/passwordHash"},
		{"users", `{"alice": {"password": "x"}}`, false, "/alice/password"},
		{"users", `{"al.ice": {}}`, false, "/al.ice"},
	} {
		t.Run(tc.id+" "+tc.doc, func(t *testing.T) {
			problems, err := schemas.Validate(tc.id, []byte(tc.doc))
			if err != nil {
				t.Fatal(err)
			}
			if tc.valid {
				if len(problems) != 0 {
					t.Fatalf("problems %+v", problems)
				}
				info, ok := providers.Lookup(tc.id)
				if !ok {
					t.Fatalf("%s is not registered", tc.id)
				}
				if _, err := info.New().Decode(providertest.NewEnv(t), json.RawMessage(tc.doc)); err != nil {
					t.Fatalf("schema-valid section does not decode: %v", err)
				}
				return
			}
			for _, p := range problems {
				if p.Pointer == tc.ptr {
					return
				}
			}
			t.Fatalf("want a problem at %q, got %+v", tc.ptr, problems)
		})
	}
	for _, id := range []string{"groups", "users"} {
		raw, _ := schemas.Raw(id)
		var s struct {
			Examples []json.RawMessage `json:"examples"`
			Defs     struct {
				Item struct {
					Properties map[string]map[string]any `json:"properties"`
				} `json:"item"`
			} `json:"$defs"`
		}
		if err := json.Unmarshal(raw, &s); err != nil {
			t.Fatal(err)
		}
		for name, p := range s.Defs.Item.Properties {
			if p["description"] == nil {
				t.Errorf("%s: item property %s has no description", id, name)
			}
		}
		info, _ := providers.Lookup(id)
		for _, ex := range s.Examples {
			if probs, err := schemas.Validate(id, ex); err != nil || len(probs) > 0 {
				t.Errorf("%s: example %s: %v %v", id, ex, probs, err)
			}
			if _, err := info.New().Decode(providertest.NewEnv(t), ex); err != nil {
				t.Errorf("%s: example does not decode: %v", id, err)
			}
		}
	}
}
