package diagnostics_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"github.com/twinlet/twinlet/internal/testutil"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/twinlet/twinlet/internal/agent"
	"github.com/twinlet/twinlet/internal/hub"
	"github.com/twinlet/twinlet/internal/hub/azurite/azuritetest"
	"github.com/twinlet/twinlet/internal/iothub"
	"github.com/twinlet/twinlet/providers"
	"github.com/twinlet/twinlet/providers/diagnostics"
	"github.com/twinlet/twinlet/providers/providertest"
)

func write(t *testing.T, root, p string, data []byte, mode os.FileMode) {
	t.Helper()
	hp := filepath.Join(root, p)
	if err := os.MkdirAll(filepath.Dir(hp), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(hp, data, mode); err != nil {
		t.Fatal(err)
	}
}

// journal writes a journal file into <root>/var/log/journal with the real
// systemd-journal-remote (export format on stdin).
func journal(t *testing.T, root string) bool {
	t.Helper()
	bin := "/lib/systemd/systemd-journal-remote"
	if _, err := os.Stat(bin); err != nil {
		return false
	}
	dir := filepath.Join(root, "var/log/journal")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	export := "__REALTIME_TIMESTAMP=1764700000000000\n_SYSTEMD_UNIT=app.service\nSYSLOG_IDENTIFIER=app\nMESSAGE=app started\n_HOSTNAME=dev1\n\n" +
		"__REALTIME_TIMESTAMP=1764700001000000\n_SYSTEMD_UNIT=other.service\nSYSLOG_IDENTIFIER=other\nMESSAGE=not this one\n_HOSTNAME=dev1\n\n"
	cmd := exec.Command(bin, "--output="+filepath.Join(dir, "remote.journal"), "-")
	cmd.Stdin = strings.NewReader(export)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("systemd-journal-remote: %v: %s", err, out)
	}
	return true
}

// untar reads a bundle into name → content.
func untar(t *testing.T, b []byte) map[string][]byte { return testutil.Untar(t, b) }

func manifest(t *testing.T, files map[string][]byte) map[string]diagnostics.Entry {
	t.Helper()
	var m diagnostics.Manifest
	if err := json.Unmarshal(files["manifest.json"], &m); err != nil {
		t.Fatalf("manifest.json: %v", err)
	}
	out := map[string]diagnostics.Entry{}
	for _, e := range m.Entries {
		out[e.Source] = e
	}
	return out
}

func section(extra string) json.RawMessage {
	return json.RawMessage(`{
	  "collectors": {
	    "logs": {"files": {"paths": ["/var/log/app/*.log", "/var/log/missing/*"]}},
	    "echo": {"command": {"argv": ["/bin/echo", "hello", "$(not a shell)"], "timeout": "10s"}}
	  },
	  "maxBundleSize": 4096` + extra + `}`)
}

