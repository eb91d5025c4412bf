// Package deb builds Debian binary packages with dpkg-deb from a list of
// files, so that what a package holds is written down in Go and checked by
// tests rather than scattered over a staging directory. Builds are
// reproducible: every file's time is the source date, owners are root, and
// gzip members carry no name or time.
package deb

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/md5"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"
)

// File is one regular file of a package.
type File struct {
	// Path is where it is installed ("/usr/bin/twinlet").
	Path string
	// Mode is its permission bits (0755, 0644).
	Mode os.FileMode
	// Data is its content.
	Data []byte
	// Conffile marks a configuration file that dpkg keeps when the
	// administrator changed it.
	Conffile bool
}

// Package is one binary package.
type Package struct {
	Name, Version, Arch string
	Maintainer          string
	Section, Priority   string
	Homepage            string
	// Description is the synopsis line, then the long description.
	Description string
	Depends     []string
	Recommends  []string
	Suggests    []string
	// Files are the package's files; directories are implied.
	Files []File
	// Dirs are empty directories the package owns (mode 0755).
	Dirs []string
	// Scripts are maintainer scripts by name (postinst, prerm, postrm).
	Scripts map[string][]byte
	// Date is the time of every file in the archive (SOURCE_DATE_EPOCH).
	Date time.Time
}

var (
	nameRe    = regexp.MustCompile(`^[a-z0-9][a-z0-9+.-]+$`)
	versionRe = regexp.MustCompile(`^[0-9][A-Za-z0-9.+~-]*$`)
)

// Check reports what would make dpkg-deb refuse the package, or make it
// unsafe: a bad name or version, a relative path or "..", a file twice.
func (p *Package) Check() error {
	if !nameRe.MatchString(p.Name) {
		return fmt.Errorf("deb: package name %q", p.Name)
	}
	if !versionRe.MatchString(p.Version) {
		return fmt.Errorf("deb %s: version %q must start with a digit and use only A-Za-z0-9.+~-", p.Name, p.Version)
	}
	if p.Arch == "" || p.Maintainer == "" || p.Description == "" {
		return fmt.Errorf("deb %s: Architecture, Maintainer and Description are required", p.Name)
	}
	seen := map[string]bool{}
	for _, f := range p.Files {
		if !path.IsAbs(f.Path) || path.Clean(f.Path) != f.Path || strings.Contains(f.Path, "/../") {
			return fmt.Errorf("deb %s: file path %q is not clean and absolute", p.Name, f.Path)
		}
		if seen[f.Path] {
			return fmt.Errorf("deb %s: %s listed twice", p.Name, f.Path)
		}
		seen[f.Path] = true
		if f.Mode&^0o7777 != 0 {
			return fmt.Errorf("deb %s: %s: mode %v is not permission bits", p.Name, f.Path, f.Mode)
		}
	}
	for name := range p.Scripts {
		switch name {
		case "preinst", "postinst", "prerm", "postrm":
		default:
			return fmt.Errorf("deb %s: unknown maintainer script %q", p.Name, name)
		}
	}
	return nil
}

// FileName is the package's file name, as Debian names it.
func (p *Package) FileName() string {
	return fmt.Sprintf("%s_%s_%s.deb", p.Name, p.Version, p.Arch)
}

