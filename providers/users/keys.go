package users

import (
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
	"syscall"

	"github.com/twinlet/twinlet/providers"
)

// keyTypes are the public key types accepted in authorizedKeys. DSA keys
// are refused: OpenSSH no longer accepts them.
var keyTypes = map[string]bool{
	"ssh-ed25519":                        true,
	"ssh-rsa":                            true,
	"ecdsa-sha2-nistp256":                true,
	"ecdsa-sha2-nistp384":                true,
	"ecdsa-sha2-nistp521":                true,
	"sk-ssh-ed25519@openssh.com":         true,
	"sk-ecdsa-sha2-nistp256@openssh.com": true,
}

// keysHeader starts every authorized_keys file that twinlet writes.
const keysHeader = "# Managed by twinlet (section \"users\"): edits are overwritten.\n"

// checkKey validates one authorized_keys line: "type base64 [comment]",
// where the base64 blob is an SSH wire-format key whose own type is type.
// Options (command="…", from="…") are refused: they change what a key
// grants and belong to local policy files, not to this list.
func checkKey(line string) error {
	if strings.ContainsFunc(line, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return errors.New("must be one line without control characters")
	}
	f := strings.Fields(line)
	if len(f) < 2 {
		return errors.New("not an SSH public key: want \"<type> <base64> [comment]\"")
	}
	if !keyTypes[f[0]] {
		if strings.ContainsAny(f[0], "=\",") || strings.Contains(line, " ssh-") || strings.Contains(line, " ecdsa-") {
			return errors.New("key options (command=, from=, …) are not supported: give the bare key")
		}
		return fmt.Errorf("key type %q is not supported (ssh-ed25519, ssh-rsa, ecdsa-sha2-nistp256/384/521, sk-ssh-ed25519@openssh.com, sk-ecdsa-sha2-nistp256@openssh.com)", f[0])
	}
	blob, err := base64.StdEncoding.DecodeString(f[1])
	if err != nil {
		return fmt.Errorf("the key's base64 does not decode: %v", err)
	}
	typ, rest, ok := sshString(blob)
	if !ok || string(typ) != f[0] {
		return fmt.Errorf("the key blob is not a %s key", f[0])
	}
	// The key material: at least one more well-formed field; for
	// ed25519, exactly the 32-byte public key.
	pub, after, ok := sshString(rest)
	switch {
	case !ok || len(pub) == 0:
		return fmt.Errorf("the %s key blob holds no key", f[0])
	case f[0] == "ssh-ed25519" && (len(pub) != 32 || len(after) != 0):
		return errors.New("the ssh-ed25519 key blob is not a 32-byte key")
	}
	return nil
}

// sshString reads one length-prefixed string of the SSH wire format.
func sshString(b []byte) (s, rest []byte, ok bool) {
	if len(b) < 4 {
		return nil, nil, false
	}
	n := binary.BigEndian.Uint32(b)
	if uint64(n) > uint64(len(b)-4) {
		return nil, nil, false
	}
	return b[4 : 4+n], b[4+n:], true
}

// renderKeys is the authorized_keys file for keys: the header, then one
// key a line, normalised to single spaces.
func renderKeys(keys []string) []byte {
	var b strings.Builder
	b.WriteString(keysHeader)
	for _, k := range keys {
		b.WriteString(strings.Join(strings.Fields(k), " "))
		b.WriteByte('\n')
	}
	return []byte(b.String())
}

// keysState is what the user's authorized_keys looks like.
type keysState struct {
	// count is the number of key lines; -1 when there is no file.
	count int
	// inSync is true when the file, ~/.ssh and their owners and modes
	// are what want needs.
	inSync bool
}

// openHome opens a user's home directory without following a link on
// the way. missing is true when it does not exist; a home that cannot be
// reached without following a link is neither opened nor missing: twinlet
// neither creates nor writes through it. The caller closes the Dir.
func openHome(root *providers.Dir, home string) (hd *providers.Dir, missing bool, err error) {
	rel, err := providers.Rel(home)
	if err != nil || rel == "." {
		return nil, false, nil
	}
	hd, err = root.Walk(rel, false, 0)
	switch {
	case err == nil:
		return hd, false, nil
	case errors.Is(err, fs.ErrNotExist):
		return nil, true, nil
	}
	return nil, false, ignoreMissing(err)
}

