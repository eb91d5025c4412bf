// Command benchcli is `make bench-cli`: it writes a policy with 100 files,
// a hostname, a timezone and one sysctl item acting on a sandbox root,
// converges it once, then has hyperfine time a no-op
// `twinlet apply --once` of it against clifloor, a program that only
// stats, reads and hashes the same 100 files, in one run.
//
//	benchcli -bin DIR -dir WORKDIR [-runs N]
package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

func main() {
	bin := flag.String("bin", "bin", "directory holding twinlet and clifloor")
	dir := flag.String("dir", ".bench", "work directory (recreated)")
	runs := flag.Int("runs", 200, "hyperfine runs per command")
	flag.Parse()
	if err := run(*bin, *dir, *runs); err != nil {
		fmt.Fprintln(os.Stderr, "bench-cli:", err)
		os.Exit(1)
	}
}

func run(bin, dir string, runs int) error {
	bin, err := filepath.Abs(bin)
	if err != nil {
		return err
	}
	dir, err = filepath.Abs(dir)
	if err != nil {
		return err
	}
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	root, state, policy := filepath.Join(dir, "root"), filepath.Join(dir, "state"), filepath.Join(dir, "policy")
	for _, d := range []string{root, state, policy} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	var b strings.Builder
	b.WriteString("apiVersion: twinlet.dev/v1\nkind: DevicePolicy\nmetadata: { name: bench }\nspec:\n  mode: enforce\n")
	b.WriteString("  hostname: { name: bench-host }\n  timezone: { name: Europe/Berlin }\n")
	b.WriteString("  sysctl:\n    swappiness: { key: vm.swappiness, value: \"10\" }\n  files:\n")
	for i := 0; i < 100; i++ {
		fmt.Fprintf(&b, "    f%03d: { path: /opt/bench/f%03d.conf, mode: \"0644\", content: %q }\n", i, i, fmt.Sprintf("managed file %d\n", i))
	}
	if err := os.WriteFile(filepath.Join(policy, "bench.yaml"), []byte(b.String()), 0o644); err != nil {
		return err
	}
	apply := []string{filepath.Join(bin, "twinlet"), "apply", "--once", "--config", "", "--root", root, "--state-dir", state, "--policy", policy}
	// Converge once, so that what is timed is the no-op.
	for i := 0; i < 2; i++ {
		cmd := exec.Command(apply[0], apply[1:]...)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %v\n%s", strings.Join(apply, " "), err, out)
		}
	}
	floor := []string{filepath.Join(bin, "clifloor"), filepath.Join(root, "opt", "bench")}
	hf, err := exec.LookPath("hyperfine")
	if err != nil {
		return fmt.Errorf("hyperfine is not installed (Debian: apt-get install hyperfine)")
	}
	quote := func(argv []string) string {
		q := make([]string, len(argv))
		for i, a := range argv {
			if a == "" || strings.ContainsAny(a, " '\"\\$") {
				a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
			}
			q[i] = a
		}
		return strings.Join(q, " ")
	}
	// hyperfine takes each command as one string; -N runs it without a
	// shell (it splits on spaces and quotes), so the paths we made have none.
	cmd := exec.Command(hf, "-N", "--warmup", "5", "--runs", fmt.Sprint(runs),
		"--export-json", filepath.Join(dir, "hyperfine.json"),
		"-n", "twinlet apply --once (no-op)", quote(apply),
		"-n", "floor: stat+read+hash 100 files", quote(floor))
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	return cmd.Run()
}
