// Command mkdeb builds twinlet's Debian packages: twinlet (the agent) and
// twinctl (twinctl and twinhub), from binaries already built for the
// target architecture. `make deb` runs it; see the README.
//
//	mkdeb -version 1.2.3 -date 1700000000 -arch amd64 -bin bin/linux-amd64 -docbin bin -out dist
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/twinlet/twinlet/internal/deb"
)

const maintainer = "twinlet maintainers <maintainers@twinlet.dev>"

func main() {
	version := flag.String("version", "", "package version (from git describe, see the Makefile)")
	date := flag.Int64("date", 0, "source date in Unix seconds (SOURCE_DATE_EPOCH)")
	arch := flag.String("arch", "amd64", "Debian architecture: amd64 or arm64")
	bin := flag.String("bin", "", "directory with twinlet, twinctl and twinhub built for -arch")
	docbin := flag.String("docbin", "", "directory with binaries this machine can run, for completions and man pages (default -bin)")
	src := flag.String("src", ".", "the source tree (unit file, examples, packaging/)")
	out := flag.String("out", "dist", "output directory")
	flag.Parse()
	if *docbin == "" {
		*docbin = *bin
	}
	if err := build(context.Background(), opts{*version, time.Unix(*date, 0).UTC(), *arch, *bin, *docbin, *src, *out}); err != nil {
		fmt.Fprintln(os.Stderr, "mkdeb:", err)
		os.Exit(1)
	}
}

type opts struct {
	version     string
	date        time.Time
	arch        string
	bin, docbin string
	src, out    string
}

func build(ctx context.Context, o opts) error {
	if o.version == "" || o.bin == "" {
		return fmt.Errorf("-version and -bin are required")
	}
	switch o.arch {
	case "amd64", "arm64":
	default:
		return fmt.Errorf("-arch %q: want amd64 or arm64", o.arch)
	}
	agent, err := agentPackage(ctx, o)
	if err != nil {
		return err
	}
	tools, err := toolsPackage(ctx, o)
	if err != nil {
		return err
	}
	for _, p := range []*deb.Package{agent, tools} {
		path, err := p.Build(ctx, o.out)
		if err != nil {
			return err
		}
		fi, err := os.Stat(path)
		if err != nil {
			return err
		}
		fmt.Printf("%s %d bytes\n", path, fi.Size())
	}
	return nil
}

// files collects a package's files, reading sources relative to the tree.
type files struct {
	o   opts
	out []deb.File
	err error
}

func (f *files) add(path string, mode os.FileMode, data []byte) {
	f.out = append(f.out, deb.File{Path: path, Mode: mode, Data: data})
}

func (f *files) conffile(path string, data []byte) {
	f.out = append(f.out, deb.File{Path: path, Mode: 0o644, Data: data, Conffile: true})
}

// read returns a file of the source tree (rel uses slashes).
func (f *files) read(rel string) []byte {
	return f.readFile(filepath.Join(f.o.src, filepath.FromSlash(rel)))
}

func (f *files) readFile(path string) []byte {
	data, err := os.ReadFile(path)
	if err != nil && f.err == nil {
		f.err = err
	}
	return data
}

func (f *files) binary(name string) {
	f.add("/usr/bin/"+name, 0o755, f.readFile(filepath.Join(f.o.bin, name)))
}

