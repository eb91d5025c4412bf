package providers

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestResolveConfinesToRoot(t *testing.T) {
	root := t.TempDir()
	env := &Env{Root: root}
	mk := func(p string) { os.MkdirAll(filepath.Join(root, p), 0o755) }
	link := func(target, at string) {
		if err := os.Symlink(target, filepath.Join(root, at)); err != nil {
			t.Fatal(err)
		}
	}
	mk("etc/app")
	mk("opt/real")
	link("/opt/real", "etc/abs")         // absolute target, inside the root
	link("../opt/real", "etc/rel")       // relative target, inside the root
	link("../../../../../../", "etc/up") // climbs out
	link("/etc/passwd", "etc/passwd-link")
	link("loop2", "etc/loop1")
	link("loop1", "etc/loop2")

	tests := []struct {
		in, want string
		follow   bool
		err      bool
	}{
		{in: "/etc/app/x.conf", want: "etc/app/x.conf"},
		{in: "/etc/abs/x", want: "opt/real/x"},
		{in: "/etc/rel/x", want: "opt/real/x"},
		{in: "/etc/up/x", err: true},
		{in: "etc/relative", err: true},
		{in: "/etc/../root", err: true},
		// A final link is not followed unless asked, and then stays inside.
		{in: "/etc/passwd-link", want: "etc/passwd-link"},
		{in: "/etc/passwd-link", follow: true, want: "etc/passwd"},
		{in: "/etc/loop1/x", err: true},
	}
	for _, tt := range tests {
		resolve := env.Resolve
		if tt.follow {
			resolve = env.ResolveFollow
		}
		got, err := resolve(tt.in)
		if tt.err {
			if err == nil {
				t.Errorf("%s: resolved to %s, want an error", tt.in, got)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tt.in, err)
			continue
		}
		if want := filepath.Join(root, tt.want); got != want {
			t.Errorf("%s = %s, want %s", tt.in, got, want)
		}
	}
	if _, err := env.Resolve("/etc/up/x"); !errors.Is(err, ErrOutsideRoot) {
		t.Errorf("escape error does not wrap ErrOutsideRoot: %v", err)
	}
}

func TestAllowed(t *testing.T) {
	env := &Env{Root: "/x"}
	for p, want := range map[string]bool{
		"/etc/motd": true, "/etc": true, "/etcetera/x": false, "/root/.ssh/authorized_keys": false,
		"/var/lib/app/x": true, "/var/log/x": false, "/usr/local/bin/x": true,
	} {
		if got := env.Allowed(p); got != want {
			t.Errorf("Allowed(%s) = %v, want %v", p, got, want)
		}
	}
	env.AllowedRoots = []string{"/srv/kiosk"}
	if env.Allowed("/etc/motd") || !env.Allowed("/srv/kiosk/a") {
		t.Error("explicit allowed roots not honoured")
	}
}

func TestRegisterRefusesBadIDs(t *testing.T) {
	for name, info := range map[string]Info{
		"empty id": {New: func() Provider { return nil }},
		"no New":   {ID: "x-test-no-new"},
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s: Register did not panic", name)
				}
			}()
			Register(info)
		}()
	}
	// The registry is global: a fresh id per run keeps -count=N honest.
	id := fmt.Sprintf("x-test-dup-%d", time.Now().UnixNano())
	Register(Info{ID: id, New: func() Provider { return nil }})
	defer func() {
		if recover() == nil {
			t.Error("duplicate id did not panic")
		}
	}()
	Register(Info{ID: id, New: func() Provider { return nil }})
}

func TestChangeString(t *testing.T) {
	c := Change{Action: Update, Item: "motd", Before: "mode 0600", After: "mode 0644"}
	if got := c.String(); got != "~ motd: mode 0600 -> mode 0644" {
		t.Fatal(got)
	}
	if got := (Change{Action: Delete, Item: "x"}).String(); got != "- x" {
		t.Fatal(got)
	}
}