// Build writes the package into outDir and returns its path. It needs
// dpkg-deb on PATH.
func (p *Package) Build(ctx context.Context, outDir string) (string, error) {
	if err := p.Check(); err != nil {
		return "", err
	}
	stage, err := os.MkdirTemp("", "deb-"+p.Name+"-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(stage)
	root := filepath.Join(stage, "root")
	var md5sums bytes.Buffer
	var conffiles []string
	size := int64(0)
	files := append([]File(nil), p.Files...)
	sort.Slice(files, func(i, j int) bool { return files[i].Path < files[j].Path })
	for _, f := range files {
		host := filepath.Join(root, filepath.FromSlash(f.Path))
		if err := os.MkdirAll(filepath.Dir(host), 0o755); err != nil {
			return "", err
		}
		if err := os.WriteFile(host, f.Data, 0o600); err != nil {
			return "", err
		}
		if err := os.Chmod(host, f.Mode); err != nil { // not subject to umask
			return "", err
		}
		size += (int64(len(f.Data)) + 1023) / 1024
		if f.Conffile {
			conffiles = append(conffiles, f.Path)
		} else {
			fmt.Fprintf(&md5sums, "%x  %s\n", md5.Sum(f.Data), strings.TrimPrefix(f.Path, "/"))
		}
	}
	for _, d := range p.Dirs {
		if err := os.MkdirAll(filepath.Join(root, filepath.FromSlash(d)), 0o755); err != nil {
			return "", err
		}
	}
	ctl := filepath.Join(root, "DEBIAN")
	if err := os.MkdirAll(ctl, 0o755); err != nil {
		return "", err
	}
	write := func(name string, data []byte, mode os.FileMode) error {
		fp := filepath.Join(ctl, name)
		if err := os.WriteFile(fp, data, mode); err != nil {
			return err
		}
		return os.Chmod(fp, mode)
	}
	if err := write("control", p.control(size), 0o644); err != nil {
		return "", err
	}
	if err := write("md5sums", md5sums.Bytes(), 0o644); err != nil {
		return "", err
	}
	if len(conffiles) > 0 {
		if err := write("conffiles", []byte(strings.Join(conffiles, "\n")+"\n"), 0o644); err != nil {
			return "", err
		}
	}
	for name, data := range p.Scripts {
		if err := write(name, data, 0o755); err != nil {
			return "", err
		}
	}
	// Every directory 0755 and every time the source date.
	err = filepath.WalkDir(root, func(fp string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if err := os.Chmod(fp, 0o755); err != nil {
				return err
			}
		}
		return os.Chtimes(fp, p.Date, p.Date)
	})
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return "", err
	}
	out := filepath.Join(outDir, p.FileName())
	cmd := exec.CommandContext(ctx, "dpkg-deb", "--root-owner-group", "-Zxz", "-z9", "--build", root, out)
	cmd.Env = append(os.Environ(), fmt.Sprintf("SOURCE_DATE_EPOCH=%d", p.Date.Unix()))
	if msg, err := cmd.CombinedOutput(); err != nil {
		var ee *exec.Error
		if errors.As(err, &ee) {
			return "", fmt.Errorf("deb %s: dpkg-deb is needed (apt-get install dpkg): %w", p.Name, err)
		}
		return "", fmt.Errorf("deb %s: dpkg-deb: %w: %s", p.Name, err, strings.TrimSpace(string(msg)))
	}
	return out, nil
}

func (p *Package) control(sizeKiB int64) []byte {
	var b bytes.Buffer
	field := func(k, v string) {
		if v != "" {
			fmt.Fprintf(&b, "%s: %s\n", k, v)
		}
	}
	field("Package", p.Name)
	field("Version", p.Version)
	field("Architecture", p.Arch)
	field("Maintainer", p.Maintainer)
	field("Installed-Size", fmt.Sprint(sizeKiB))
	field("Depends", strings.Join(p.Depends, ", "))
	field("Recommends", strings.Join(p.Recommends, ", "))
	field("Suggests", strings.Join(p.Suggests, ", "))
	field("Section", p.Section)
	field("Priority", p.Priority)
	field("Homepage", p.Homepage)
	lines := strings.Split(strings.TrimSpace(p.Description), "\n")
	fmt.Fprintf(&b, "Description: %s\n", lines[0])
	for _, l := range lines[1:] {
		if strings.TrimSpace(l) == "" {
			b.WriteString(" .\n")
		} else {
			fmt.Fprintf(&b, " %s\n", strings.TrimSpace(l))
		}
	}
	return b.Bytes()
}

// Gzip compresses data as Debian wants for man pages and changelogs:
// best compression, no file name, no time stamp.
func Gzip(data []byte) []byte {
	var b bytes.Buffer
	w, _ := gzip.NewWriterLevel(&b, gzip.BestCompression)
	_, _ = w.Write(data)
	_ = w.Close()
	return b.Bytes()
}
