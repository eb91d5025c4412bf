package diagnostics

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/twinlet/twinlet/internal/atomicfile"
	"github.com/twinlet/twinlet/providers"
)

var randRead = rand.Read

// RunState is what is known of one run (a request or a method call).
type RunState struct {
	State  string `json:"state"`
	Source string `json:"source,omitempty"` // twin (a request) or method
	// UploadName is the name asked for; BlobName the one the cloud stored.
	UploadName string `json:"uploadName,omitempty"`
	BlobName   string `json:"blobName,omitempty"`
	// UploadID is the cloud's id of the upload (IoT Hub's correlation id).
	UploadID string `json:"uploadId,omitempty"`
	// Size is the bundle's size in bytes.
	Size int64 `json:"size,omitempty"`
	// Entries and Truncated count the manifest's entries and those cut
	// short (or left out) by the size cap.
	Entries   int `json:"entries,omitempty"`
	Truncated int `json:"truncated,omitempty"`
	// Errors counts entries whose collector failed (see the manifest).
	Errors int `json:"errors,omitempty"`
	// Attempts counts upload attempts; Error is the last one's failure.
	Attempts    int       `json:"attempts,omitempty"`
	Error       string    `json:"error,omitempty"`
	CollectedAt time.Time `json:"collectedAt,omitzero"`
	UploadedAt  time.Time `json:"uploadedAt,omitzero"`
}

func (r *RunState) pending() bool {
	return r.State == StateCollected || r.State == StateUploadFailed
}

// LastUpload is the outcome of the last upload attempt.
type LastUpload struct {
	RequestID string    `json:"requestId"`
	UploadID  string    `json:"uploadId,omitempty"`
	BlobName  string    `json:"blobName,omitempty"`
	Size      int64     `json:"size"`
	Result    string    `json:"result"` // Succeeded or Failed
	Error     string    `json:"error,omitempty"`
	Time      time.Time `json:"time"`
}

// stateFile is <StateDir>/diagnostics/state.json.
type stateFile struct {
	Runs       map[string]*RunState `json:"runs"`
	LastUpload *LastUpload          `json:"lastUpload,omitempty"`
}

// stateMu serializes the provider's state changes in this process (a
// method call and a reconcile may run at once).
var stateMu sync.Mutex

// collectMu lets one collection run at a time in this process.
var collectMu sync.Mutex

// maxRuns bounds the runs remembered; the oldest finished ones go first.
const maxRuns = 200

func loadState(env *providers.Env) (*stateFile, error) {
	st := &stateFile{Runs: map[string]*RunState{}}
	if env.StateDir == "" {
		return st, nil
	}
	b, err := os.ReadFile(filepath.Join(env.StateDir, ID, "state.json"))
	if errors.Is(err, fs.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(b, st); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(env.StateDir, ID, "state.json"), err)
	}
	if st.Runs == nil {
		st.Runs = map[string]*RunState{}
	}
	return st, nil
}

// prune forgets the oldest finished runs beyond maxRuns, except those in
// keep (requests still desired: forgetting one would run it again).
func prune(st *stateFile, keep map[string]bool) {
	if len(st.Runs) <= maxRuns {
		return
	}
	ids := make([]string, 0, len(st.Runs))
	for id, r := range st.Runs {
		if !r.pending() && !keep[id] {
			ids = append(ids, id)
		}
	}
	sort.Slice(ids, func(i, j int) bool { return st.Runs[ids[i]].CollectedAt.Before(st.Runs[ids[j]].CollectedAt) })
	for _, id := range ids[:min(len(ids), len(st.Runs)-maxRuns)] {
		delete(st.Runs, id)
	}
}

func saveState(dir string, st *stateFile) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(dir, "state.json"), append(b, '\n'), 0o600)
}

// sweep removes what a crash can leave in pending/: a partly written
// bundle (.tmp) and a bundle whose run was never recorded.
func sweep(dir string, st *stateFile) {
	ents, err := os.ReadDir(filepath.Join(dir, "pending"))
	if err != nil {
		return
	}
	for _, e := range ents {
		id, ok := strings.CutSuffix(e.Name(), ".tar.gz")
		if r := st.Runs[id]; ok && r != nil && r.pending() {
			continue
		}
		_ = os.Remove(filepath.Join(dir, "pending", e.Name()))
	}
}

func bundlePath(dir, id string) string { return filepath.Join(dir, "pending", id+".tar.gz") }

func now(env *providers.Env) time.Time {
	if env.Now != nil {
		return env.Now()
	}
	return time.Now()
}

// run collects a bundle for id, keeps it in the state directory (within
// the pending cap) and uploads it.
func run(ctx context.Context, env *providers.Env, spec Spec, id, name, source string) (*RunState, error) {
	if err := collect(ctx, env, spec, id, name, source); err != nil {
		return nil, err
	}
	return upload(ctx, env, id)
}

