// Command twinhub runs a local, protocol-faithful Azure IoT Hub for
// development and tests: device MQTT over TLS, service REST over HTTPS.
//
//	twinhub serve [--dir DIR | --memory] [--hostname localhost] [--mqtt-addr :8883] [--https-addr :443]
//	              [--dps-hostname dps.localhost] [--hubs a,b,c | --hubs-file FILE] [--dps-allocation hashed]
//	              [--pprof 127.0.0.1:PORT]
package main

import (
	"context"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strings"
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

// defaultGOGC is the garbage collector's target for `twinhub serve` when
// the environment sets no GOGC: the heap may grow by a quarter of what is
// live (and of the goroutine stacks) between collections instead of all
// of it. Most of a hub's memory is live state per connected device
// (twins, connections, stacks), so Go's default 100 makes the hub hold
// about twice that. At 10,000 devices (fleet benchmark, one run each, the
// same hour) 25 holds 45.5 KiB of RSS per device against 57.1 with 50,
// for 34.6 s of CPU against 31.9 s over the whole rollout; 50 had cut
// 2,000 devices from 110 to 89 KiB against 100.
const defaultGOGC = 25

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: twinhub serve [--dir DIR | --memory] [--hostname localhost] [--mqtt-addr :8883] [--https-addr :443]")
	fmt.Fprintln(w, "                     [--dps-hostname dps.localhost] [--hubs a,b,c | --hubs-file FILE] [--dps-allocation hashed] [fault flags]")
	fmt.Fprintln(w, "                     [--pprof 127.0.0.1:PORT]")
	fmt.Fprintln(w, "       twinhub version")
	fmt.Fprintln(w, "       twinhub completion bash|zsh|fish")
	fmt.Fprintln(w, "       twinhub man")
	fmt.Fprintln(w, "\nenvironment: GOGC (serve: 25 unless set), GOMEMLIMIT (a soft memory limit, e.g. 1GiB) as for any Go program")
}