// TestBundleKeptWithoutUploader collects a bundle with no cloud
// connection: the upload fails (transient), the bundle is kept and its
// manifest lists every entry with its size and hash, the file cut by the
// size cap as truncated, and the link out of the root left out.
func TestBundleKeptWithoutUploader(t *testing.T) {
	p := diagnostics.New()
	env := providertest.NewEnv(t)
	write(t, env.Root, "var/log/app/a.log", []byte("line a\n"), 0o644)
	big := bytes.Repeat([]byte("0123456789abcdef"), 512) // 8 KiB, over the cap
	write(t, env.Root, "var/log/app/big.log", big, 0o644)
	outside := filepath.Join(t.TempDir(), "secret.log")
	write(t, filepath.Dir(outside), "secret.log", []byte("host secret"), 0o600)
	if err := os.Symlink(outside, filepath.Join(env.Root, "var/log/app/link.log")); err != nil {
		t.Fatal(err)
	}
	raw := section(`, "requests": {"r1": {}}`)
	changes := providertest.PlanOnly(t, p, env, raw)
	if got := providertest.Lines(changes); !reflect.DeepEqual(got, []string{"+ requests/r1: collect 2 collectors, upload as diagnostics-r1.tar.gz"}) {
		t.Fatalf("plan: %q", got)
	}
	if !changes[0].Once {
		t.Error("a request is not a Once change")
	}
	err := p.Apply(context.Background(), env, changes[0])
	if !errors.Is(err, providers.ErrNoUploader) {
		t.Fatalf("apply without an uploader: %v", err)
	}
	obs := providertest.ObserveJSON(t, p, env, raw)
	r1 := obs["requests"].(map[string]any)["r1"].(map[string]any)
	if r1["state"] != diagnostics.StateUploadFailed || r1["attempts"] != 1.0 || !strings.Contains(r1["error"].(string), "no cloud connection") {
		t.Errorf("reported r1: %v", r1)
	}
	if lu := obs["lastUpload"].(map[string]any); lu["result"] != "Failed" || lu["requestId"] != "r1" {
		t.Errorf("lastUpload: %v", lu)
	}
	if pend := obs["pending"].(map[string]any); pend["count"] != 1.0 {
		t.Errorf("pending: %v", pend)
	}
	// The retry is planned as an upload of the kept bundle, not a second collection.
	if got := providertest.Lines(providertest.PlanOnly(t, p, env, raw)); len(got) != 1 || !strings.HasPrefix(got[0], "~ uploads/r1: kept, UploadFailed after 1 attempt -> upload diagnostics-r1.tar.gz") {
		t.Errorf("plan after the failure: %q", got)
	}
	kept, err := os.ReadFile(filepath.Join(env.StateDir, "diagnostics", "pending", "r1.tar.gz"))
	if err != nil {
		t.Fatal(err)
	}
	files := untar(t, kept)
	m := manifest(t, files)
	if string(files["files/var/log/app/a.log"]) != "line a\n" {
		t.Errorf("a.log in the bundle: %q", files["files/var/log/app/a.log"])
	}
	if e := m["/var/log/app/a.log"]; e.Size != 7 || e.SHA256 != sum([]byte("line a\n")) || e.Truncated {
		t.Errorf("a.log entry: %+v", e)
	}
	if e := m["/var/log/app/big.log"]; !e.Truncated || e.OriginalSize != int64(len(big)) || e.Size != int64(len(files[e.Path])) || e.SHA256 != sum(files[e.Path]) {
		t.Errorf("big.log entry: %+v", e)
	}
	if _, ok := m["/var/log/app/link.log"]; ok {
		t.Error("the link out of the root was followed")
	}
	for name, data := range files {
		if bytes.Contains(data, []byte("host secret")) {
			t.Errorf("%s holds the file outside the root", name)
		}
	}
	if e := m["/var/log/missing/*"]; !strings.Contains(e.Error, "does not exist") {
		t.Errorf("missing glob entry: %+v", e)
	}
	// The command ran without a shell (collectors run in name order: echo first).
	if e := m["/bin/echo hello $(not a shell)"]; e.Truncated || string(files[e.Path]) != "hello $(not a shell)\n" {
		t.Errorf("echo entry: %+v", e)
	}
}

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func TestJournalAndCommandOutput(t *testing.T) {
	p := diagnostics.New()
	env := providertest.NewEnv(t)
	if !journal(t, env.Root) {
		t.Skip("systemd-journal-remote is not installed: run `make diag-tools` (apt-get install systemd-journal-remote)")
	}
	raw := json.RawMessage(`{"collectors": {
	  "app": {"journal": {"units": ["app.service"], "lines": 100}},
	  "echo": {"command": {"argv": ["/bin/echo", "hello"]}},
	  "fails": {"command": {"argv": ["/bin/false"]}}
	}, "requests": {"j1": {"uploadName": "support/j1.tar.gz"}}}`)
	changes := providertest.PlanOnly(t, p, env, raw)
	if err := p.Apply(context.Background(), env, changes[0]); !errors.Is(err, providers.ErrNoUploader) {
		t.Fatalf("apply: %v", err)
	}
	kept, err := os.ReadFile(filepath.Join(env.StateDir, "diagnostics", "pending", "j1.tar.gz"))
	if err != nil {
		t.Fatal(err)
	}
	files := untar(t, kept)
	log := string(files["journal/app.log"])
	if !strings.Contains(log, "app started") || strings.Contains(log, "not this one") {
		t.Errorf("journal/app.log: %q", log)
	}
	if got := string(files["commands/echo.out"]); got != "hello\n" {
		t.Errorf("commands/echo.out: %q", got)
	}
	var m diagnostics.Manifest
	_ = json.Unmarshal(files["manifest.json"], &m)
	var failed bool
	for _, e := range m.Entries {
		if e.Collector == "fails" && strings.Contains(e.Error, "exit status 1") {
			failed = true
		}
		if e.Collector == "app" && !strings.Contains(e.Source, "--directory="+filepath.Join(env.Root, "var/log/journal")) {
			t.Errorf("journalctl did not read the root's journal: %s", e.Source)
		}
	}
	if !failed {
		t.Errorf("the failing command is not reported: %+v", m.Entries)
	}
}

