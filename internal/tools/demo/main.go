// Command demo runs the whole loop on one machine with the real binaries:
// twinhub in a temporary directory, a device, twinlet connected to it on a
// sandbox root, a desired patch with twinctl, and the time until the
// reported state is Ready. It stops everything it started and exits
// non-zero if anything fails. `make demo` runs it.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/twinlet/twinlet/internal/hub/azurite"
)

func main() {
	bin := flag.String("bin", "bin", "directory with twinhub, twinlet and twinctl")
	timeout := flag.Duration("timeout", 60*time.Second, "give up after this long")
	keep := flag.Bool("keep", false, "keep the temporary directory")
	flag.Parse()
	if err := run(*bin, *timeout, *keep); err != nil {
		fmt.Fprintf(os.Stderr, "demo: FAILED: %v\n", err)
		os.Exit(1)
	}
}

type proc struct {
	name string
	cmd  *exec.Cmd
	out  *bytes.Buffer
}

func (p *proc) stop() {
	if p.cmd.Process == nil {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-done
	}
}

func run(bin string, timeout time.Duration, keep bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	dir, err := os.MkdirTemp("", "twinlet-demo-")
	if err != nil {
		return err
	}
	if !keep {
		defer os.RemoveAll(dir)
	} else {
		fmt.Println("keeping", dir)
	}
	abs := func(name string) string { p, _ := filepath.Abs(filepath.Join(bin, name)); return p }
	var procs []*proc
	defer func() {
		for i := len(procs) - 1; i >= 0; i-- {
			procs[i].stop()
		}
	}()

	// 0. Azurite, the blob store behind file upload, when installed.
	hubArgs := []string{"serve", "--dir", filepath.Join(dir, "hub"), "--mqtt-addr", "127.0.0.1:0", "--https-addr", "127.0.0.1:0"}
	az, err := azurite.Start(dir)
	if err != nil {
		step("file upload left out: %v", err)
	} else {
		defer az.Stop()
		step("started Azurite (blob storage) on %s", az.Endpoint())
		if err := az.CreateContainer(ctx, "fileupload"); err != nil {
			return fmt.Errorf("azurite: create container: %w", err)
		}
		caFile := filepath.Join(dir, "azurite-ca.pem")
		if err := os.WriteFile(caFile, az.CAPEM, 0o600); err != nil {
			return err
		}
		hubArgs = append(hubArgs, "--storage-connection-string", az.ConnectionString(), "--storage-container", "fileupload", "--storage-ca-file", caFile)
	}

	// 1. The hub, on free loopback ports.
	step("starting twinhub in %s", dir)
	hub := exec.CommandContext(ctx, abs("twinhub"), hubArgs...)
	stdout, _ := hub.StdoutPipe()
	hubLog := &bytes.Buffer{}
	hub.Stderr = hubLog
	if err := hub.Start(); err != nil {
		return fmt.Errorf("start twinhub: %w", err)
	}
	procs = append(procs, &proc{"twinhub", hub, hubLog})
	info := map[string]string{}
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		line := sc.Text()
		if k, v, ok := strings.Cut(line, ":"); ok && !strings.Contains(k, "=") {
			info[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
		if strings.HasPrefix(line, "HostName=") && strings.Contains(line, "SharedAccessKey=") {
			info["owner"] = line
			break
		}
	}
	go io.Copy(io.Discard, stdout)
	if info["owner"] == "" || info["mqtt"] == "" || info["https"] == "" || info["CA file"] == "" {
		return fmt.Errorf("twinhub did not print its addresses, CA and owner connection string:\n%s", hubLog)
	}
	env := append(os.Environ(), "TWINCTL_HUB="+info["owner"], "TWINCTL_CA="+info["CA file"], "TWINCTL_HUB_ADDR="+info["https"])
	twinctl := func(stdin string, args ...string) ([]byte, error) {
		cmd := exec.CommandContext(ctx, abs("twinctl"), args...)
		cmd.Env = env
		cmd.Stdin = strings.NewReader(stdin)
		var errb bytes.Buffer
		cmd.Stderr = &errb
		out, err := cmd.Output()
		if err != nil {
			return out, fmt.Errorf("twinctl %s: %w: %s", strings.Join(args, " "), err, errb.String())
		}
		return out, nil
	}

	// 2. A device.
	step("creating device kiosk-demo")
	out, err := twinctl("", "devices", "create", "kiosk-demo", "-o", "json")
	if err != nil {
		return err
	}
	var dev struct {
		Authentication struct {
			SymmetricKey struct{ PrimaryKey string } `json:"symmetricKey"`
		} `json:"authentication"`
	}
	if err := json.Unmarshal(out, &dev); err != nil || dev.Authentication.SymmetricKey.PrimaryKey == "" {
		return fmt.Errorf("no device key in %s", out)
	}
	key := filepath.Join(dir, "device.key")
	host := strings.SplitN(strings.TrimPrefix(info["owner"], "HostName="), ";", 2)[0]
	cs := fmt.Sprintf("HostName=%s;DeviceId=kiosk-demo;SharedAccessKey=%s\n", host, dev.Authentication.SymmetricKey.PrimaryKey)
	if err := os.WriteFile(key, []byte(cs), 0o600); err != nil {
		return err
	}

	// 3. The agent, on a sandbox root.
	step("starting twinlet (sandbox root %s)", filepath.Join(dir, "root"))
	for _, d := range []string{"root", "state", "policy"} {
		os.MkdirAll(filepath.Join(dir, d), 0o755)
	}
	port := info["mqtt"][strings.LastIndex(info["mqtt"], ":")+1:]
	agentArgs := []string{"run", "--config", "", "--root", filepath.Join(dir, "root"),
		"--state-dir", filepath.Join(dir, "state"), "--policy", filepath.Join(dir, "policy"),
		"--key-file", key, "--ca-file", info["CA file"], "--hub-port", port}
	if az != nil {
		// File upload reaches the hub's HTTPS port and Azurite: a config
		// file names the port and a CA file that holds both CAs.
		hubCA, err := os.ReadFile(info["CA file"])
		if err != nil {
			return err
		}
		cas := filepath.Join(dir, "cas.pem")
		if err := os.WriteFile(cas, append(hubCA, az.CAPEM...), 0o600); err != nil {
			return err
		}
		httpsPort := info["https"][strings.LastIndex(info["https"], ":")+1:]
		conf := filepath.Join(dir, "twinlet.yaml")
		body := fmt.Sprintf("connection:\n  keyFile: %s\n  caFile: %s\n  port: %s\n  httpsPort: %s\n", key, cas, port, httpsPort)
		if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
			return err
		}
		policy := "apiVersion: twinlet.dev/v1\nkind: DevicePolicy\nmetadata: {name: diagnostics}\nspec:\n  mode: default\n  diagnostics:\n" +
			"    collectors:\n      etc: {files: {paths: [/etc/motd, /opt/kiosk/*]}}\n      uname: {command: {argv: [/bin/uname, -a]}}\n"
		os.MkdirAll(filepath.Join(dir, "policy"), 0o755)
		if err := os.WriteFile(filepath.Join(dir, "policy", "diagnostics.yaml"), []byte(policy), 0o600); err != nil {
			return err
		}
		agentArgs = []string{"run", "--config", conf, "--root", filepath.Join(dir, "root"),
			"--state-dir", filepath.Join(dir, "state"), "--policy", filepath.Join(dir, "policy")}
	}
	agent := exec.CommandContext(ctx, abs("twinlet"), agentArgs...)
	agentLog := &bytes.Buffer{}
	agent.Stdout, agent.Stderr = agentLog, agentLog
	if err := agent.Start(); err != nil {
		return fmt.Errorf("start twinlet: %w", err)
	}
	procs = append(procs, &proc{"twinlet", agent, agentLog})
	if err := poll(ctx, func() (bool, error) {
		out, err := twinctl("", "devices", "show", "kiosk-demo", "-o", "json")
		return err == nil && bytes.Contains(out, []byte(`"connectionState": "Connected"`)), nil
	}); err != nil {
		return fmt.Errorf("twinlet did not connect: %w\n%s", err, agentLog)
	}

	// 4. Desired properties, as an operator would set them.
	const desired = `properties:
  desired:
    hostname: { name: kiosk-demo }
    timezone: { name: Europe/Berlin }
    files:
      motd: { path: /etc/motd, content: "Managed by twinlet.\n", mode: "0644" }
      kioskConf: { path: /opt/kiosk/kiosk.conf, content: "url=https://example.com\n", mode: "0640" }
    sysctl:
      swappiness: { key: vm.swappiness, value: "10" }
`
	patch := desired
	if az != nil {
		patch += "    diagnostics:\n      requests:\n        demo1: { uploadName: demo/bundle.tar.gz }\n"
	}
	step("patching desired properties with twinctl")
	start := time.Now()
	if _, err := twinctl(patch, "twin", "patch", "kiosk-demo", "-f", "-"); err != nil {
		return err
	}
	var twin struct {
		Properties struct {
			Desired  map[string]json.RawMessage `json:"desired"`
			Reported map[string]json.RawMessage `json:"reported"`
		} `json:"properties"`
	}
	if err := poll(ctx, func() (bool, error) {
		out, err := twinctl("", "twin", "show", "kiosk-demo", "-o", "json")
		if err != nil {
			return false, nil
		}
		if err := json.Unmarshal(out, &twin); err != nil {
			return false, err
		}
		var sum struct {
			State          string `json:"state"`
			DesiredVersion int64  `json:"desiredVersion"`
		}
		var ver int64
		json.Unmarshal(twin.Properties.Desired["$version"], &ver)
		json.Unmarshal(twin.Properties.Reported["__summary"], &sum)
		return sum.State == "Ready" && sum.DesiredVersion == ver, nil
	}); err != nil {
		return fmt.Errorf("reported state never became Ready: %w\n%s", err, agentLog)
	}
	took := time.Since(start)

	// 5. The result.
	fmt.Println()
	fmt.Printf("%-12s %-8s %-10s %s\n", "SECTION", "STATE", "REASON", "MESSAGE")
	var ids []string
	for id := range twin.Properties.Reported {
		if !strings.HasPrefix(id, "$") && !strings.HasPrefix(id, "__") {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	for _, id := range ids {
		var sec struct {
			Status struct{ State, Reason, Message string } `json:"__status"`
		}
		json.Unmarshal(twin.Properties.Reported[id], &sec)
		fmt.Printf("%-12s %-8s %-10s %s\n", id, sec.Status.State, sec.Status.Reason, sec.Status.Message)
	}
	fmt.Printf("\ndesired → reported Ready in %s (twinctl patch to twinctl show, on loopback)\n", took.Round(time.Millisecond))
	motd, _ := os.ReadFile(filepath.Join(dir, "root", "etc", "motd"))
	if string(motd) != "Managed by twinlet.\n" {
		return errors.New("the sandbox's /etc/motd was not written")
	}
	if out, err := twinctl("", "invoke", "kiosk-demo", "getStatus"); err == nil {
		fmt.Printf("\ntwinctl invoke kiosk-demo getStatus:\n%s", firstLines(out, 6))
	} else {
		return err
	}
	if az != nil {
		// The request is reported uploaded once its bundle is in the
		// storage: the summary can read Ready before the diagnostics
		// section took up the new request, so wait for the request itself.
		var state string
		if err := poll(ctx, func() (bool, error) {
			out, err := twinctl("", "twin", "show", "kiosk-demo", "-o", "json")
			if err != nil {
				return false, nil
			}
			var tw struct {
				Properties struct {
					Reported struct {
						Diagnostics struct {
							Requests map[string]struct{ State, Error string } `json:"requests"`
						} `json:"diagnostics"`
					} `json:"reported"`
				} `json:"properties"`
			}
			if err := json.Unmarshal(out, &tw); err != nil {
				return false, err
			}
			req := tw.Properties.Reported.Diagnostics.Requests["demo1"]
			state = req.State
			switch req.State {
			case "Uploaded":
				return true, nil
			case "Dropped", "Interrupted":
				return false, fmt.Errorf("the diagnostics request demo1 is %s: %s", req.State, req.Error)
			}
			return false, nil
		}); err != nil {
			return fmt.Errorf("the diagnostic bundle was not reported uploaded (last state %q): %w\n%s", state, err, agentLog)
		}
		blob, err := az.Download(ctx, "fileupload", "kiosk-demo/demo/bundle.tar.gz")
		if err != nil {
			return fmt.Errorf("the diagnostic bundle is not in Azurite: %w", err)
		}
		out, err := twinctl("", "events", "--device", "kiosk-demo")
		if err != nil {
			return err
		}
		fmt.Printf("\ndiagnostic bundle uploaded through twinhub to Azurite: fileupload/kiosk-demo/demo/bundle.tar.gz, %d bytes\ntwinctl events --device kiosk-demo:\n%s", len(blob), firstLines(out, 4))
	}
	fmt.Println("demo: OK")
	return nil
}

func firstLines(b []byte, n int) string {
	lines := strings.SplitAfter(string(b), "\n")
	if len(lines) > n {
		lines = append(lines[:n], "  …\n")
	}
	return strings.Join(lines, "")
}

func step(format string, args ...any) {
	fmt.Printf("==> "+format+"\n", args...)
}

// poll calls cond until it is true, fails, or ctx ends.
func poll(ctx context.Context, cond func() (bool, error)) error {
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