// docs adds the completions and the man page that the program prints of
// itself, from the same flag definitions as its -h.
func (f *files) docs(ctx context.Context, prog string, section int) {
	run := func(args ...string) []byte {
		cmd := exec.CommandContext(ctx, filepath.Join(f.o.docbin, prog), args...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil && f.err == nil {
			f.err = fmt.Errorf("%s %s: %w: %s", prog, strings.Join(args, " "), err, stderr.String())
		}
		return out
	}
	f.add("/usr/share/bash-completion/completions/"+prog, 0o644, run("completion", "bash"))
	f.add("/usr/share/zsh/vendor-completions/_"+prog, 0o644, run("completion", "zsh"))
	f.add("/usr/share/fish/vendor_completions.d/"+prog+".fish", 0o644, run("completion", "fish"))
	f.add(fmt.Sprintf("/usr/share/man/man%d/%s.%d.gz", section, prog, section), 0o644, deb.Gzip(run("man")))
}

// doc adds the copyright file, a changelog for a native package, and the
// one lintian override every package needs: Go binaries built with
// CGO_ENABLED=0 are static by design (lintian exempts Go only when it sees
// a source package that build-depends on golang-go, which a binary-only
// check does not have).
func (f *files) doc(pkg string, binaries ...string) {
	var o strings.Builder
	o.WriteString("# Go binaries built with CGO_ENABLED=0 are static on purpose: no libc to match on the device.\n")
	for _, b := range binaries {
		fmt.Fprintf(&o, "%s: statically-linked-binary [usr/bin/%s]\n", pkg, b)
	}
	if pkg == "twinlet" {
		// The packages provider names dpkg's database only to hand it to
		// dpkg and apt themselves (--admindir, Dir::State::status for a
		// sandbox root) and to watch it for drift; it reads packages
		// through dpkg-query.
		o.WriteString("# The packages provider points dpkg-query, dpkg and apt at a root's database and watches it; it never parses it.\n")
		o.WriteString("twinlet: uses-dpkg-database-directly [usr/bin/twinlet]\n")
	}
	f.add("/usr/share/lintian/overrides/"+pkg, 0o644, []byte(o.String()))
	f.add("/usr/share/doc/"+pkg+"/copyright", 0o644, f.read("packaging/debian/copyright"))
	changelog := fmt.Sprintf("%s (%s) unstable; urgency=medium\n\n  * Built from the twinlet source tree; see its git history.\n\n -- %s  %s\n",
		pkg, f.o.version, maintainer, f.o.date.Format("Mon, 02 Jan 2006 15:04:05 -0700"))
	f.add("/usr/share/doc/"+pkg+"/changelog.gz", 0o644, deb.Gzip([]byte(changelog)))
}

func agentPackage(ctx context.Context, o opts) (*deb.Package, error) {
	f := &files{o: o}
	f.binary("twinlet")
	unit := f.read("examples/systemd/twinlet.service")
	unit = bytes.ReplaceAll(unit, []byte("/usr/local/bin/twinlet"), []byte("/usr/bin/twinlet"))
	f.add("/lib/systemd/system/twinlet.service", 0o644, unit)
	f.conffile("/etc/twinlet/twinlet.yaml", f.read("examples/twinlet.yaml"))
	f.conffile("/etc/twinlet/policy.d/README", f.read("packaging/debian/policy.d-README"))
	examples, _ := filepath.Glob(filepath.Join(o.src, "examples", "local", "*.yaml"))
	sort.Strings(examples)
	for _, e := range examples {
		f.add("/usr/share/doc/twinlet/examples/local/"+filepath.Base(e), 0o644, f.read("examples/local/"+filepath.Base(e)))
	}
	f.add("/usr/share/doc/twinlet/examples/twinlet.yaml", 0o644, f.read("examples/twinlet.yaml"))
	f.docs(ctx, "twinlet", 8)
	f.doc("twinlet", "twinlet")
	scripts := map[string][]byte{}
	for _, s := range []string{"postinst", "prerm", "postrm"} {
		scripts[s] = f.read("packaging/debian/twinlet." + s)
	}
	if f.err != nil {
		return nil, f.err
	}
	return &deb.Package{
		Name: "twinlet", Version: o.version, Arch: o.arch, Maintainer: maintainer,
		Section: "admin", Priority: "optional", Homepage: "https://github.com/twinlet/twinlet",
		Suggests: []string{"tpm2-tools"},
		Description: `declarative device-management agent for Azure IoT Hub
twinlet reconciles a Linux device against the desired state in its IoT Hub
device twin and in local YAML policy files, through providers for the
hostname, time, files, sysctl and more, and reports the result to the
twin. It keeps working offline, survives crashes mid-change, and refuses
input it cannot apply with located errors.`,
		Files: f.out, Scripts: scripts, Date: o.date,
	}, nil
}

func toolsPackage(ctx context.Context, o opts) (*deb.Package, error) {
	f := &files{o: o}
	f.binary("twinctl")
	f.binary("twinhub")
	f.docs(ctx, "twinctl", 1)
	f.docs(ctx, "twinhub", 1)
	f.doc("twinctl", "twinctl", "twinhub")
	if f.err != nil {
		return nil, f.err
	}
	return &deb.Package{
		Name: "twinctl", Version: o.version, Arch: o.arch, Maintainer: maintainer,
		Section: "admin", Priority: "optional", Homepage: "https://github.com/twinlet/twinlet",
		Description: `fleet tools for twinlet: twinctl and the twinhub IoT Hub emulator
twinctl operates a fleet of twinlet devices on Azure IoT Hub: devices,
twins, direct methods, queries and telemetry. twinhub is a local,
protocol-faithful IoT Hub for development and tests, so that a fleet
can be tried on one machine without a cloud.`,
		Files: f.out, Date: o.date,
	}, nil
}
