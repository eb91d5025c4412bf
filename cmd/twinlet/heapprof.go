//go:build heapprof

package main

import (
	"encoding/json"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"syscall"
)

// Built with -tags heapprof only (for measuring the idle agent): SIGUSR1
// writes a heap profile to $TWINLET_HEAP_PROFILE after a collection,
// and runtime.MemStats beside it (.memstats).
func init() {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGUSR1)
	go func() {
		for range ch {
			runtime.GC()
			if f, err := os.Create(os.Getenv("TWINLET_HEAP_PROFILE")); err == nil {
				pprof.Lookup("heap").WriteTo(f, 0)
				f.Close()
			}
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			b, _ := json.MarshalIndent(m, "", " ")
			os.WriteFile(os.Getenv("TWINLET_HEAP_PROFILE")+".memstats", b, 0o644)
		}
	}()
}
