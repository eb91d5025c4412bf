package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"time"
)

// pprofMemProfileRate is the heap profile's sampling interval while
// --pprof is on: one sample per 4 KiB allocated instead of Go's default
// 512 KiB, so that a profile of a few thousand connections breaks the
// memory of one connection down by allocation site.
const pprofMemProfileRate = 4096

// checkLoopback accepts host:port only for a loopback host: the profiling
// endpoint has no authentication and shows the process's memory.
func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("--pprof %q: %w", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("--pprof %q: only a loopback address (127.0.0.1:PORT, [::1]:PORT, localhost:PORT): the endpoint has no authentication", addr)
}

// servePprof serves Go's profiles (/debug/pprof/: heap, goroutine,
// allocs, profile, trace; heap?debug=1 ends with the runtime's MemStats)
// on addr until ctx ends. It listens before it returns, so a start-up
// error is the caller's.
func servePprof(ctx context.Context, addr string, log *slog.Logger) (net.Addr, func(), error) {
	if err := checkLoopback(addr); err != nil {
		return nil, nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("--pprof: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, BaseContext: func(net.Listener) context.Context { return ctx }}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("pprof server stopped", "error", err)
		}
	}()
	stop := func() {
		_ = srv.Close()
		<-done
	}
	return ln.Addr(), stop, nil
}
