package providers

import (
	"fmt"
	"testing"
	"time"
)

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
