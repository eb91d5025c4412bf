package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/twinlet/twinlet/providers"
	_ "github.com/twinlet/twinlet/providers/standard"
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
		{"provider dirs", "providerDirs: [/usr/lib/twinlet/providers.d, /srv/providers.d]\n", 0o644, ""},
		{"relative provider dir", "root: /\nproviderDirs:\n  - /ok\n  - providers.d\n", 0o644, ":4: providerDirs[1]: \"providers.d\" is not an absolute path"},
		{"cloud of an unknown section", "providerDirs: []\ncloud: {sections: [vendorIni]}\n", 0o644, "unknown section \"vendorIni\""},
		{"too many workers", "workers: 1000\n", 0o644, "workers: 1000 is not between 1 and 64"},
		{"two credentials", "connection: {connectionString: x, keyFile: /k}\n", 0o644, "only one"},
		{"tpm slot", "connection: {tpm: {tcti: 'swtpm:port=2321', slot: 9}}\n", 0o644, ""},
		{"tpm bad slot", "connection: {tpm: {slot: 10}}\n", 0o644, "connection.tpm.slot"},
		{"identities", "identities: {a: {slot: 2, module: m, users: ['1001', svc]}, b: {keyFile: /k, users: [web]}}\n", 0o644, ""},
		{"identity two sources", "identities: {a: {slot: 2, keyFile: /k}}\n", 0o644, "identities.a: set one of slot, keyFile"},
		{"identity no source", "identities: {a: {users: [x]}}\n", 0o644, "identities.a: set one of"},
		{"identity bad slot", "identities: {a: {slot: 12}}\n", 0o644, "identities.a.slot"},
		{"user twice", "identities: {a: {slot: 1, users: [x]}, b: {slot: 2, users: [x]}}\n", 0o644, "identities.b.users: \"x\" is already served identity a"},
		{"tpm and key", "connection: {tpm: {slot: 1}, keyFile: /k}\n", 0o644, "only one"},
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

// located loads body (mode 0600) and returns the error with the file's
// path replaced by F.
func located(t *testing.T, body string, mode os.FileMode) (Config, string) {
	t.Helper()
	p := write(t, body, mode)
	c, err := Load(p, true)
	if err == nil {
		return c, ""
	}
	return c, strings.ReplaceAll(err.Error(), p, "F")
}

