package state

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRoundTripAndSkipUnchanged(t *testing.T) {
	dir := t.TempDir()
	st := &Store{Dir: dir}
	s, err := st.Load()
	if err != nil || len(s.Sections) != 0 {
		t.Fatalf("fresh: %v %+v", err, s)
	}
	sec := s.Section("files")
	sec.LastGood = json.RawMessage(`{"a":1}`)
	sec.SetManaged(map[string]bool{"/etc/b": true, "/etc/a": true, "/etc/gone": false})
	if err := st.Save(s); err != nil {
		t.Fatal(err)
	}
	fi1, _ := os.Stat(filepath.Join(dir, FileName))
	if fi1.Mode().Perm() != 0o600 {
		t.Fatalf("state mode %v", fi1.Mode())
	}
	// Saving the same state again writes nothing.
	os.Chtimes(filepath.Join(dir, FileName), fi1.ModTime().Add(-3600e9), fi1.ModTime().Add(-3600e9))
	fiOld, _ := os.Stat(filepath.Join(dir, FileName))
	if err := st.Save(s); err != nil {
		t.Fatal(err)
	}
	fi2, _ := os.Stat(filepath.Join(dir, FileName))
	if !fi2.ModTime().Equal(fiOld.ModTime()) {
		t.Fatal("an unchanged state was rewritten")
	}
	s2, err := (&Store{Dir: dir}).Load()
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(s2.Sections["files"].Managed, ","); got != "/etc/a,/etc/b" {
		t.Fatalf("managed = %s", got)
	}
	if !s2.Sections["files"].ManagedSet()["/etc/a"] {
		t.Fatal("ManagedSet")
	}
}

func TestCorruptIsKeptAsideAndFresh(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, FileName), []byte(`{"format": 1, "sections": {`), 0o600)
	s, err := (&Store{Dir: dir}).Load()
	if err == nil || !strings.Contains(err.Error(), "corrupt") || s == nil || len(s.Sections) != 0 {
		t.Fatalf("err=%v s=%+v", err, s)
	}
	if _, err := os.Stat(filepath.Join(dir, FileName+".corrupt")); err != nil {
		t.Fatal("corrupt file not kept for inspection")
	}
	os.WriteFile(filepath.Join(dir, FileName), []byte(`{"format": 99}`), 0o600)
	if _, err := (&Store{Dir: dir}).Load(); err == nil {
		t.Fatal("unknown format accepted")
	}
}

func TestInFlightBecomesInterrupted(t *testing.T) {
	dir := t.TempDir()
	st := &Store{Dir: dir}
	s, _ := st.Load()
	sec := s.Section("commands")
	if !AddKey(&sec.InFlight, "b") || !AddKey(&sec.InFlight, "a") || AddKey(&sec.InFlight, "a") {
		t.Fatal("AddKey")
	}
	if strings.Join(sec.InFlight, ",") != "a,b" {
		t.Fatalf("in flight %v", sec.InFlight)
	}
	if !RemoveKey(&sec.InFlight, "b") || RemoveKey(&sec.InFlight, "b") {
		t.Fatal("RemoveKey")
	}
	if err := st.Save(s); err != nil {
		t.Fatal(err)
	}
	s, _ = (&Store{Dir: dir}).Load()
	if !s.Interrupt() || s.Interrupt() {
		t.Fatal("Interrupt")
	}
	if sec := s.Sections["commands"]; len(sec.InFlight) != 0 || strings.Join(sec.Interrupted, ",") != "a" {
		t.Fatalf("after a crash: %+v", sec)
	}
}
