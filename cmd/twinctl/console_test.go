package main

import (
	"context"
	"io"
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