func TestCloud(t *testing.T) {
	c, err := located(t, `root: /
cloud:
  sections: [hostname, files, sysctl]
  files:
    allow: ["/etc/kiosk/**"]
    privileged: true
  sysctl:
    deny: []
`, 0o600)
	if err != "" {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c.Cloud.Sections, []string{"hostname", "files", "sysctl"}) {
		t.Fatalf("sections %q", c.Cloud.Sections)
	}
	files, _ := providers.Lookup("files")
	if r := c.Cloud.Rules["files"]; !reflect.DeepEqual(r.Deny, files.CloudDeny) || !reflect.DeepEqual(r.Allow, []string{"/etc/kiosk/**"}) || !r.Privileged {
		t.Fatalf("files rules %+v: an absent deny keeps the provider's defaults", r)
	}
	if r := c.Cloud.Rules["sysctl"]; r.Deny == nil || len(r.Deny) != 0 {
		t.Fatalf("sysctl rules %+v: an explicit empty deny opens every key", r)
	}
	if _, ok := c.Cloud.Rules["hostname"]; ok {
		t.Fatal("rules invented for hostname")
	}
	// Absent block: every section, provider defaults (nil rules).
	if c, err := located(t, "root: /\n", 0o600); err != "" || c.Cloud.Sections != nil || c.Cloud.Rules != nil {
		t.Fatalf("absent cloud block: %+v %s", c.Cloud, err)
	}
	// An empty list: the twin may set nothing.
	if c, err := located(t, "cloud: {sections: []}\n", 0o600); err != "" || c.Cloud.Sections == nil || len(c.Cloud.Sections) != 0 {
		t.Fatalf("empty sections: %#v %s", c.Cloud.Sections, err)
	}

	for _, tt := range []struct{ name, body, want string }{
		{"unknown section", "cloud:\n  sections: [hostname, hostnam]\n", "F:2: cloud.sections[1]: unknown section \"hostnam\""},
		{"listed twice", "cloud:\n  sections:\n    - files\n    - files\n", "F:4: cloud.sections[1]: \"files\" is listed twice"},
		{"rules for an unknown section", "cloud:\n  packagez: {deny: [x]}\n", "F:2: cloud.packagez: unknown section"},
		{"rules for a section without a scope", "cloud:\n  hostname: {deny: [x]}\n", "F:2: cloud.hostname: section hostname has no cloud rules (only "},
		{"unknown rule key", "cloud:\n  files:\n    denied: [x]\n", "line 3: cloud.files: unknown key \"denied\""},
		{"deny not a list", "cloud:\n  files: {deny: /etc}\n", "line 2: cloud.files.deny: want a list"},
		{"glob not a string", "cloud:\n  files:\n    deny:\n      - [a]\n", "line 4: cloud.files.deny: want a string"},
		{"privileged not a bool", "cloud:\n  files: {privileged: yes please}\n", "line 2: cloud.files.privileged: want true or false"},
		{"empty glob", "cloud:\n  sysctl:\n    allow:\n      - net.**\n      - \"\"\n", "F:5: cloud.sysctl.allow[1]: an empty pattern"},
		{"not a mapping", "cloud: [files]\n", "line 1: cloud: want a mapping"},
		{"sections not a list", "cloud: {sections: files}\n", "line 1: cloud.sections: want a list"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := located(t, tt.body, 0o600); !strings.Contains(err, tt.want) {
				t.Fatalf("err = %q, want %q", err, tt.want)
			}
		})
	}
}

func TestAllowedRoots(t *testing.T) {
	for _, tt := range []struct{ body, want string }{
		{"allowedRoots: [/etc, /]\n", `F:1: allowedRoots[1]: "/" would let`},
		{"allowedRoots:\n  - /etc\n  - /proc\n", "F:3: allowedRoots[1]: /proc is refused: /proc is a kernel file system"},
		{"allowedRoots: [/sys/kernel]\n", "F:1: allowedRoots[0]: /sys/kernel is refused"},
		{"allowedRoots: [/dev]\n", "allowedRoots[0]: /dev is refused"},
		{"allowedRoots: [etc]\n", `allowedRoots[0]: "etc" is not an absolute device path`},
		{"allowedRoots: [/etc/../root]\n", `allowedRoots[0]: "/etc/../root" is not clean`},
		{"allowedRoots: [/device, /devices/x, /srv]\n", ""},
	} {
		if _, err := located(t, tt.body, 0o600); tt.want == "" && err != "" || !strings.Contains(err, tt.want) {
			t.Errorf("%q: err = %q, want %q", tt.body, err, tt.want)
		}
	}
	// Under the root: a link (absolute, relative, or out of the root) is
	// refused with the config's line; a missing directory is fine.
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "srv/data"), 0o755)
	os.Symlink("/srv/data", filepath.Join(root, "srv/abs"))
	os.Symlink("data", filepath.Join(root, "srv/rel"))
	os.Symlink(t.TempDir(), filepath.Join(root, "out"))
	os.WriteFile(filepath.Join(root, "file"), nil, 0o644)
	for _, tt := range []struct{ roots, want string }{
		{"[/srv/data, /srv/missing]", ""},
		{"[/srv/data, /srv/abs]", "F:2: allowedRoots[1]: /srv/abs is refused: it goes through a symbolic link"},
		{"[/srv/rel/x]", "allowedRoots[0]: /srv/rel/x is refused: it goes through a symbolic link"},
		{"[/out]", "allowedRoots[0]: /out is refused"},
		{"[/file]", "allowedRoots[0]: /file is refused: it is not a directory"},
	} {
		c, err := located(t, "root: "+root+"\nallowedRoots: "+tt.roots+"\n", 0o600)
		if err != "" {
			t.Fatal(err)
		}
		got := ""
		if err := c.CheckAllowedRoots(); err != nil {
			got = strings.ReplaceAll(err.Error(), c.src.file, "F")
		}
		if tt.want == "" && got != "" || !strings.Contains(got, tt.want) {
			t.Errorf("%s: err = %q, want %q", tt.roots, got, tt.want)
		}
	}
}