func TestInvalid(t *testing.T) {
	p := diagnostics.New()
	env := providertest.NewEnv(t)
	for _, tc := range []struct {
		raw, pointer string
	}{
		{`{"collectors": {"x": {"files": {"paths": ["var/log"]}}}}`, "/collectors/x/files/paths/0"},
		{`{"collectors": {"x": {"files": {"paths": ["/var/../etc/*"]}}}}`, "/collectors/x/files/paths/0"},
		{`{"collectors": {"x": {"command": {"argv": ["ls"]}}}}`, "/collectors/x/command/argv/0"},
		{`{"collectors": {"x": {"command": {"argv": ["/bin/ls"], "timeout": "2d"}}}}`, "/collectors/x/command/timeout"},
		{`{"collectors": {"x": {"command": {"name": "df", "argv": ["/bin/df"]}}}}`, "/collectors/x/command"},
		{`{"collectors": {"x": {"command": {"name": "df", "timeout": "5s"}}}}`, "/collectors/x/command/timeout"},
		{`{"collectors": {"x": {"command": {"name": "df", "maxOutput": 100}}}}`, "/collectors/x/command/maxOutput"},
		{`{"collectors": {"x": {"command": {"name": "-df"}}}}`, "/collectors/x/command/name"},
		{`{"collectors": {"x": {"command": {}}}}`, "/collectors/x/command/argv"},
		{`{"collectors": {"x": {"journal": {"units": ["--all"]}}}}`, "/collectors/x/journal/units/0"},
		{`{"collectors": {"x": {"journal": {"since": "--x"}}}}`, "/collectors/x/journal/since"},
		{`{"collectors": {"x": {"journal": {}, "files": {"paths": ["/a"]}}}}`, "/collectors/x"},
		{`{"collectors": {"x": {"journal": {}}}, "requests": {"r": {"uploadName": "../up"}}}`, "/requests/r/uploadName"},
		{`{"requests": {"r": {}}}`, "/collectors"},
		{`{"maxBundleSize": 10}`, "/maxBundleSize"},
	} {
		_, err := p.Decode(env, json.RawMessage(tc.raw))
		got := providertest.Invalid(t, err)
		found := false
		for _, g := range got {
			if g == tc.pointer {
				found = true
			}
		}
		if !found {
			t.Errorf("%s: problems %q, want one at %s", tc.raw, got, tc.pointer)
		}
	}
}

func TestCloudScopeOnlyRequests(t *testing.T) {
	sc := diagnostics.New().(providers.CloudScoper)
	got := sc.CloudScope(providers.ScopeRules{}, json.RawMessage(`{"collectors": {"x": {"command": {"argv": ["/bin/sh"]}}}, "maxBundleSize": 5000, "requests": {"r": {}}}`))
	var ptrs []string
	for _, fe := range got {
		ptrs = append(ptrs, fe.Pointer)
	}
	if !reflect.DeepEqual(ptrs, []string{"/collectors", "/maxBundleSize"}) {
		t.Errorf("forbidden: %v", got)
	}
	if got := sc.CloudScope(providers.ScopeRules{}, json.RawMessage(`{"requests": {"r": {"uploadName": "a"}}}`)); len(got) != 0 {
		t.Errorf("a request alone is forbidden: %v", got)
	}
}

func TestInterruptedRequestNotRunAgain(t *testing.T) {
	p := diagnostics.New()
	env := providertest.NewEnv(t)
	env.Interrupted = map[string]bool{"requests/r9": true}
	raw := section(`, "requests": {"r9": {}}`)
	if got := providertest.PlanOnly(t, p, env, raw); len(got) != 0 {
		t.Errorf("plan of an interrupted request: %q", providertest.Lines(got))
	}
	obs := providertest.ObserveJSON(t, p, env, raw)
	if st := obs["requests"].(map[string]any)["r9"].(map[string]any)["state"]; st != diagnostics.StateInterrupted {
		t.Errorf("reported state %v", st)
	}
}

