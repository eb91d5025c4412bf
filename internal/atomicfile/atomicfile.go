// Package atomicfile writes files so that a crash at any moment leaves
// either the old content or the new content, never a mix: write a temporary
// file in the same directory, fsync it, rename it over the target, fsync
// the directory.
package atomicfile

import (
	"fmt"
	"os"
	"path/filepath"
)

// inFlight bounds the durable writes a process has under way at once.
// Each holds two or three descriptors while it waits for fsync, and fsyncs
// of one disk do not go faster side by side: an agent never comes near
// the bound, but a process that hosts thousands of agents (the fleet
// simulator) would otherwise run out of descriptors when a change reaches
// all of them at once, and fail writes that only had to wait.
var inFlight = make(chan struct{}, 64)

// Hold waits for a slot for one durable write and returns the function
// that gives it back. Write holds one; other writers that fsync (a root
// handle's atomic write) hold one the same way.
func Hold() (release func()) {
	inFlight <- struct{}{}
	return func() { <-inFlight }
}

// Write replaces path with data and gives it perm (exactly, regardless of
// the umask).
func Write(path string, data []byte, perm os.FileMode) error {
	defer Hold()()
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return fmt.Errorf("atomic write %s: %w", path, err)
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("atomic write %s: %w", path, err)
	}
	if err := f.Chmod(perm); err != nil {
		return fmt.Errorf("atomic write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("atomic write %s: fsync: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("atomic write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("atomic write %s: %w", path, err)
	}
	ok = true
	return SyncDir(dir)
}

// SyncDir fsyncs a directory so that a rename or a create in it is durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("fsync dir %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync dir %s: %w", dir, err)
	}
	return nil
}