// observeKeys reads .ssh/authorized_keys in the home hd (nil: no home)
// without following a link, and compares it with want for a user
// uid:gid.
func observeKeys(hd *providers.Dir, uid, gid int, want []byte) (keysState, error) {
	st := keysState{count: -1}
	if hd == nil {
		return st, nil
	}
	sd, err := hd.Walk(".ssh", false, 0)
	if err != nil {
		return st, ignoreMissing(err)
	}
	defer sd.Close()
	dirOK, err := ownedWithMode(sd, ".", uid, gid, 0o700)
	if err != nil {
		return st, err
	}
	f, err := sd.OpenNoFollow("authorized_keys", os.O_RDONLY|syscall.O_NONBLOCK)
	if err != nil {
		return st, ignoreMissing(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return st, err
	}
	if !fi.Mode().IsRegular() {
		return st, nil
	}
	b, err := io.ReadAll(io.LimitReader(f, 1<<20))
	if err != nil {
		return st, err
	}
	st.count = 0
	for _, line := range strings.Split(string(b), "\n") {
		if line = strings.TrimSpace(line); line != "" && line[0] != '#' {
			st.count++
		}
	}
	sys, _ := fi.Sys().(*syscall.Stat_t)
	st.inSync = dirOK && sys != nil && int(sys.Uid) == uid && int(sys.Gid) == gid && fi.Mode().Perm() == 0o600 && string(b) == string(want)
	return st, nil
}

func ignoreMissing(err error) error {
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) || errors.Is(err, providers.ErrSymlink) {
		return nil
	}
	return err
}

func ownedWithMode(d *providers.Dir, name string, uid, gid int, mode os.FileMode) (bool, error) {
	fi, err := d.Lstat(name)
	if err != nil {
		return false, err
	}
	sys, ok := fi.Sys().(*syscall.Stat_t)
	return ok && int(sys.Uid) == uid && int(sys.Gid) == gid && fi.Mode().Perm() == mode, nil
}

// writeKeys writes <home>/.ssh/authorized_keys atomically, owned by
// uid:gid with mode 0600, in a ~/.ssh of mode 0700 owned by the user. The
// home directory must exist, must not be reached through a link, and must
// belong to uid: keys for a user never land in a directory that someone
// else owns (another user's home, /root, /etc).
func writeKeys(root *providers.Dir, home string, uid, gid int, data []byte) error {
	rel, err := providers.Rel(home)
	if err != nil {
		return fmt.Errorf("home %s: %w", home, err)
	}
	hd, err := root.Walk(rel, false, 0)
	if err != nil {
		return fmt.Errorf("home %s: %w", home, err)
	}
	defer hd.Close()
	fi, err := hd.Stat(".")
	if err != nil {
		return err
	}
	if sys, ok := fi.Sys().(*syscall.Stat_t); !ok || int(sys.Uid) != uid {
		return fmt.Errorf("home %s does not belong to uid %d: refusing to write authorized keys there", home, uid)
	}
	sd, err := hd.Walk(".ssh", true, 0o700)
	if err != nil {
		return fmt.Errorf("%s/.ssh: %w", home, err)
	}
	defer sd.Close()
	self, err := sd.Open(".")
	if err != nil {
		return err
	}
	err = self.Chown(uid, gid)
	if err == nil {
		err = self.Chmod(0o700)
	}
	self.Close()
	if err != nil {
		return fmt.Errorf("%s/.ssh: %w", home, err)
	}
	return sd.WriteFileAtomic("authorized_keys", data, providers.FileMeta{Mode: 0o600, SetOwner: true, UID: uid, GID: gid})
}

// makeHome creates a missing home directory, mode 0700, owned by
// uid:gid (without a copy of /etc/skel: useradd copies it when it
// creates the user; this only heals a home deleted later). Missing
// parents are created 0755; no link is followed on the way.
func makeHome(root *providers.Dir, home string, uid, gid int) error {
	rel, err := providers.Rel(home)
	if err != nil || rel == "." {
		return fmt.Errorf("home %q: not a directory twinlet creates", home)
	}
	parent, base := path.Split(rel)
	pd, err := root.Walk(strings.TrimSuffix(parent, "/"), true, 0o755)
	if err != nil {
		return fmt.Errorf("home %s: %w", home, err)
	}
	defer pd.Close()
	if err := pd.Mkdir(base, 0o700); errors.Is(err, fs.ErrExist) {
		return nil // there now: never take over what twinlet did not create
	} else if err != nil {
		return fmt.Errorf("home %s: %w", home, err)
	}
	self, err := pd.OpenNoFollow(base, os.O_RDONLY|syscall.O_DIRECTORY)
	if err != nil {
		return fmt.Errorf("home %s: %w", home, err)
	}
	defer self.Close()
	if err := self.Chown(uid, gid); err != nil {
		return err
	}
	return self.Chmod(0o700)
}