// uploadEnv is an Env whose uploader is a device of a twinhub linked to
// a real Azurite.
func uploadEnv(t *testing.T) (*providers.Env, *hub.Hub, *azuritetest.Azurite) {
	t.Helper()
	az := azuritetest.Start(t)
	az.CreateContainer("diag")
	fu, err := hub.ParseStorageConnectionString(az.ConnectionString())
	if err != nil {
		t.Fatal(err)
	}
	fu.Container, fu.CAPEM = "diag", az.CAPEM
	h, err := hub.New(hub.Options{MQTTAddr: "127.0.0.1:0", HTTPSAddr: "127.0.0.1:0", FileUpload: &fu})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	cs, err := h.CreateDevice("dev1")
	if err != nil {
		t.Fatal(err)
	}
	up, err := iothub.NewFileUploader(iothub.FileUploadConfig{HTTPSAddr: h.HTTPSAddr(), Timeout: time.Minute, Device: iothub.DeviceConfig{
		HostName: h.Hostname(), DeviceID: "dev1", Signer: iothub.KeySigner{Key: cs.SharedAccessKey}, CAPEM: append(h.CAPEM(), az.CAPEM...)}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(up.Close)
	env := providertest.NewEnv(t)
	env.Uploader = agent.Uploader{U: up}
	return env, h, az
}

func notifications(t *testing.T, h *hub.Hub, after *uint64) hub.FileUploadNotification {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		evs, err := h.WaitEvents(ctx, *after)
		if err != nil {
			t.Fatalf("no file-upload notification: %v", err)
		}
		for _, e := range evs {
			*after = e.Seq
			if e.Properties["iothub-message-source"] == hub.FileNotificationSource {
				var n hub.FileUploadNotification
				_ = json.Unmarshal(e.Body, &n)
				return n
			}
		}
	}
}

// TestUploadThroughTwinhub is the drift timeline with the real upload
// path: a request is collected and uploaded through twinhub into Azurite
// (read back with azblob), the notification reaches the event stream; with
// Azurite stopped the next request's upload fails, is reported and kept,
// and the retry after Azurite is back uploads the kept bundle byte for byte.
func TestUploadThroughTwinhub(t *testing.T) {
	env, h, az := uploadEnv(t)
	p := diagnostics.New()
	write(t, env.Root, "var/log/app/a.log", []byte("first\n"), 0o644)
	var seq uint64

	raw := section(`, "requests": {"r1": {"uploadName": "case/r1.tar.gz"}}`)
	providertest.Converge(t, p, env, raw)
	obs := providertest.ObserveJSON(t, p, env, raw)
	r1 := obs["requests"].(map[string]any)["r1"].(map[string]any)
	if id, _ := r1["uploadId"].(string); r1["state"] != diagnostics.StateUploaded || r1["blobName"] != "dev1/case/r1.tar.gz" || id == "" {
		t.Fatalf("r1: %v", r1)
	}
	blob, err := az.Download("diag", "dev1/case/r1.tar.gz")
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(blob)) != int64(r1["size"].(float64)) {
		t.Errorf("blob of %d bytes, reported size %v", len(blob), r1["size"])
	}
	if files := untar(t, blob); string(files["files/var/log/app/a.log"]) != "first\n" || files["manifest.json"] == nil {
		t.Errorf("uploaded bundle: %v", files)
	}
	if n := notifications(t, h, &seq); !n.IsSuccess || n.BlobName != "dev1/case/r1.tar.gz" || n.BlobSizeInBytes != int64(len(blob)) || n.CorrelationID != r1["uploadId"] {
		t.Errorf("notification: %+v", n)
	}
	if _, err := os.Stat(filepath.Join(env.StateDir, "diagnostics", "pending", "r1.tar.gz")); !os.IsNotExist(err) {
		t.Errorf("the uploaded bundle is still kept: %v", err)
	}
	// lastUpload: the hub's upload (correlation) id, the size and blob
	// name of what landed in the storage, the result.
	if lu := obs["lastUpload"].(map[string]any); lu["result"] != "Succeeded" || lu["blobName"] != "dev1/case/r1.tar.gz" ||
		lu["uploadId"] != r1["uploadId"] || lu["size"] != float64(len(blob)) || lu["requestId"] != "r1" {
		t.Errorf("lastUpload: %v", lu)
	}

	// The storage goes away: the second request fails to upload and is kept.
	az.Stop()
	raw = section(`, "requests": {"r1": {"uploadName": "case/r1.tar.gz"}, "r2": {}}`)
	changes := providertest.PlanOnly(t, p, env, raw)
	if got := providertest.Lines(changes); !reflect.DeepEqual(got, []string{"+ requests/r2: collect 2 collectors, upload as diagnostics-r2.tar.gz"}) {
		t.Fatalf("plan r2: %q", got)
	}
	var ue *iothub.UploadError
	if err := p.Apply(context.Background(), env, changes[0]); !errors.As(err, &ue) || !ue.Retryable {
		t.Fatalf("upload with Azurite down: %v", err)
	}
	if n := notifications(t, h, &seq); n.IsSuccess {
		t.Errorf("notification of the failed upload: %+v", n)
	}
	obs = providertest.ObserveJSON(t, p, env, raw)
	if r2 := obs["requests"].(map[string]any)["r2"].(map[string]any); r2["state"] != diagnostics.StateUploadFailed || r2["error"] == "" {
		t.Errorf("r2 after the failure: %v", r2)
	}
	kept, err := os.ReadFile(filepath.Join(env.StateDir, "diagnostics", "pending", "r2.tar.gz"))
	if err != nil {
		t.Fatal(err)
	}

	// Back up: the retry uploads the kept bundle, byte for byte.
	az.Restart()
	az.CreateContainer("diag")
	if got := providertest.Lines(providertest.Converge(t, p, env, raw)); len(got) != 1 || !strings.HasPrefix(got[0], "~ uploads/r2:") {
		t.Errorf("retry plan: %q", got)
	}
	blob, err = az.Download("diag", "dev1/diagnostics-r2.tar.gz")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(blob, kept) {
		t.Errorf("uploaded %d bytes, kept %d", len(blob), len(kept))
	}
	obs = providertest.ObserveJSON(t, p, env, raw)
	if r2 := obs["requests"].(map[string]any)["r2"].(map[string]any); r2["state"] != diagnostics.StateUploaded || r2["attempts"] != 2.0 {
		t.Errorf("r2 after the retry: %v", r2)
	}

	// The direct method collects and uploads at once.
	info, _ := providers.Lookup("diagnostics")
	out, err := info.Methods["collect"].Call(context.Background(), env, json.RawMessage(`{"uploadName": "now.tar.gz"}`))
	if err != nil {
		t.Fatal(err)
	}
	res := out.(diagnostics.MethodResult)
	if res.State != diagnostics.StateUploaded || res.BlobName != "dev1/now.tar.gz" {
		t.Errorf("method result: %+v", res)
	}
	if _, err := az.Download("diag", "dev1/now.tar.gz"); err != nil {
		t.Errorf("the method's bundle: %v", err)
	}
	if _, err := info.Methods["collect"].Call(context.Background(), env, json.RawMessage(`{"uploadName": "../x"}`)); len(providertest.Invalid(t, err)) != 1 {
		t.Errorf("bad uploadName: %v", err)
	}
}

