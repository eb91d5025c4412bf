package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/twinlet/twinlet/internal/atomicfile"
	"github.com/twinlet/twinlet/internal/jsonx"
)

// OutboxFile is the outbox's file name in the state directory.
const OutboxFile = "outbox.json"

// maxOutbox bounds the patches kept while the hub is out of reach; beyond
// it the two oldest are folded into one, so a long outage costs history
// (intermediate states), never the final state.
const maxOutbox = 64

// outbox holds the reported patches the hub has not acknowledged yet, in
// the order they were made, and the document they lead to. It is written
// to the state directory (atomically) while patches wait, so that a
// restart sends them, in order, before anything newer.
type outbox struct {
	path string // "" keeps it in memory only

	// Base is the reported document the entries lead to: the next patch is
	// the difference between Base and the next document. Nil until known.
	Base map[string]json.RawMessage `json:"base"`
	// Entries are the patches, oldest first.
	Entries []outboxEntry `json:"entries"`
	// Seq numbers entries, for logs.
	Seq uint64 `json:"seq"`

	onDisk bool // the file exists
	dirty  bool // memory differs from the file
}

type outboxEntry struct {
	Seq   uint64          `json:"seq"`
	Patch json.RawMessage `json:"patch"`
}

// loadOutbox reads the outbox left by a previous run. A file that cannot be
// read is moved aside: the final state is still reported (the patch
// against the hub's copy), only its history is lost.
func loadOutbox(stateDir string) (*outbox, error) {
	o := &outbox{}
	if stateDir == "" {
		return o, nil
	}
	o.path = filepath.Join(stateDir, OutboxFile)
	b, err := os.ReadFile(o.path)
	if errors.Is(err, fs.ErrNotExist) {
		return o, nil
	}
	if err != nil {
		return o, fmt.Errorf("outbox: %w", err)
	}
	o.onDisk = true
	if err := json.Unmarshal(b, o); err != nil {
		bad := o.path + ".corrupt"
		o.Base, o.Entries = nil, nil
		if rerr := os.Rename(o.path, bad); rerr == nil {
			o.onDisk = false
		}
		return o, fmt.Errorf("outbox %s unreadable, moved to %s: %w", o.path, bad, err)
	}
	return o, nil
}

// add queues the difference between Base and doc, if any. Without a Base
// there is nothing to take a difference from: the patch against the hub's
// copy, made once connected, covers it.
func (o *outbox) add(doc map[string]json.RawMessage) {
	if o.Base == nil {
		return
	}
	p := jsonx.Diff(o.Base, doc)
	o.Base = doc
	if len(p) == 0 {
		return
	}
	b, _ := json.Marshal(p)
	o.Seq++
	o.Entries = append(o.Entries, outboxEntry{Seq: o.Seq, Patch: b})
	if len(o.Entries) > maxOutbox {
		first, second := o.Entries[0], o.Entries[1]
		o.Entries[1] = outboxEntry{Seq: second.Seq, Patch: compose(first.Patch, second.Patch)}
		o.Entries = o.Entries[1:]
	}
	o.dirty = true
}

// pop removes the oldest entry once the hub acknowledged (or refused) it.
func (o *outbox) pop() {
	o.Entries = o.Entries[1:]
	o.dirty = true
}

// save writes the outbox when it holds patches and changed, and removes
// the file once it is empty.
func (o *outbox) save() error {
	if o.path == "" || !o.dirty && (len(o.Entries) > 0) == o.onDisk {
		return nil
	}
	if len(o.Entries) == 0 {
		o.dirty = false
		if !o.onDisk {
			return nil
		}
		if err := os.Remove(o.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("outbox: %w", err)
		}
		o.onDisk = false
		return atomicfile.SyncDir(filepath.Dir(o.path))
	}
	b, err := json.Marshal(o)
	if err != nil {
		return fmt.Errorf("outbox: %w", err)
	}
	if err := atomicfile.Write(o.path, b, 0o600); err != nil {
		return fmt.Errorf("outbox: %w", err)
	}
	o.onDisk, o.dirty = true, false
	return nil
}

// compose returns one merge patch with the effect of p1 then p2 on the
// members they set. (One case has no exact merge-patch form: p1 deletes
// an object that p2 then sets anew; the result merges into what p1
// deleted. The patch against the hub's copy sent after the outbox
// corrects it.)
func compose(p1, p2 json.RawMessage) json.RawMessage {
	var m1, m2 map[string]json.RawMessage
	if json.Unmarshal(p1, &m1) != nil || m1 == nil || json.Unmarshal(p2, &m2) != nil || m2 == nil {
		return p2
	}
	for k, v2 := range m2 {
		var o1, o2 map[string]json.RawMessage
		if v1, ok := m1[k]; ok && json.Unmarshal(v1, &o1) == nil && o1 != nil && json.Unmarshal(v2, &o2) == nil && o2 != nil {
			m1[k] = compose(v1, v2)
			continue
		}
		m1[k] = v2
	}
	b, _ := json.Marshal(m1)
	return b
}
