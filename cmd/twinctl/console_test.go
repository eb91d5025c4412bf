package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"github.com/twinlet/twinlet/internal/testutil"
)

// TestConsoleCommand starts `twinctl console` on a loopback port against
// twinhub: it prints its address with a random token, accepts only that
// token and loopback Host names, answers from the hub, and stops when
// its context ends. (The pages themselves are tested in a browser in
// internal/console.)
func TestConsoleCommand(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithCancel(context.Background())
	var out testutil.SyncBuffer
	done := make(chan result, 1)
	go func() { done <- e.runCtx(ctx, "", &out, "console", "--interval", "200ms") }()
	re := regexp.MustCompile(`at (http://127\.0\.0\.1:\d+/\?token=(\w+))`)
	var m []string
	testutil.Eventually(t, "the console's address", func() bool {
		m = re.FindStringSubmatch(out.String())
		return m != nil
	})
	u, _ := url.Parse(m[1])
	tok := m[2]
	if len(tok) < 32 {
		t.Errorf("token %q: too short to guess-proof", tok)
	}
	get := func(path, host, auth string) (int, string) {
		r, _ := http.NewRequest("GET", "http://"+u.Host+path, nil)
		if host != "" {
			r.Host = host
		}
		if auth != "" {
			r.Header.Set("Authorization", "Bearer "+auth)
		}
		resp, err := (&http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}).Do(r)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get("/?token="+tok, "", ""); code != 303 {
		t.Errorf("the printed address: %d", code)
	}
	if code, _ := get("/api/info", "", ""); code != 401 {
		t.Errorf("no token: %d", code)
	}
	if code, body := get("/api/info", "", tok); code != 200 || !strings.Contains(body, e.h.Hostname()) || !strings.Contains(body, `"hostname"`) {
		t.Errorf("info: %d %s", code, body)
	}
	_, port, _ := strings.Cut(u.Host, ":")
	if code, _ := get("/api/info", "localhost:"+port, tok); code != 200 {
		t.Errorf("Host localhost: %d", code)
	}
	if code, _ := get("/api/info", "attacker.example:"+port, tok); code != 421 {
		t.Errorf("a rebinding Host: %d", code)
	}
	// It listens on 127.0.0.1 alone: another loopback address of this
	// machine (which a listener on every address would answer) is refused.
	if c, err := net.Dial("tcp", "127.0.0.2:"+port); err == nil {
		c.Close()
		t.Errorf("the console answers on 127.0.0.2: it does not listen on 127.0.0.1 alone")
	}
	cancel()
	if r := <-done; r.code != 0 {
		t.Errorf("exit %d: %s", r.code, r.stderr)
	}
}

func TestConsoleFlags(t *testing.T) {
	e := newEnv(t)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"console", "--token", "short"}, "--token: at least 16 characters"},
		{[]string{"console", "--listen", "nope"}, "--listen:"},
		{[]string{"console", "--interval", "1ms"}, "--interval: at least 200ms"},
	} {
		r := e.run("", c.args...)
		if r.code != exitUsage || !strings.Contains(r.stderr, c.want) {
			t.Errorf("%v: exit %d, %s", c.args, r.code, r.stderr)
		}
	}
}

// TestConsoleHosts checks which addresses are loopback (the Host header
// then limited to the loopback names) and which are not (any Host, the
// token alone guards them, and the command warns).
func TestConsoleHosts(t *testing.T) {
	for _, c := range []struct {
		host     string
		loopback bool
	}{
		{"127.0.0.1", true}, {"127.0.0.2", true}, {"localhost", true}, {"::1", true},
		{"0.0.0.0", false}, {"::", false}, {"", false}, {"192.0.2.10", false}, {"2001:db8::1", false}, {"console.example", false},
	} {
		hosts, lo := consoleHosts(c.host, 8080)
		if lo != c.loopback {
			t.Errorf("%q: loopback %v, want %v", c.host, lo, c.loopback)
		}
		if lo && strings.Join(hosts, " ") != "127.0.0.1:8080 localhost:8080 [::1]:8080" {
			t.Errorf("%q: hosts %v", c.host, hosts)
		}
		if !lo && hosts != nil {
			t.Errorf("%q: hosts %v, want any", c.host, hosts)
		}
	}
}

// TestConsoleGivenToken checks that --token replaces the random token:
// the printed address carries it and only it is accepted.
func TestConsoleGivenToken(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithCancel(context.Background())
	var out testutil.SyncBuffer
	done := make(chan result, 1)
	const tok = "given-token-0123456789"
	go func() { done <- e.runCtx(ctx, "", &out, "console", "--token", tok) }()
	re := regexp.MustCompile(`at http://(127\.0\.0\.1:\d+)/\?token=(\S+)`)
	var m []string
	testutil.Eventually(t, "the console's address", func() bool {
		m = re.FindStringSubmatch(out.String())
		return m != nil
	})
	if m[2] != tok {
		t.Errorf("printed token %q, want the given one", m[2])
	}
	for _, c := range []struct {
		auth string
		want int
	}{{tok, 200}, {"another-token-0123456789", 401}} {
		r, _ := http.NewRequest("GET", "http://"+m[1]+"/api/info", nil)
		r.Header.Set("Authorization", "Bearer "+c.auth)
		resp, err := http.DefaultClient.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != c.want {
			t.Errorf("token %q: %d, want %d", c.auth, resp.StatusCode, c.want)
		}
	}
	cancel()
	if r := <-done; r.code != 0 {
		t.Errorf("exit %d: %s", r.code, r.stderr)
	}
}
