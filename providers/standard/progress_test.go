package standard_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twinlet/twinlet/internal/testutil"
	"github.com/twinlet/twinlet/providers"
	"github.com/twinlet/twinlet/providers/packages/debtest"
	"github.com/twinlet/twinlet/reconciler"
)

// TestPackagesProgressReported: while a long install runs, the reported
// document (what the twin receives) has the packages section Reconciling,
// reason InProgress, with dpkg's step for the item; once the postinst can
// finish, the section is Ready and the step is gone.
func TestPackagesProgressReported(t *testing.T) {
	debtest.Require(t)
	root, policyDir := t.TempDir(), t.TempDir()
	debtest.InitRoot(t, root)
	repo := debtest.NewRepo(t, debtest.Deb{Name: "slow", Version: "1.0",
		Postinst: `while [ ! -e "$DPKG_ROOT/tmp/go" ]; do sleep 0.05; done`})
	doc := fmt.Sprintf("apiVersion: twinlet.dev/v1\nkind: DevicePolicy\nmetadata: { name: p }\nspec:\n  mode: enforce\n  packages:\n"+
		"    sources:\n      local: { uri: %q, suite: ./, trusted: true }\n    slow: {}\n", repo.URI())
	if err := os.WriteFile(filepath.Join(policyDir, "p.yaml"), []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	info, _ := providers.Lookup("packages")
	var mu sync.Mutex
	var reports []string
	r, err := reconciler.New(reconciler.Options{Root: root, StateDir: t.TempDir(), PolicyDir: policyDir,
		Providers: []providers.Info{info}, Logger: slog.New(slog.DiscardHandler), ProgressInterval: time.Millisecond,
		OnReport: func(doc []byte) {
			mu.Lock()
			reports = append(reports, string(doc))
			mu.Unlock()
		}})
	if err != nil {
		t.Fatal(err)
	}
	done, finished := make(chan *reconciler.Report, 1), make(chan struct{})
	go func() {
		defer close(finished)
		done <- r.ReconcileAll(context.Background(), false)
	}()
	// Whatever happens, the script may finish and the reconcile ends
	// before the temporary root goes.
	t.Cleanup(func() {
		os.WriteFile(filepath.Join(root, "tmp/go"), nil, 0o644)
		<-finished
	})
	type status struct {
		State, Reason string
		Progress      *reconciler.Progress
	}
	var seen status
	testutil.Eventually(t, "a reported step of slow's configuration", func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, d := range reports {
			var rep struct {
				Packages struct {
					Status status `json:"__status"`
				} `json:"packages"`
			}
			if json.Unmarshal([]byte(d), &rep) == nil && rep.Packages.Status.Progress != nil &&
				strings.HasPrefix(rep.Packages.Status.Progress.Step, "slow: Configuring slow") {
				seen = rep.Packages.Status
				return true
			}
		}
		return false
	})
	if seen.State != "Reconciling" || seen.Reason != "InProgress" || seen.Progress.Total != 100 {
		t.Fatalf("reported while installing: %+v %+v", seen, *seen.Progress)
	}
	if err := os.WriteFile(filepath.Join(root, "tmp/go"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	rep := <-done
	if !rep.AllReady() || strings.Contains(string(rep.Document), `"progress"`) {
		t.Fatalf("after the install: %s", rep.Document)
	}
}
