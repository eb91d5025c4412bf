// Package testutil holds the few helpers that tests across packages share:
// waiting for a condition with a deadline (never sleeping for a fixed
// time), a buffer a child process and a test may use at once, and reading
// a tar.gz bundle.
package testutil

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"
)

// Timeout bounds every Eventually; generous, since CI machines are shared.
const Timeout = 30 * time.Second

// Eventually polls cond until it holds and fails the test after Timeout.
func Eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(Timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// SyncBuffer is a string buffer safe for concurrent writers and readers.
type SyncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

// Write implements io.Writer.
func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns what was written so far.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Untar reads a tar.gz archive into name → content.
func Untar(t testing.TB, archive []byte) map[string][]byte {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(archive))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	out := map[string][]byte{}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		out[h.Name] = data
	}
}

// Mutations returns documents one change away from doc (decoded JSON),
// for validators to be run on: at every place the value replaced by each
// of repl, and in objects an unknown member added and each member
// removed, in arrays the items repeated.
func Mutations(doc any, repl []any) []any {
	var out []any
	var walk func(v any, set func(any) any)
	walk = func(v any, set func(any) any) {
		for _, r := range repl {
			out = append(out, set(r))
		}
		switch x := v.(type) {
		case map[string]any:
			out = append(out, set(with(x, "zzUnknown", "x")), set(with(x, "x-extra", 1.0)))
			for k := range x {
				out = append(out, set(without(x, k)))
				walk(x[k], func(nv any) any { return set(with(x, k, nv)) })
			}
		case []any:
			out = append(out, set(append(append([]any(nil), x...), x...)))
			for i := range x {
				walk(x[i], func(nv any) any {
					c := append([]any(nil), x...)
					c[i] = nv
					return set(c)
				})
			}
		}
	}
	walk(doc, func(v any) any { return v })
	return out
}

func with(m map[string]any, k string, v any) map[string]any {
	c := make(map[string]any, len(m)+1)
	for a, b := range m {
		c[a] = b
	}
	c[k] = v
	return c
}

func without(m map[string]any, k string) map[string]any {
	c := make(map[string]any, len(m))
	for a, b := range m {
		if a != k {
			c[a] = b
		}
	}
	return c
}
