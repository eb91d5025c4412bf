package memtrim

import (
	"math"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"
)

func rssFileKiB(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skip("no /proc")
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "RssFile:"); ok {
			n, _ := strconv.ParseInt(strings.Fields(v)[0], 10, 64)
			return n
		}
	}
	t.Fatal("no RssFile in /proc/self/status")
	return 0
}

// TestUnmapExecutable: the test binary's own read-only pages leave its
// resident set, and the program goes on running (the code it needs next
// is read again).
func TestUnmapExecutable(t *testing.T) {
	before := rssFileKiB(t)
	n, err := UnmapExecutable()
	if err != nil {
		t.Fatal(err)
	}
	after := rssFileKiB(t)
	if n == 0 || after >= before {
		t.Fatalf("advised %d bytes; file-backed RSS %d KiB -> %d KiB", n, before, after)
	}
	t.Logf("advised %d KiB; file-backed RSS %d KiB -> %d KiB", n>>10, before, after)
	// Still works: a stretch of code not run yet in this process.
	if got := strings.Repeat(strconv.Itoa(42), 2); got != "4242" {
		t.Fatal(got)
	}
}

func TestReadOnlyMappingOf(t *testing.T) {
	exe := "/usr/bin/twin let" // a path with a space
	for line, want := range map[string]bool{
		"00400000-0095a000 r-xp 00000000 fe:00 10289949                           /usr/bin/twin let": true,
		"0095a000-00f28000 r--p 0055a000 fe:00 10289949 /usr/bin/twin let":                           true,
		"00f28000-00f91000 rw-p 00b28000 fe:00 10289949 /usr/bin/twin let":                           false, // writable: never
		"7f00-8f00 r-xs 00000000 fe:00 1 /usr/bin/twin let":                                          false, // shared
		"7f9fe6708000-7f9fe685e000 r-xp 00026000 fe:00 326269 /usr/lib/x86_64-linux-gnu/libc.so.6":   false,
		"23c280c00000-23c281400000 rw-p 00000000 00:00 0":                                            false,
		"garbage": false,
	} {
		if _, _, ok := readOnlyMappingOf(line, exe); ok != want {
			t.Errorf("%q: %v, want %v", line, ok, want)
		}
	}
	s, e, _ := readOnlyMappingOf("00400000-0095a000 r-xp 00000000 fe:00 1 /usr/bin/twin let", exe)
	if s != 0x400000 || e != 0x95a000 {
		t.Fatalf("range %#x-%#x", s, e)
	}
}

// TestTrimmerWaitsForQuiet: a trim comes delay after the last Touch of
// a burst, and none after Stop.
func TestTrimmerWaitsForQuiet(t *testing.T) {
	tr := New(50*time.Millisecond, nil)
	for range 5 {
		tr.Touch()
		time.Sleep(5 * time.Millisecond)
	}
	deadline := time.Now().Add(10 * time.Second)
	for tr.Trims.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	n := tr.Trims.Load()
	if n == 0 {
		t.Fatal("no trim after a burst")
	}
	tr.Touch()
	tr.Stop()
	time.Sleep(100 * time.Millisecond)
	if got := tr.Trims.Load(); got != n {
		t.Fatalf("%d trims after Stop, want %d", got, n)
	}
	New(0, nil).Touch() // never trims, never panics
	var nilT *Trimmer
	nilT.Touch()
	nilT.Stop()
}

