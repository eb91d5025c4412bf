// Package memtrim hands back to the system the memory an idle agent is
// not using: the free Go heap, and the pages of its own executable that
// it touched while it worked (start-up, schema compilation, a reconcile)
// and will not touch again until it works again.
//
// An agent idles far more than it works. The kernel would reclaim those
// clean executable pages under memory pressure anyway, but only after
// pressure builds, and a page still mapped is among the last it takes;
// a device builder sizing memory reads RSS. Android compacts idle apps
// the same way (process_madvise with MADV_PAGEOUT). The cost is paid on
// the next change: the pages it needs are read again (a few megabytes
// at most; the keep-alive ping touches a few pages).
package memtrim

import (
	"bufio"
	"bytes"
	"os"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Trimmer trims once the agent has been quiet for its delay after the
// last Touch. It arms one timer per burst of work and none while idle.
type Trimmer struct {
	delay time.Duration

	mu      sync.Mutex
	timer   *time.Timer
	stopped bool

	// Trims counts trims done, Released the executable bytes paged out
	// by the last one (what madvise was asked for, not what was resident).
	Trims    atomic.Int64
	Released atomic.Int64
}

// New returns a trimmer; a delay of 0 or less never trims.
func New(delay time.Duration) *Trimmer { return &Trimmer{delay: delay} }

// Touch notes work: the trim waits for delay after the last Touch.
func (t *Trimmer) Touch() {
	if t == nil || t.delay <= 0 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return
	}
	if t.timer == nil {
		t.timer = time.AfterFunc(t.delay, t.trim)
		return
	}
	t.timer.Reset(t.delay)
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
}

func (t *Trimmer) trim() {
	debug.FreeOSMemory()
	n, _ := PageOutExecutable()
	t.Released.Store(n)
	t.Trims.Add(1)
}

// PageOutExecutable asks the kernel to reclaim the pages of this
// process's executable that are mapped read-only (code and read-only
// data; never a writable mapping, whose changes would be lost). Pages
// other processes map too are left alone by the kernel. It returns the
// bytes of the mappings it advised. Kernels before 5.4 lack
// MADV_PAGEOUT (EINVAL); the pages are then only unmapped.
func PageOutExecutable() (int64, error) {
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
		// PAGEOUT frees the pages from the page cache, but the kernel
		// only does so for a process that owns or may write the file;
		// DONTNEED then unmaps what is left (clean pages of an unwritable
		// private mapping: the next access reads them again).
		if _, _, errno := unix.Syscall(unix.SYS_MADVISE, start, end-start, unix.MADV_PAGEOUT); errno != 0 && errno != unix.EINVAL {
			return total, errno
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
