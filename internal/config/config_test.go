package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func write(t *testing.T, body string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "twinlet.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	os.Chmod(p, mode)
	return p
}

func TestLoad(t *testing.T) {
	tests := []struct {
		name, body string
		mode       os.FileMode
		wantErr    string
	}{
		{"good", "root: /srv/r\nresync: 90s\nlog: {format: json, level: debug}\n", 0o644, ""},
		{"empty", "", 0o600, ""},
		{"unknown key", "root: /\nresyncc: 5m\n", 0o644, "line 2: field resyncc not found"},
		{"bad level", "log: {level: loud}\n", 0o644, "log.level"},
		{"workers", "workers: 8\n", 0o644, ""},
		{"too many workers", "workers: 1000\n", 0o644, "workers: 1000 is not between 1 and 64"},
		{"two credentials", "connection: {connectionString: x, keyFile: /k}\n", 0o644, "only one"},
		{"writable by others", "root: /\n", 0o666, "group or others"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Load(write(t, tt.body, tt.mode), true)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if tt.name == "good" && (c.Root != "/srv/r" || c.Resync != 90*time.Second || c.Log.Format != "json" || c.StateDir != "/var/lib/twinlet") {
					t.Fatalf("config = %+v", c)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want %q", err, tt.wantErr)
			}
		})
	}
}

func TestMissingFile(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "none.yaml")
	if _, err := Load(missing, false); err != nil {
		t.Fatalf("absent default config: %v", err)
	}
	if _, err := Load(missing, true); err == nil {
		t.Fatal("an explicitly named config that is missing must be an error")
	}
}