// TestIdleTurnsTheCollectorOff: after a trim the collector is off, with
// a memory limit; work turns it back on as it was, and no trim comes
// while work is in progress however long it takes.
func TestIdleTurnsTheCollectorOff(t *testing.T) {
	gc := debug.SetGCPercent(77)
	defer debug.SetGCPercent(gc)
	tr := New(20*time.Millisecond, nil)
	defer tr.Stop()
	done := tr.Busy()
	time.Sleep(100 * time.Millisecond)
	if tr.Trims.Load() != 0 || tr.IdleGC() {
		t.Fatal("trimmed during work")
	}
	done()
	done() // twice is once
	waitFor(t, "the trim", tr.IdleGC)
	if p := debug.SetGCPercent(-1); p != -1 {
		t.Fatalf("GC percent while idle = %d", p)
	}
	if l := debug.SetMemoryLimit(-1); l == math.MaxInt64 {
		t.Fatal("no memory limit while the collector is off")
	}
	done = tr.Busy()
	if tr.IdleGC() {
		t.Fatal("still idle while busy")
	}
	if p := debug.SetGCPercent(77); p != 77 {
		t.Fatalf("GC percent after work = %d, want 77", p)
	}
	if l := debug.SetMemoryLimit(-1); l != math.MaxInt64 {
		t.Fatalf("memory limit after work = %d", l)
	}
	done()
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestAfterWakeUnmapsAtOnceAndInTheMonitorsWake: a wake that is not
// work (a keep-alive ping) hands the executable's pages back while the
// agent is trimmed, leaving the collector off: at once, and again on a
// timer due when the Go runtime's monitor wakes anyway (monitorWake;
// shortened here), which later wakes never move; before the first trim
// or during work it does nothing. Wakes closer together than that only
// unmap at once: the next would come before the timer.
func TestAfterWakeUnmapsAtOnceAndInTheMonitorsWake(t *testing.T) {
	if monitorWake != 60*time.Second {
		t.Fatalf("monitorWake = %v, want the runtime's forcegcperiod/2, 60s", monitorWake)
	}
	gc := debug.SetGCPercent(77)
	defer debug.SetGCPercent(gc)
	tr := New(20*time.Millisecond, nil)
	tr.wakeDelay = 200 * time.Millisecond
	defer tr.Stop()
	done := tr.Busy()
	tr.AfterWake()
	time.Sleep(tr.wakeDelay + 100*time.Millisecond)
	if n := tr.Unmaps.Load(); n != 0 {
		t.Fatalf("%d unmaps during work", n)
	}
	done()
	waitFor(t, "the trim", tr.IdleGC)
	tr.AfterWake()
	if n := tr.Unmaps.Load(); n != 1 {
		t.Fatalf("%d unmaps when AfterWake returned, want 1 (at once)", n)
	}
	tr.wakeMu.Lock()
	pending := tr.wakePending
	tr.wakeMu.Unlock()
	if !pending {
		t.Fatal("no second unmap pending for the monitor's wake")
	}
	tr.AfterWake() // a second wake before it: at once, and the same timer, not moved later
	if n := tr.Unmaps.Load(); n != 2 {
		t.Fatalf("%d unmaps after the second wake, want 2", n)
	}
	waitFor(t, "the unmap in the monitor's wake", func() bool { return tr.Unmaps.Load() == 3 })
	time.Sleep(tr.wakeDelay + 100*time.Millisecond)
	if n := tr.Unmaps.Load(); n != 3 {
		t.Fatalf("%d unmaps after two wakes at once, want 3 (two at once, one later)", n)
	}
	if !tr.IdleGC() {
		t.Fatal("a wake turned the collector back on")
	}
	if p := debug.SetGCPercent(-1); p != -1 {
		t.Fatalf("GC percent after a wake = %d, want -1 (off)", p)
	}
	// Wakes closer together than the monitor's: at once only.
	tr.wakeMu.Lock()
	tr.lastWake = time.Now() // as if the last ping had just been answered
	tr.wakeMu.Unlock()
	tr.AfterWake()
	tr.wakeMu.Lock()
	pending = tr.wakePending
	tr.wakeMu.Unlock()
	if n := tr.Unmaps.Load(); n != 4 || pending {
		t.Fatalf("a wake less than %v after the last: %d unmaps (want 4), timer pending %v (want none)", tr.wakeDelay, n, pending)
	}
	// Held by a trim or by work starting: nothing to do, and no waiting.
	tr.mu.Lock()
	tr.AfterWake()
	tr.mu.Unlock()
	if n := tr.Unmaps.Load(); n != 4 {
		t.Fatalf("%d unmaps with the trimmer held, want still 4", n)
	}
	New(0, nil).AfterWake()
	var nilT *Trimmer
	nilT.AfterWake()
}