func TestStrictFiles(t *testing.T) {
	// An inline connection string needs a config only its owner reads.
	const inline = "connection:\n  connectionString: \"HostName=h;DeviceId=d;SharedAccessKey=a2V5\"\n"
	if _, err := located(t, inline, 0o600); err != "" {
		t.Fatalf("0600 config refused: %s", err)
	}
	if _, err := located(t, inline, 0o640); !strings.Contains(err, "F:2: connection.connectionString: refused: an inline connection string needs the config file to be mode 0600, and F is 0640") {
		t.Fatalf("0640 config with an inline connection string: %s", err)
	}
	dir := t.TempDir()
	key := filepath.Join(dir, "device.key")
	os.WriteFile(key, []byte("HostName=h;DeviceId=d;SharedAccessKey=a2V5"), 0o600)
	body := "connection:\n  keyFile: " + key + "\n"
	if _, err := located(t, body, 0o644); err != "" {
		t.Fatalf("good key file refused: %s", err)
	}
	os.Chmod(key, 0o640)
	if _, err := located(t, body, 0o644); !strings.Contains(err, "F:2: connection.keyFile: "+key+": refused: mode 0640 lets group or others read it") {
		t.Fatalf("readable key file: %s", err)
	}
	os.Chmod(key, 0o600)
	os.Chmod(dir, 0o777)
	if _, err := located(t, body, 0o644); !strings.Contains(err, "connection.keyFile: "+key+": directory "+dir+": refused: mode 0777") {
		t.Fatalf("key file in a writable directory: %s", err)
	}
	os.Chmod(dir, 0o700)
	ca := filepath.Join(dir, "ca.pem")
	os.WriteFile(ca, nil, 0o666)
	os.Chmod(ca, 0o666)
	if _, err := located(t, "connection:\n  caFile: "+ca+"\n", 0o644); !strings.Contains(err, "F:2: connection.caFile: "+ca+": refused: mode 0666") {
		t.Fatalf("writable CA file: %s", err)
	}
	if os.Geteuid() == 0 {
		os.Chmod(ca, 0o644)
		os.Chown(ca, 4321, 4321)
		if _, err := located(t, "connection:\n  caFile: "+ca+"\n", 0o644); !strings.Contains(err, "refused: owned by uid 4321") {
			t.Fatalf("CA file owned by another user: %s", err)
		}
		// The config file itself, by another user.
		p := write(t, "root: /\n", 0o644)
		os.Chown(p, 4321, 4321)
		if _, err := Load(p, true); err == nil || !strings.Contains(err.Error(), "refused: owned by uid 4321") {
			t.Fatalf("config owned by another user: %v", err)
		}
	}
	// A key file that does not exist yet is left to the code opening it.
	if _, err := located(t, "connection:\n  keyFile: "+filepath.Join(dir, "none")+"\n", 0o644); err != "" {
		t.Fatalf("missing key file: %s", err)
	}
}

func TestExampleConfig(t *testing.T) {
	c, err := Load("../../examples/twinlet.yaml", true)
	if err != nil {
		t.Fatal(err)
	}
	files, _ := providers.Lookup("files")
	if len(c.Cloud.Sections) != 4 || len(c.Cloud.Rules["files"].Allow) == 0 || !reflect.DeepEqual(c.Cloud.Rules["files"].Deny, files.CloudDeny) {
		t.Fatalf("cloud %+v", c.Cloud)
	}
	c.Root = t.TempDir() // never look at this machine's /
	if err := c.CheckAllowedRoots(); err != nil {
		t.Fatal(err)
	}
}

