package standard_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twinlet/twinlet/internal/accounts/accountstest"
	"github.com/twinlet/twinlet/providers"
	"github.com/twinlet/twinlet/providers/packages/debtest"
	"github.com/twinlet/twinlet/reconciler"
)

// The section set of BenchmarkSystemSectionsNoop.
const (
	setPackages = 50
	setUnits    = 20
	setUsers    = 20
)

// systemRoot is a sandbox root with setPackages small packages installed
// by dpkg, setUnits vendor unit files and the base accounts, and a policy
// directory whose one file desires all of them (half the packages held,
// half the units enabled) and setUsers users. It returns the root, the
// policy directory, the package names and the unit names.
func systemRoot(b *testing.B) (root, policyDir string, pkgs, units []string) {
	debtest.Require(b)
	accountstest.Need(b)
	if _, err := exec.LookPath("systemctl"); err != nil {
		b.Skip("systemctl is not installed: run `make systemd-tools` (apt-get install systemd)")
	}
	root, policyDir = b.TempDir(), b.TempDir()
	debtest.InitRoot(b, root)
	accountstest.Populate(b, root)
	var spec strings.Builder
	spec.WriteString("apiVersion: twinlet.dev/v1\nkind: DevicePolicy\nmetadata: { name: bench }\nspec:\n  mode: enforce\n  packages:\n")
	debDir := b.TempDir()
	var debs []string
	for i := range setPackages {
		name := fmt.Sprintf("bench-%02d", i)
		debs = append(debs, debtest.Build(b, debDir, debtest.Deb{Name: name, Version: "1.0-1"}))
		pkgs = append(pkgs, name)
		fmt.Fprintf(&spec, "    p%02d: { name: %s, version: 1.0-1, hold: %v }\n", i, name, i%2 == 0)
	}
	debtest.Dpkg(b, root, append([]string{"--install"}, debs...)...)
	unitDir := filepath.Join(root, "usr/lib/systemd/system")
	if err := os.MkdirAll(unitDir, 0o755); err != nil {
		b.Fatal(err)
	}
	spec.WriteString("  services:\n")
	for i := range setUnits {
		u := fmt.Sprintf("bench%02d.service", i)
		content := "[Unit]\nDescription=" + u + "\n[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n"
		if err := os.WriteFile(filepath.Join(unitDir, u), []byte(content), 0o644); err != nil {
			b.Fatal(err)
		}
		units = append(units, u)
		fmt.Fprintf(&spec, "    s%02d: { unit: %s, enabled: %v }\n", i, u, i%2 == 0)
	}
	spec.WriteString("  users:\n")
	for i := range setUsers {
		fmt.Fprintf(&spec, "    u%02d: { uid: %d, groups: [users], shell: /bin/bash }\n", i, 2000+i)
	}
	if err := os.WriteFile(filepath.Join(policyDir, "bench.yaml"), []byte(spec.String()), 0o644); err != nil {
		b.Fatal(err)
	}
	return root, policyDir, pkgs, units
}

// BenchmarkSystemSectionsNoop is the figure for the system
// providers: a no-op reconcile of one section set of 50 packages, 20
// services and 20 users (the packages, services and users sections in
// one reconciler, converged first with the real dpkg, systemctl --root
// and shadow tools), against the tools' own query of the same things in
// the same loop: `dpkg-query -W` of the 50 packages, and with it
// `systemctl --root is-enabled` of the 20 units. Measured alternately, so
// that both see the same machine load; reported per op and as the ratios
// reconcile/dpkg-query and reconcile/(dpkg-query+is-enabled), with each
// section's share of the reconcile.
func BenchmarkSystemSectionsNoop(b *testing.B) {
	root, policyDir, pkgs, units := systemRoot(b)
	var infos []providers.Info
	for _, id := range []string{"packages", "services", "users"} {
		info, ok := providers.Lookup(id)
		if !ok {
			b.Fatalf("%s is not registered", id)
		}
		infos = append(infos, info)
	}
	// took sums each section's reconcile time (the loop's alone: it is
	// reset before the loop), for the break-down.
	var mu sync.Mutex
	took := map[string]time.Duration{}
	r, err := reconciler.New(reconciler.Options{Root: root, StateDir: b.TempDir(), PolicyDir: policyDir,
		Providers: infos, Logger: slog.New(slog.DiscardHandler),
		OnSection: func(res *reconciler.SectionResult, d time.Duration) {
			mu.Lock()
			took[res.ID] += d
			mu.Unlock()
		}})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	if rep := r.ReconcileAll(ctx, false); !rep.AllReady() {
		b.Fatalf("first apply: %s", rep.Document)
	}
	noop := func() {
		rep := r.ReconcileAll(ctx, false)
		if !rep.AllReady() || rep.Pending() != 0 || len(rep.Sections) != 3 {
			b.Fatalf("not a no-op of three sections: %s", rep.Document)
		}
	}
	noop()
	query := append([]string{"--admindir=" + filepath.Join(root, "var/lib/dpkg"), "-W", "-f", "${Package}\t${Version}\t${Status}\n"}, pkgs...)
	isEnabled := append([]string{"--root=" + root, "is-enabled", "--"}, units...)
	var recT, dpkgT, sysT time.Duration
	n := 0
	mu.Lock()
	clear(took)
	mu.Unlock()
	b.ResetTimer()
	for b.Loop() {
		t0 := time.Now()
		noop()
		t1 := time.Now()
		if out, err := exec.Command("dpkg-query", query...).Output(); err != nil || strings.Count(string(out), "\n") != setPackages {
			b.Fatalf("dpkg-query: %v\n%s", err, out)
		}
		t2 := time.Now()
		// is-enabled exits 1 when a unit is disabled: only its output counts.
		if out, _ := exec.Command("systemctl", isEnabled...).Output(); strings.Count(string(out), "\n") != setUnits {
			b.Fatalf("systemctl is-enabled: %s", out)
		}
		recT, dpkgT, sysT, n = recT+t1.Sub(t0), dpkgT+t2.Sub(t1), sysT+time.Since(t2), n+1
	}
	b.ReportMetric(float64(recT.Microseconds())/float64(n), "reconcile-µs/op")
	mu.Lock()
	for id, d := range took {
		b.ReportMetric(float64(d.Microseconds())/float64(n), id+"-µs/op")
	}
	b.ReportMetric(float64(took["packages"])/float64(dpkgT), "packages/dpkg-query")
	mu.Unlock()
	b.ReportMetric(float64(dpkgT.Microseconds())/float64(n), "dpkg-query-µs/op")
	b.ReportMetric(float64(sysT.Microseconds())/float64(n), "is-enabled-µs/op")
	b.ReportMetric(float64(recT)/float64(dpkgT), "reconcile/dpkg-query")
	b.ReportMetric(float64(recT)/float64(dpkgT+sysT), "reconcile/tools")
}
