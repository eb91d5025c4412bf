// Command twinhub runs a local, protocol-faithful Azure IoT Hub for
// development and tests: device MQTT over TLS, service REST over HTTPS.
//
//	twinhub serve [--dir DIR | --memory] [--hostname localhost] [--mqtt-addr :8883] [--https-addr :443]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/twinlet/twinlet/internal/hub"
	"github.com/twinlet/twinlet/internal/version"
)

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "twinhub:", err)
		os.Exit(2)
	}
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: twinhub serve [--dir DIR | --memory] [--hostname localhost] [--mqtt-addr :8883] [--https-addr :443] [fault flags]")
	fmt.Fprintln(w, "       twinhub version")
}

func run(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		usage(stderr)
		return errors.New("missing command")
	}
	switch args[0] {
	case "serve":
		return serve(args[1:], stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, version.Version)
		return nil
	case "-h", "--help", "help":
		usage(stdout)
		return nil
	}
	usage(stderr)
	return fmt.Errorf("unknown command %q", args[0])
}

func serve(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", defaultDir(), "directory that keeps the CA, keys, registry and twins")
	memory := fs.Bool("memory", false, "keep everything in memory (nothing survives a restart)")
	hostname := fs.String("hostname", "localhost", "the hub's host name (connection strings, server certificate, SAS scope)")
	mqttAddr := fs.String("mqtt-addr", ":8883", "device endpoint: MQTT over TLS")
	httpsAddr := fs.String("https-addr", ":443", "service endpoint: REST over HTTPS")
	verbose := fs.Bool("v", false, "debug logs")
	admInterval := fs.Duration("adm-interval", 0, "evaluate configurations (automatic device management) on this period, as the service does (about 5m); 0: at once on every change")
	var f hub.Faults
	fs.DurationVar(&f.Delay, "fault-delay", 0, "fault injection: delay every twin reply and REST response")
	fs.Float64Var(&f.ThrottleTwinGet, "fault-throttle-twin-get", 0, "fault injection: share (0..1) of twin GETs answered 429")
	fs.Float64Var(&f.ThrottleReportedPatch, "fault-throttle-reported", 0, "fault injection: share (0..1) of reported patches answered 429")
	fs.Float64Var(&f.ThrottleREST, "fault-throttle-rest", 0, "fault injection: share (0..1) of REST requests answered 429")
	fs.Float64Var(&f.RejectConnects, "fault-reject-connects", 0, "fault injection: share (0..1) of valid CONNECTs refused")
	dropEvery := fs.Duration("fault-drop-every", 0, "fault injection: drop every device connection at this interval")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *memory {
		*dir = ""
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	h, err := hub.New(hub.Options{Dir: *dir, Hostname: *hostname, MQTTAddr: *mqttAddr, HTTPSAddr: *httpsAddr, Logger: log, Faults: f, ADMInterval: *admInterval})
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := h.Start(ctx); err != nil {
		return err
	}
	defer h.Close()
	caFile := h.CAFile()
	if caFile == "" {
		caFile = "(memory mode: see the CA below)"
	}
	fmt.Fprintf(stdout, "twinhub %s\nmqtt:  %s\nhttps: %s\nCA file: %s\nHostName=%s owner connection string:\n%s\n",
		version.Version, h.MQTTAddr(), h.HTTPSAddr(), caFile, h.Hostname(), h.OwnerConnectionString())
	if h.CAFile() == "" {
		fmt.Fprintf(stdout, "%s", h.CAPEM())
	}
	if *dropEvery > 0 {
		t := time.NewTicker(*dropEvery)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-t.C:
				log.Info("fault injection: dropped connections", "count", h.DropConnections())
			}
		}
	}
	<-ctx.Done()
	return nil
}

func defaultDir() string {
	if d, err := os.UserConfigDir(); err == nil {
		return d + "/twinhub"
	}
	return ".twinhub"
}