// TestPendingCap keeps the kept bundles under maxPendingSize: the oldest
// is dropped (and reported Dropped, not retried), and what a crash left
// in pending/ (a partial bundle, a bundle never recorded) is swept.
func TestPendingCap(t *testing.T) {
	p := diagnostics.New()
	env := providertest.NewEnv(t)
	write(t, env.Root, "var/log/app/a.log", []byte("line a\n"), 0o644)
	pending := filepath.Join(env.StateDir, "diagnostics", "pending")
	write(t, pending, "crashed.tar.gz.tmp", []byte("partial"), 0o600)
	write(t, pending, "orphan.tar.gz", []byte("never recorded"), 0o600)
	clock := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	env.Now = func() time.Time { clock = clock.Add(time.Second); return clock }
	for _, id := range []string{"a", "b"} {
		raw := section(`, "maxPendingSize": 1, "requests": {"` + id + `": {}}`)
		changes := providertest.PlanOnly(t, p, env, raw)
		if err := p.Apply(context.Background(), env, changes[0]); !errors.Is(err, providers.ErrNoUploader) {
			t.Fatalf("apply %s: %v", id, err)
		}
	}
	raw := section(`, "maxPendingSize": 1, "requests": {"a": {}, "b": {}}`)
	obs := providertest.ObserveJSON(t, p, env, raw)
	reqs := obs["requests"].(map[string]any)
	if a := reqs["a"].(map[string]any); a["state"] != diagnostics.StateDropped {
		t.Errorf("the older bundle: %v", a)
	}
	if b := reqs["b"].(map[string]any); b["state"] != diagnostics.StateUploadFailed {
		t.Errorf("the newer bundle: %v", b)
	}
	if got := providertest.Lines(providertest.PlanOnly(t, p, env, raw)); len(got) != 1 || !strings.HasPrefix(got[0], "~ uploads/b:") {
		t.Errorf("plan: %q", got)
	}
	ents, _ := os.ReadDir(pending)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if !reflect.DeepEqual(names, []string{"b.tar.gz"}) {
		t.Errorf("pending/ holds %v, want only b.tar.gz", names)
	}
}