// FuzzParse feeds arbitrary files to the strict decoder and the checks:
// they may refuse anything, but never panic, and what they accept is
// checked again without error.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"root: /\n",
		"cloud:\n  sections: [files]\n  files: {deny: [\"/etc/**\"], allow: [], privileged: true}\n",
		"allowedRoots: [/etc, /srv]\nlog: {level: debug}\n",
		"cloud: {sysctl: {deny: [a, b]}, sections: []}\n",
		"cloud:\n  files:\n    deny: [[x]]\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := parse("f.yaml", data, 0o600)
		if err != nil {
			return
		}
		if err := c.Check(); err != nil {
			t.Fatalf("accepted, then refused on a second check: %v", err)
		}
	})
}

// TestKeepAlive: connection.keepAlive sets the MQTT keep-alive, whole
// seconds from 1s to 1177s (beyond that IoT Hub would give up on the
// device sooner than 1.5 × the keep-alive it was told); a bad value is
// located.
func TestKeepAlive(t *testing.T) {
	c, err := located(t, "connection:\n  keyFile: /nonexistent/k\n  keepAlive: 15m\n", 0o600)
	if err != "" || c.Connection.KeepAlive != 15*time.Minute {
		t.Fatalf("keepAlive 15m: %v %s", c.Connection.KeepAlive, err)
	}
	if c, err := located(t, "root: /\n", 0o600); err != "" || c.Connection.KeepAlive != 0 {
		t.Fatalf("absent keepAlive: %v %s, want 0 (the default)", c.Connection.KeepAlive, err)
	}
	for _, tt := range []struct{ body, want string }{
		{"connection:\n  keyFile: /k\n  keepAlive: 0s\n", "F:3: connection.keepAlive: 0s is not between 1s and 1177s"},
		{"connection:\n  keepAlive: 1178s\n", "F:2: connection.keepAlive: 19m38s is not between 1s and 1177s"},
		{"connection:\n  keepAlive: -5s\n", "F:2: connection.keepAlive: -5s is not between"},
		{"connection:\n  keepAlive: 90500ms\n", "F:2: connection.keepAlive: 1m30.5s is not whole seconds"},
		{"connection:\n  keepAlive: 240\n", "line 2: cannot unmarshal !!int `240` into time.Duration"},
	} {
		if _, err := located(t, tt.body, 0o600); !strings.Contains(err, tt.want) {
			t.Errorf("%q: %s, want %s", tt.body, err, tt.want)
		}
	}
}

// TestTimeouts: timeouts replaces a section's call timeout; an unknown
// section and a value out of range are located.
func TestTimeouts(t *testing.T) {
	c, err := located(t, "timeouts:\n  packages: 2h\n  services: 90s\n", 0o600)
	if err != "" || c.Timeouts["packages"] != 2*time.Hour || c.Timeouts["services"] != 90*time.Second {
		t.Fatalf("timeouts: %v %s", c.Timeouts, err)
	}
	for _, tt := range []struct{ body, want string }{
		{"timeouts:\n  packagez: 1h\n", "F:2: timeouts.packagez: unknown section \"packagez\""},
		{"timeouts:\n  hostname: 1h\n  packages: 0s\n", "F:3: timeouts.packages: 0s is not between 1s and 24h"},
		{"timeouts:\n  packages: 48h\n", "F:2: timeouts.packages: 48h0m0s is not between 1s and 24h"},
	} {
		if _, err := located(t, tt.body, 0o600); !strings.Contains(err, tt.want) {
			t.Errorf("%q: %s, want %s", tt.body, err, tt.want)
		}
	}
}
