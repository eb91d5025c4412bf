package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// BenchmarkApplyNoop is the in-process part of `make bench-cli`: a no-op
// `twinlet apply --once` of 100 files, hostname, timezone and one sysctl
// item on a converged sandbox root (process start and package inits are
// not in it; `make bench-cli` measures the whole process).
func BenchmarkApplyNoop(b *testing.B) {
	d := b.TempDir()
	root, state, policy := filepath.Join(d, "root"), filepath.Join(d, "state"), filepath.Join(d, "policy")
	for _, p := range []string{root, policy} {
		os.MkdirAll(p, 0o755)
	}
	var sb strings.Builder
	sb.WriteString("apiVersion: twinlet.dev/v1\nkind: DevicePolicy\nmetadata: { name: bench }\nspec:\n  mode: enforce\n")
	sb.WriteString("  hostname: { name: bench-host }\n  timezone: { name: Europe/Berlin }\n")
	sb.WriteString("  sysctl:\n    swappiness: { key: vm.swappiness, value: \"10\" }\n  files:\n")
	for i := 0; i < 100; i++ {
		fmt.Fprintf(&sb, "    f%03d: { path: /opt/bench/f%03d.conf, mode: \"0644\", content: %q }\n", i, i, fmt.Sprintf("managed file %d\n", i))
	}
	os.WriteFile(filepath.Join(policy, "bench.yaml"), []byte(sb.String()), 0o644)
	args := []string{"apply", "--once", "--config", "", "--root", root, "--state-dir", state, "--policy", policy}
	if code := run(context.Background(), args, io.Discard, io.Discard); code != 0 {
		b.Fatalf("first apply: exit %d", code)
	}
	for b.Loop() {
		if code := run(context.Background(), args, io.Discard, io.Discard); code != 0 {
			b.Fatalf("apply: exit %d", code)
		}
	}
}
