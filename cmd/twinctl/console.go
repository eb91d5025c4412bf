package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os/exec"
	"time"

	"github.com/twinlet/twinlet/internal/console"
)

func init() {
	register(&command{name: "console", nargs: 0, setup: consoleCmd})
}

func consoleCmd(fs *flag.FlagSet) runFunc {
	listen := fs.String("listen", "127.0.0.1:0", "address to serve the console on; other than loopback needs --token or gets a random one")
	token := fs.String("token", "", "token every request must carry (default: a random one, printed in the address)")
	open := fs.Bool("open", false, "open the console in the desktop's browser (xdg-open)")
	every := fs.Duration("interval", 5*time.Second, "how often the shared poll queries the hub (an S1 IoT Hub unit allows 20 queries a minute)")
	return func(ctx context.Context, c *cli, args []string) error {
		if *every < 200*time.Millisecond {
			return usagef("--interval: at least 200ms, got %s", *every)
		}
		if *token != "" && len(*token) < 16 {
			return usagef("--token: at least 16 characters")
		}
		host, _, err := net.SplitHostPort(*listen)
		if err != nil {
			return usagef("--listen: %v", err)
		}
		sc, err := c.client()
		if err != nil {
			return err
		}
		defer sc.Close()
		ln, err := net.Listen("tcp", *listen)
		if err != nil {
			return fmt.Errorf("--listen: %w", err)
		}
		tok := *token
		if tok == "" {
			tok = console.RandomToken()
		}
		port := ln.Addr().(*net.TCPAddr).Port
		hosts, loopback := consoleHosts(host, port)
		ip := net.ParseIP(host)
		srv, err := console.New(console.Options{Client: sc, Token: tok, Hosts: hosts, Interval: *every, Sections: console.KnownSections()})
		if err != nil {
			ln.Close()
			return err
		}
		defer srv.Close()
		shown := host
		if ip != nil && ip.IsUnspecified() || host == "" {
			shown = "127.0.0.1"
		}
		addr := (&url.URL{Scheme: "http", Host: net.JoinHostPort(shown, fmt.Sprint(port)), Path: "/", RawQuery: "token=" + url.QueryEscape(tok)}).String()
		fmt.Fprintf(c.stdout, "twinctl console for %s at %s\n", sc.HostName(), addr)
		if !loopback {
			fmt.Fprintln(c.stderr, "twinctl: the console is reachable from other machines over plain HTTP; keep the token secret")
		}
		hs := &http.Server{Handler: srv, ReadHeaderTimeout: 10 * time.Second}
		errc := make(chan error, 1)
		go func() { errc <- hs.Serve(ln) }()
		if *open {
			cmd := exec.Command("xdg-open", addr)
			if err := cmd.Start(); err != nil {
				fmt.Fprintf(c.stderr, "twinctl: --open: %v; open the address above\n", err)
			} else {
				go cmd.Wait() // reap it; xdg-open returns once the browser has the address
			}
		}
		select {
		case err := <-errc:
			return err
		case <-ctx.Done():
		}
		srv.Close() // ends the event streams, so that Shutdown does not wait for them
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := hs.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		<-errc
		return nil
	}
}

// consoleHosts returns the Host header values a console listening on
// host:port accepts, and whether host is a loopback address. A loopback
// listener is reached only by the loopback names: refusing any other Host
// keeps DNS rebinding out. Any other address accepts every Host (the
// machine's names are not known) and relies on the token alone.
func consoleHosts(host string, port int) (hosts []string, loopback bool) {
	ip := net.ParseIP(host)
	if host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return nil, false
	}
	for _, h := range []string{"127.0.0.1", "localhost", "[::1]"} {
		hosts = append(hosts, fmt.Sprintf("%s:%d", h, port))
	}
	return hosts, true
}