// collect writes the bundle of id to pending/ and records the run. One
// collection runs at a time: a bundle is heavy on the device, and the
// sweep must not take another collection's partial bundle.
func collect(ctx context.Context, env *providers.Env, spec Spec, id, name, source string) error {
	collectMu.Lock()
	defer collectMu.Unlock()
	dir, err := stateDirOf(env)
	if err != nil {
		return err
	}
	stateMu.Lock()
	if st, err := loadState(env); err == nil {
		sweep(dir, st)
	}
	stateMu.Unlock()
	tmp := bundlePath(dir, id) + ".tmp"
	sum, err := writeBundle(ctx, env, spec, tmp)
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("collect: %w", err)
	}
	if err := os.Rename(tmp, bundlePath(dir, id)); err != nil {
		return err
	}
	if err := atomicfile.SyncDir(filepath.Join(dir, "pending")); err != nil {
		return err
	}
	stateMu.Lock()
	st, err := loadState(env)
	if err == nil {
		st.Runs[id] = &RunState{State: StateCollected, Source: source, UploadName: name, Size: sum.size,
			Entries: len(sum.manifest.Entries), Truncated: sum.truncated, Errors: sum.errors, CollectedAt: now(env).UTC()}
		dropOver(dir, st, spec.MaxPendingSize, id)
		keep := map[string]bool{}
		for _, r := range spec.Requests {
			keep[r.ID] = true
		}
		prune(st, keep)
		err = saveState(dir, st)
	}
	stateMu.Unlock()
	if err != nil {
		return err
	}
	env.Logger.Info("diagnostic bundle collected", "request", id, "size", sum.size, "entries", len(sum.manifest.Entries), "truncated", sum.truncated)
	return nil
}

// dropOver removes the oldest kept bundles (not keep) while the kept
// bytes exceed limit, and marks them Dropped.
func dropOver(dir string, st *stateFile, limit int64, keep string) {
	var total int64
	var ids []string
	for id, r := range st.Runs {
		if r.pending() {
			total += r.Size
			if id != keep {
				ids = append(ids, id)
			}
		}
	}
	sort.Slice(ids, func(i, j int) bool { return st.Runs[ids[i]].CollectedAt.Before(st.Runs[ids[j]].CollectedAt) })
	for _, id := range ids {
		if total <= limit {
			break
		}
		r := st.Runs[id]
		_ = os.Remove(bundlePath(dir, id))
		total -= r.Size
		r.State, r.Error = StateDropped, "removed to keep the kept bundles under maxPendingSize"
	}
}

// upload uploads the kept bundle of id and records the outcome. A failure
// is returned (transient: the reconciler retries with backoff) and the
// bundle stays.
func upload(ctx context.Context, env *providers.Env, id string) (*RunState, error) {
	dir, err := stateDirOf(env)
	if err != nil {
		return nil, err
	}
	stateMu.Lock()
	st, err := loadState(env)
	var r *RunState
	if err == nil {
		r = st.Runs[id]
	}
	stateMu.Unlock()
	if err != nil {
		return nil, err
	}
	if r == nil || !r.pending() {
		return r, nil // done meanwhile (a concurrent retry)
	}
	var res providers.UploadResult
	upErr := providers.ErrNoUploader
	f, err := os.Open(bundlePath(dir, id))
	switch {
	case err != nil:
		upErr = fmt.Errorf("the kept bundle: %w", err)
	case env.Uploader != nil:
		res, upErr = env.Uploader.UploadFile(ctx, r.UploadName, f, r.Size)
	}
	if f != nil {
		f.Close()
	}
	stateMu.Lock()
	defer stateMu.Unlock()
	st, err = loadState(env)
	if err != nil {
		return nil, err
	}
	r = st.Runs[id]
	if r == nil {
		return nil, fmt.Errorf("diagnostics: run %s vanished from the state", id)
	}
	r.Attempts++
	t := now(env).UTC()
	lu := &LastUpload{RequestID: id, Size: r.Size, Time: t}
	if upErr != nil {
		r.State, r.Error = StateUploadFailed, upErr.Error()
		lu.Result, lu.Error = "Failed", upErr.Error()
	} else {
		r.State, r.Error, r.BlobName, r.UploadID, r.UploadedAt = StateUploaded, "", res.BlobName, res.ID, t
		lu.Result, lu.BlobName, lu.UploadID = "Succeeded", res.BlobName, res.ID
	}
	st.LastUpload = lu
	if err := saveState(dir, st); err != nil {
		return r, err
	}
	if upErr != nil {
		env.Logger.Warn("diagnostic bundle upload failed; kept for a retry", "request", id, "attempt", r.Attempts, "error", upErr)
		return r, fmt.Errorf("upload %s: %w", r.UploadName, upErr)
	}
	_ = os.Remove(bundlePath(dir, id))
	env.Logger.Info("diagnostic bundle uploaded", "request", id, "blob", res.BlobName, "size", r.Size)
	return r, nil
}
