// Package memtrim hands back to the system the memory an idle agent is
// not using: the free Go heap, and the pages of its own executable that
// it touched while it worked (start-up, schema compilation, a reconcile)
// and will not touch again until it works again.
//
// An agent idles far more than it works. The kernel would reclaim those
// clean executable pages under memory pressure anyway, but a page still
// mapped is among the last it takes, and a device builder sizing memory
// reads RSS. Unmapped, they are the first and cheapest to reclaim, and
// until then the next change maps them again from the page cache
// (Android compacts idle apps in the same spirit). What the keep-alive
// ping and the Go runtime touch while idle comes back, about 2.5 MiB
// after a few minutes.
package memtrim

import (
	"bufio"
	"bytes"
	"log/slog"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Trimmer trims once the agent has been quiet for its delay after the
// last Touch. It arms one timer per burst of work and none while idle.
//
// While idle, after a trim, the garbage collector is off: Go forces a
// collection every two minutes, which woke the idle agent and, walking
// its stacks and heap, touched again the pages the trim gave back. An
// idle agent allocates next to nothing (a keep-alive ping), and a memory
// limit a few megabytes above what it holds then still bounds it. The
// first work after it (Busy, or a Touch) restores the collector.
type Trimmer struct {
	delay time.Duration
	log   *slog.Logger

	mu        sync.Mutex
	timer     *time.Timer
	stopped   bool
	active    int   // work in progress (Busy without its done)
	idleGC    bool  // the collector is off until the next work
	prevGC    int   // the GC percent to restore
	prevLimit int64 // the memory limit to restore

	// Trims counts trims done, Released the executable bytes unmapped
	// by the last one (what madvise was asked for, not what was resident).
	Trims    atomic.Int64
	Released atomic.Int64
	// Unmaps counts the executable's pages handed back after a wake
	// (AfterWake) without a full trim.
	Unmaps atomic.Int64

	wakeMu      sync.Mutex // guards the fields below only: AfterWake never waits for a trim
	wakeDelay   time.Duration
	wakeTimer   *time.Timer
	wakePending bool      // wakeTimer is armed; it is never moved later
	lastWake    time.Time // the last AfterWake
}

// New returns a trimmer; a delay of 0 or less never trims. log (nil:
// none) gets a debug line per trim.
func New(delay time.Duration, log *slog.Logger) *Trimmer {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Trimmer{delay: delay, log: log, wakeDelay: monitorWake}
}

// idleHeadroom is how far above what the idle agent holds its memory may
// grow before the collector runs although it is off.
const idleHeadroom = 8 << 20

// Touch notes work: the trim waits for delay after the last Touch.
func (t *Trimmer) Touch() {
	if t == nil || t.delay <= 0 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.touchLocked()
}

func (t *Trimmer) touchLocked() {
	t.wakeLocked()
	if t.stopped {
		return
	}
	if t.timer == nil {
		t.timer = time.AfterFunc(t.delay, t.trim)
		return
	}
	t.timer.Reset(t.delay)
}

// wakeLocked turns the collector back on.
func (t *Trimmer) wakeLocked() {
	if t.idleGC {
		t.idleGC = false
		debug.SetGCPercent(t.prevGC)
		debug.SetMemoryLimit(t.prevLimit)
	}
}

// Busy notes work that starts now; the trim waits until it ends (the
// function returned) and delay after that.
func (t *Trimmer) Busy() (done func()) {
	if t == nil || t.delay <= 0 {
		return func() {}
	}
	t.mu.Lock()
	t.active++
	t.wakeLocked()
	t.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			t.mu.Lock()
			t.active--
			t.touchLocked()
			t.mu.Unlock()
		})
	}
}

// monitorWake is the longest the Go runtime lets an idle process sleep:
// with every P idle, its monitor thread (sysmon) sleeps until the next
// timer but at most half of forcegcperiod, 2 minutes (Go 1.26
// runtime/proc.go, sysmon: "sleep := forcegcperiod / 2"). An unmap due
// this long after a wake is done in the monitor's wake, which comes
// anyway, instead of one of its own.
const monitorWake = 60 * time.Second