func run(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		usage(stderr)
		return errors.New("missing command")
	}
	switch args[0] {
	case "serve":
		return serve(args[1:], stdout, stderr)
	case "completion", "man":
		return docs(args[0], args[1:], stdout)
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
	dpsHost := fs.String("dps-hostname", "dps.localhost", "the Device Provisioning Service's host name, served on the HTTPS listener (empty: no DPS)")
	hubs := fs.String("hubs", "", "linked hubs of the DPS, comma-separated host names, each NAME[:WEIGHT] (default: the hub itself)")
	hubsFile := fs.String("hubs-file", "", "linked hubs of the DPS from a YAML or JSON file (hubs: [{hostname, weight, latency, noAllocation}])")
	allocation := fs.String("dps-allocation", "hashed", "the DPS's default allocation policy: hashed, geoLatency or static")
	retryAfter := fs.Duration("dps-retry-after", 0, "the Retry-After the DPS sends while assigning (default 3s, as the service)")
	admInterval := fs.Duration("adm-interval", 0, "evaluate configurations (automatic device management) on this period, as the service does (about 5m); 0: at once on every change")
	storageCS := fs.String("storage-connection-string", "", "file upload: the linked storage account's connection string (AccountName, AccountKey, BlobEndpoint); or --storage-account, --storage-key, --blob-endpoint")
	storageAccount := fs.String("storage-account", "", "file upload: the storage account name")
	storageKey := fs.String("storage-key", "", "file upload: the storage account key (base64)")
	blobEndpoint := fs.String("blob-endpoint", "", "file upload: the blob service URL (https://ACCOUNT.blob.core.windows.net, or https://127.0.0.1:10000/ACCOUNT for Azurite)")
	storageContainer := fs.String("storage-container", "fileupload", "file upload: the container that receives the blobs (it must exist)")
	storageTTL := fs.Duration("storage-sas-ttl", time.Hour, "file upload: lifetime of the blob SAS handed to a device")
	storageCA := fs.String("storage-ca-file", "", "file upload: CA certificates (PEM) the hub trusts for the blob endpoint, besides the system's")
	var f hub.Faults
	fs.DurationVar(&f.Delay, "fault-delay", 0, "fault injection: delay every twin reply and REST response")
	fs.Float64Var(&f.ThrottleTwinGet, "fault-throttle-twin-get", 0, "fault injection: share (0..1) of twin GETs answered 429")
	fs.Float64Var(&f.ThrottleReportedPatch, "fault-throttle-reported", 0, "fault injection: share (0..1) of reported patches answered 429")
	fs.Float64Var(&f.ThrottleREST, "fault-throttle-rest", 0, "fault injection: share (0..1) of REST requests answered 429")
	fs.Float64Var(&f.RejectConnects, "fault-reject-connects", 0, "fault injection: share (0..1) of valid CONNECTs refused")
	dropEvery := fs.Duration("fault-drop-every", 0, "fault injection: drop every device connection at this interval")
	pprofAddr := fs.String("pprof", "", "serve Go's profiles (heap, goroutines, CPU) on this loopback address, e.g. 127.0.0.1:6060, under /debug/pprof/ (off by default; no authentication, so loopback only)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *pprofAddr != "" {
		if err := checkLoopback(*pprofAddr); err != nil {
			return err
		}
		// Before the registry is loaded, so that the profile counts it.
		runtime.MemProfileRate = pprofMemProfileRate
	}
	if *memory {
		*dir = ""
	}
	if os.Getenv("GOGC") == "" {
		// Half the garbage collector's default headroom: see defaultGOGC.
		debug.SetGCPercent(defaultGOGC)
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	linked, err := linkedHubs(*hubs, *hubsFile)
	if err != nil {
		return err
	}
	upload, err := fileUpload(*storageCS, *storageAccount, *storageKey, *blobEndpoint, *storageContainer, *storageCA, *storageTTL)
	if err != nil {
		return err
	}
	h, err := hub.New(hub.Options{Dir: *dir, Hostname: *hostname, MQTTAddr: *mqttAddr, HTTPSAddr: *httpsAddr, Logger: log, Faults: f,
		DPSHostname: *dpsHost, LinkedHubs: linked, DPSAllocationPolicy: *allocation, DPSRetryAfter: *retryAfter, ADMInterval: *admInterval,
		FileUpload: upload})
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var pprofURL string
	if *pprofAddr != "" {
		addr, stopPprof, err := servePprof(ctx, *pprofAddr, log)
		if err != nil {
			return err
		}
		defer stopPprof()
		pprofURL = fmt.Sprintf("http://%s/debug/pprof/", addr)
	}
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
	if h.DPSHostname() != "" {
		fmt.Fprintf(stdout, "DPS ID scope: %s\nDPS host: %s (on the https listener)\n%s\n", h.IDScope(), h.DPSHostname(), h.DPSConnectionString())
		for _, l := range linked {
			if lh := h.LinkedHub(l.Hostname); lh != nil && lh != h {
				fmt.Fprintf(stdout, "linked hub %s owner connection string:\n%s\n", l.Hostname, lh.OwnerConnectionString())
			}
		}
	}
	if upload != nil {
		fmt.Fprintf(stdout, "file upload: %s/%s (account %s)\n", upload.BlobEndpoint, upload.Container, upload.AccountName)
	}
	if pprofURL != "" {
		fmt.Fprintf(stdout, "pprof: %s\n", pprofURL)
	}
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

// fileUpload builds the hub's file-upload options from the storage flags;
// nil when none is set.
func fileUpload(cs, account, key, endpoint, container, caFile string, ttl time.Duration) (*hub.FileUploadOptions, error) {
	var o hub.FileUploadOptions
	switch {
	case cs != "" && (account != "" || key != "" || endpoint != ""):
		return nil, errors.New("--storage-connection-string and --storage-account/--storage-key/--blob-endpoint exclude each other")
	case cs != "":
		var err error
		if o, err = hub.ParseStorageConnectionString(cs); err != nil {
			return nil, fmt.Errorf("--storage-connection-string: %w", err)
		}
	case account != "" || key != "" || endpoint != "":
		if account == "" || key == "" || endpoint == "" {
			return nil, errors.New("--storage-account, --storage-key and --blob-endpoint go together")
		}
		k, err := base64.StdEncoding.DecodeString(key)
		if err != nil {
			return nil, fmt.Errorf("--storage-key: not base64: %w", err)
		}
		o = hub.FileUploadOptions{AccountName: account, AccountKey: k, BlobEndpoint: endpoint}
	default:
		return nil, nil
	}
	if !strings.HasPrefix(o.BlobEndpoint, "https://") {
		return nil, fmt.Errorf("--blob-endpoint (or the connection string's BlobEndpoint) %q: must be an https URL", o.BlobEndpoint)
	}
	if container == "" {
		return nil, errors.New("--storage-container: empty")
	}
	o.Container, o.SASTTL = container, ttl
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("--storage-ca-file: %w", err)
		}
		o.CAPEM = pem
	}
	return &o, nil
}

func defaultDir() string {
	if d, err := os.UserConfigDir(); err == nil {
		return d + "/twinhub"
	}
	return ".twinhub"
}
