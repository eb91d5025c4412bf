// Command clifloor is the floor `make bench-cli` compares a no-op
// `twinlet apply --once` with: it only stats, reads and hashes (SHA-256)
// every regular file under a directory, which is the least work a run
// that checks those files can do.
//
//	clifloor DIR
package main

import (
	"crypto/sha256"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: clifloor DIR")
		os.Exit(2)
	}
	n := 0
	err := filepath.WalkDir(os.Args[1], func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		if _, err := os.Lstat(p); err != nil {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		sha256.Sum256(b)
		n++
		return nil
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "clifloor:", err)
		os.Exit(1)
	}
	if n == 0 {
		fmt.Fprintln(os.Stderr, "clifloor: no files")
		os.Exit(1)
	}
}