// AfterWake tells the trimmer that the agent woke briefly for something
// that is not work (the keep-alive ping, once the hub's answer has been
// read): the pages of the executable it touched came back into the
// resident set and, while the agent is idle (trimmed, nothing in
// progress), are handed back twice: at once, and with the runtime's next
// wake, monitorWake later, which that unmap shares. Unlike a trim, the
// collector stays off and the heap is not scanned. It never blocks. A nil
// Trimmer or one that never trims does nothing.
//
// At once, because the ping's pages would otherwise stay until then
// (BenchmarkIdleAgent -v, keep-alive 120 s: 1.3 MiB). Again later,
// because what the rest of the answer's wake touches after the first
// unmap (the reader going back into TLS to wait, paho and the runtime
// parking their goroutines and threads) stays resident too: 3.6-3.9 MiB
// file-backed after an unmap at once, 3.1-3.2 MiB after one in a later
// wake. The later one used to come a second after the ping, on a timer
// that woke the idle agent once more after every ping. When wakes come
// more often than monitorWake (a keep-alive of 80 s or less) the next
// one would come before that timer: only the unmap at once is done.
func (t *Trimmer) AfterWake() {
	if t == nil || t.delay <= 0 {
		return
	}
	t.wakeMu.Lock()
	defer t.wakeMu.Unlock()
	now := time.Now()
	prev := t.lastWake
	t.lastWake = now
	// TryLock: whoever holds the lock is trimming (which unmaps too) or
	// noting work (after which a trim comes); waiting for them would hold
	// up the caller, the connection's reader.
	if t.mu.TryLock() {
		t.unmapIfIdleLocked()
		t.mu.Unlock()
	}
	if t.wakePending || !prev.IsZero() && now.Sub(prev) < t.wakeDelay {
		return // a pending timer is never moved later: the runtime would still wake at its old time
	}
	t.wakePending = true
	if t.wakeTimer == nil {
		t.wakeTimer = time.AfterFunc(t.wakeDelay, t.afterWakeTimer)
		return
	}
	t.wakeTimer.Reset(t.wakeDelay)
}

func (t *Trimmer) afterWakeTimer() {
	t.wakeMu.Lock()
	t.wakePending = false
	t.wakeMu.Unlock()
	t.mu.Lock()
	defer t.mu.Unlock()
	t.unmapIfIdleLocked()
}

func (t *Trimmer) unmapIfIdleLocked() {
	if t.stopped || t.active > 0 || !t.idleGC {
		return // a trim is due anyway, or work is in progress
	}
	if _, err := UnmapExecutable(); err != nil {
		t.log.Debug("idle: unmapping the executable", "err", err)
		return
	}
	t.Unmaps.Add(1)
}

// Stop cancels a pending trim; Touch does nothing after it.
func (t *Trimmer) Stop() {
	if t == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.stopped = true
	if t.timer != nil {
		t.timer.Stop()
	}
	t.wakeMu.Lock()
	if t.wakeTimer != nil {
		t.wakeTimer.Stop()
	}
	t.wakeMu.Unlock()
	t.wakeLocked()
}

// IdleGC reports whether the collector is off for idleness.
func (t *Trimmer) IdleGC() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.idleGC
}

func (t *Trimmer) trim() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped || t.active > 0 || t.idleGC {
		return // work in progress re-arms the trim when it ends
	}
	debug.FreeOSMemory()
	n, err := UnmapExecutable()
	if err != nil {
		t.log.Debug("idle: unmapping the executable", "err", err)
	}
	t.Released.Store(n)
	t.Trims.Add(1)
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	t.prevLimit = debug.SetMemoryLimit(int64(m.Sys-m.HeapReleased) + idleHeadroom)
	t.prevGC = debug.SetGCPercent(-1)
	t.idleGC = true
	t.log.Debug("idle: memory handed back", "unmappedKiB", n>>10, "heapKiB", m.HeapInuse>>10)
}

// UnmapExecutable unmaps the pages of this process's executable that
// are mapped read-only (code and read-only data; never a writable
// mapping, whose changes would be lost) with MADV_DONTNEED. They stay in
// the page cache, where the kernel reclaims unmapped clean pages first
// and at no cost, and where the next access finds them again without
// reading the disk. MADV_PAGEOUT, which evicts them from the cache too,
// was measured: the same resident size after a few minutes idle (what
// the keep-alive and the runtime touch comes back either way) and a
// slower first change after it, read back from the disk. It returns the
// bytes of the mappings it advised.
func UnmapExecutable() (int64, error) {
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		return 0, err
	}
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		return 0, err
	}
	var total int64
	sc := bufio.NewScanner(bytes.NewReader(maps))
	for sc.Scan() {
		start, end, ok := readOnlyMappingOf(sc.Text(), exe)
		if !ok {
			continue
		}
		if _, _, errno := unix.Syscall(unix.SYS_MADVISE, start, end-start, unix.MADV_DONTNEED); errno != 0 {
			return total, errno
		}
		total += int64(end - start)
	}
	return total, sc.Err()
}

// readOnlyMappingOf parses one line of /proc/self/maps
// ("00400000-0095a000 r-xp 00000000 fe:00 10289949   /usr/bin/twinlet")
// and reports the range of a private, unwritable mapping of file.
func readOnlyMappingOf(line, file string) (start, end uintptr, ok bool) {
	f := bytes.Fields([]byte(line))
	if len(f) < 6 || string(bytes.Join(f[5:], []byte(" "))) != file {
		return 0, 0, false
	}
	perms := string(f[1])
	if len(perms) != 4 || perms[1] != '-' || perms[3] != 'p' {
		return 0, 0, false
	}
	lo, hi, found := bytes.Cut(f[0], []byte("-"))
	if !found {
		return 0, 0, false
	}
	s, err1 := strconv.ParseUint(string(lo), 16, 64)
	e, err2 := strconv.ParseUint(string(hi), 16, 64)
	if err1 != nil || err2 != nil || e <= s {
		return 0, 0, false
	}
	return uintptr(s), uintptr(e), true
}
