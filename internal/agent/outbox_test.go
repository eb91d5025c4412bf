package agent

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/twinlet/twinlet/internal/jsonx"
)

func doc(s string) map[string]json.RawMessage {
	var m map[string]json.RawMessage
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		panic(err)
	}
	return m
}

func TestOutboxQueuesSavesAndFolds(t *testing.T) {
	dir := t.TempDir()
	o, err := loadOutbox(dir)
	if err != nil {
		t.Fatal(err)
	}
	o.add(doc(`{"a":1}`)) // no base yet: nothing to take a difference from
	if len(o.Entries) != 0 {
		t.Fatalf("queued without a base: %s", o.Entries[0].Patch)
	}
	o.Base = doc(`{"a":1,"s":{"x":1,"y":2}}`)
	o.add(doc(`{"a":1,"s":{"x":1,"y":2}}`)) // unchanged: nothing queued
	o.add(doc(`{"a":2,"s":{"x":1}}`))
	o.add(doc(`{"a":2,"s":{"x":3}}`))
	if len(o.Entries) != 2 || string(o.Entries[0].Patch) != `{"a":2,"s":{"y":null}}` || string(o.Entries[1].Patch) != `{"s":{"x":3}}` {
		t.Fatalf("entries: %+v", o.Entries)
	}
	if err := o.save(); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, OutboxFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("outbox file: %v %v", fi, err)
	}
	// A restart finds the same queue and base.
	o2, err := loadOutbox(dir)
	if err != nil || len(o2.Entries) != 2 || o2.Seq != 2 || !jsonx.Equal(mustJSON(o2.Base), json.RawMessage(`{"a":2,"s":{"x":3}}`)) {
		t.Fatalf("reloaded: %+v %v", o2, err)
	}
	// Acknowledged entries leave; an empty outbox leaves no file.
	o2.pop()
	o2.pop()
	if err := o2.save(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, OutboxFile)); !os.IsNotExist(err) {
		t.Fatalf("empty outbox still on disk: %v", err)
	}

	// A long outage folds the oldest patches; applying the queue in order
	// still gives the latest document.
	o3 := &outbox{Base: doc(`{}`)}
	hub := doc(`{}`)
	var last map[string]json.RawMessage
	for i := 0; i < 3*maxOutbox; i++ {
		last = doc(fmt.Sprintf(`{"n":%d,"s%d":{"v":%d},"keep":{"i":%d}}`, i, i%5, i, i))
		o3.add(last)
	}
	if len(o3.Entries) != maxOutbox {
		t.Fatalf("%d entries, want the cap %d", len(o3.Entries), maxOutbox)
	}
	for _, e := range o3.Entries {
		var p map[string]json.RawMessage
		json.Unmarshal(e.Patch, &p)
		hub = jsonx.MergePatch(hub, p)
	}
	if !jsonx.Equal(mustJSON(hub), mustJSON(last)) {
		t.Fatalf("replayed %s, want %s", mustJSON(hub), mustJSON(last))
	}
}

func TestOutboxCorruptFileIsMovedAside(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, OutboxFile), []byte("{not json"), 0o600)
	o, err := loadOutbox(dir)
	if err == nil || o == nil || len(o.Entries) != 0 {
		t.Fatalf("corrupt outbox: %+v %v", o, err)
	}
	if _, err := os.Stat(filepath.Join(dir, OutboxFile+".corrupt")); err != nil {
		t.Fatal(err)
	}
}

func TestCompose(t *testing.T) {
	tests := []struct{ p1, p2, want string }{
		{`{"a":1}`, `{"b":2}`, `{"a":1,"b":2}`},
		{`{"s":{"x":1,"y":null}}`, `{"s":{"y":2}}`, `{"s":{"x":1,"y":2}}`},
		{`{"s":{"x":1}}`, `{"s":null}`, `{"s":null}`},
		{`{"a":[1]}`, `{"a":{"k":1}}`, `{"a":{"k":1}}`},
	}
	for _, tt := range tests {
		if got := compose(json.RawMessage(tt.p1), json.RawMessage(tt.p2)); !jsonx.Equal(got, json.RawMessage(tt.want)) {
			t.Errorf("compose(%s, %s) = %s, want %s", tt.p1, tt.p2, got, tt.want)
		}
	}
}

func mustJSON(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}
