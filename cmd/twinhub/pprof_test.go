package main

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
)

func TestPprofLoopbackOnly(t *testing.T) {
	for _, ok := range []string{"127.0.0.1:6060", "[::1]:6060", "localhost:6060", "127.0.0.2:1"} {
		if err := checkLoopback(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{":6060", "0.0.0.0:6060", "[::]:6060", "10.0.0.1:6060", "example.com:6060", "127.0.0.1"} {
		err := checkLoopback(bad)
		if err == nil || !strings.Contains(err.Error(), "--pprof") {
			t.Errorf("%s: %v, want an error naming --pprof", bad, err)
		}
	}
	if err := run([]string{"serve", "--memory", "--pprof", "0.0.0.0:0"}, io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), "loopback") {
		t.Fatalf("serve --pprof 0.0.0.0:0: %v", err)
	}
}

func TestPprofServesHeap(t *testing.T) {
	addr, stop, err := servePprof(context.Background(), "127.0.0.1:0", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	resp, err := http.Get("http://" + addr.String() + "/debug/pprof/heap?debug=1")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || !strings.Contains(string(body), "# HeapInuse = ") {
		t.Fatalf("%s: %.200s", resp.Status, body)
	}
}
