package reconciler

import (
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/twinlet/twinlet/state"
)

// readBootID reads the kernel's boot id under root; "" when there is none
// (a sandbox root).
func readBootID(root string) string {
	b, err := os.ReadFile(filepath.Join(root, "proc/sys/kernel/random/boot_id"))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// checkBoot clears the reboot-required latch when the system booted
// since it was set.
func (r *Reconciler) checkBoot() {
	r.stMu.Lock()
	defer r.stMu.Unlock()
	l := r.st.Reboot
	if l == nil {
		return
	}
	if id := r.opts.BootID(); id != l.BootID {
		r.log.Info("rebooted since a reboot was required; cleared", "by", strings.Join(l.By, ","))
		r.st.Reboot = nil
		if err := r.store.Save(r.st); err != nil { // New: nothing else runs yet
			r.log.Error("save state", "err", err)
		}
	}
}

// recheckBoot clears the latch, and publishes, when the system booted
// since it was set: a reboot provider looks before it decides, so that a
// reboot it asked for is not asked again once it happened.
func (r *Reconciler) recheckBoot() {
	boot := r.opts.BootID()
	r.stMu.Lock()
	stale := r.st.Reboot != nil && r.st.Reboot.BootID != boot
	r.stMu.Unlock()
	if !stale {
		return // nothing to write: a dry run writes nothing
	}
	cleared := false
	if err := r.persist(func(st *state.State) {
		if st.Reboot != nil && st.Reboot.BootID != boot {
			r.log.Info("rebooted since a reboot was required; cleared", "by", strings.Join(st.Reboot.By, ","))
			st.Reboot, cleared = nil, true
		}
	}); err != nil {
		r.log.Error("save state", "err", err)
	}
	if cleared {
		r.Publish()
	}
}

// requeueAfter reconciles the section again after d, for a provider that
// waits for a time (a reboot window); a no-op when no loop runs.
func (r *Reconciler) requeueAfter(id string, d time.Duration) {
	r.mu.Lock()
	q := r.q
	r.mu.Unlock()
	if q != nil {
		q.AddAfter(id, d)
	}
}

// latchReboot records that a change of the section asks for a reboot.
func (r *Reconciler) latchReboot(id string) {
	boot := r.opts.BootID()
	if err := r.persist(func(st *state.State) {
		if st.Reboot == nil {
			st.Reboot = &state.RebootLatch{BootID: boot}
		}
		if state.AddKey(&st.Reboot.By, id) {
			r.log.Info("reboot required", "section", id)
		}
	}); err != nil {
		r.log.Error("save state", "err", err)
	}
	// The reboot policy decides when: wake the sections that watch the
	// latch.
	for other, c := range r.ctrls {
		if c.info.RebootPolicy && other != id {
			r.Enqueue(other)
		}
	}
}

// RebootRequiredBy lists, sorted, the sections whose applied changes asked
// for a reboot that has not happened yet; nil when none is needed. The
// latch survives restarts and clears when the boot id changes or on
// ClearRebootRequired.
func (r *Reconciler) RebootRequiredBy() []string {
	r.stMu.Lock()
	defer r.stMu.Unlock()
	if r.st.Reboot == nil {
		return nil
	}
	return append([]string(nil), r.st.Reboot.By...)
}

// ClearRebootRequired clears the reboot-required latch, for a reboot
// provider that knows better (it rebooted in a way the boot id does not
// show, or the reboot is no longer wanted), and publishes the change.
func (r *Reconciler) ClearRebootRequired() error {
	had := false
	err := r.persist(func(st *state.State) {
		had = st.Reboot != nil
		st.Reboot = nil
	})
	if had {
		r.Publish()
	}
	return err
}
