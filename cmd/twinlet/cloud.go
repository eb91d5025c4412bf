package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/twinlet/twinlet/internal/agent"
	"github.com/twinlet/twinlet/internal/config"
	"github.com/twinlet/twinlet/internal/iothub"
	"github.com/twinlet/twinlet/internal/policy"
	"github.com/twinlet/twinlet/reconciler"
)

// hasConnection reports whether the configuration names an IoT Hub.
func hasConnection(c config.Connection) bool {
	return c.ConnectionString != "" || c.KeyFile != "" || c.X509 != nil || c.TPM != nil || c.DPS != nil
}

// deviceConfig turns the connection block of the agent config into a
// device client configuration. Key material is read here and never logged.
func deviceConfig(cfg config.Config, tpms *tpmSet) (iothub.DeviceConfig, error) {
	c := cfg.Connection
	var dc iothub.DeviceConfig
	var cs iothub.ConnectionString
	var err error
	switch {
	case c.ConnectionString != "":
		cs, err = iothub.ParseConnectionString(c.ConnectionString)
		if err != nil {
			return dc, fmt.Errorf("connection.connectionString: %w", err)
		}
	case c.KeyFile != "":
		cs, err = iothub.ReadKeyFile(c.KeyFile)
		if err != nil {
			return dc, fmt.Errorf("connection.keyFile: %w", err)
		}
	case c.X509 != nil:
		if _, err := policy.ReadSecure(c.X509.KeyFile); err != nil {
			return dc, fmt.Errorf("connection.x509.keyFile: %w", err)
		}
		if fi, err := os.Stat(c.X509.KeyFile); err == nil && fi.Mode().Perm()&0o077 != 0 {
			return dc, fmt.Errorf("connection.x509.keyFile %s: refused: mode %04o lets group or others read it", c.X509.KeyFile, fi.Mode().Perm())
		}
		cert, err := tls.LoadX509KeyPair(c.X509.CertFile, c.X509.KeyFile)
		if err != nil {
			return dc, fmt.Errorf("connection.x509: %w", err)
		}
		dc.Certificate = &cert
		cs = iothub.ConnectionString{HostName: c.HostName, DeviceID: c.DeviceID, ModuleID: c.ModuleID}
	case c.TPM != nil:
		if cs, dc.Signer, err = tpmIdentity(tpms, *c.TPM); err != nil {
			return dc, fmt.Errorf("connection.tpm: %w", err)
		}
	}
	if cs.SharedAccessKeyName != "" {
		return dc, errors.New("connection: a shared access policy connection string is not a device identity; use the device's (or module's) connection string")
	}
	if c.HostName != "" {
		cs.HostName = c.HostName
	}
	if cs.HostName == "" || cs.DeviceID == "" {
		return dc, errors.New("connection: HostName and DeviceId are required")
	}
	if cfg.Identity == "module" && cs.ModuleID == "" {
		cs.ModuleID = "twinlet"
	}
	dc.HostName, dc.DeviceID, dc.ModuleID = cs.HostName, cs.DeviceID, cs.ModuleID
	if len(cs.SharedAccessKey) > 0 {
		dc.Signer = iothub.KeySigner{Key: cs.SharedAccessKey}
	}
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return dc, fmt.Errorf("connection.caFile: %w", err)
		}
		dc.CAPEM = pem
	}
	if c.Port != 0 {
		dc.Addr = net.JoinHostPort(cs.HostName, strconv.Itoa(c.Port))
	}
	dc.KeepAlive = c.KeepAlive
	return dc, nil
}

// cloud connects the agent to IoT Hub and serves metrics; it returns a
// function that runs both until ctx ends. afterPing is called when the
// hub answers a keep-alive ping (memtrim.Trimmer.AfterWake).
func cloud(cfg config.Config, r *reconciler.Reconciler, a *agentRef, m *agent.Metrics, afterPing func(), log *slog.Logger) (func(context.Context), error) {
	var runs []func(context.Context)
	tpms := &tpmSet{}
	ok := false
	defer func() {
		if !ok {
			tpms.Close()
		}
	}()
	if cfg.Connection.DPS != nil {
		p, err := newProvisioner(cfg, r, a, m, tpms, log)
		if err != nil {
			return nil, err
		}
		p.afterPing = afterPing
		runs = append(runs, p.run)
	} else if hasConnection(cfg.Connection) {
		dc, err := deviceConfig(cfg, tpms)
		if err != nil {
			return nil, err
		}
		ag, err := agent.New(r, dc, agent.Options{StateDir: cfg.StateDir, Metrics: m, Logger: log.With("component", "iothub"),
			FileUploadAddr: fileUploadAddr(cfg.Connection, dc.HostName), AfterPing: afterPing})
		if err != nil {
			return nil, err
		}
		a.set(ag)
		log.Info("connecting to IoT Hub", "host", dc.HostName, "device", dc.DeviceID, "module", dc.ModuleID)
		runs = append(runs, func(ctx context.Context) { ag.Run(ctx) })
	}
	if len(cfg.Identities) > 0 {
		run, err := identityService(cfg, tpms, log)
		if err != nil {
			return nil, err
		}
		runs = append(runs, run)
	}
	if cfg.MetricsAddr != "" && m != nil {
		ln, err := net.Listen("tcp", cfg.MetricsAddr)
		if err != nil {
			return nil, fmt.Errorf("--metrics-addr: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", m.Handler())
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		log.Info("serving metrics", "addr", ln.Addr().String())
		runs = append(runs, func(ctx context.Context) {
			go srv.Serve(ln)
			<-ctx.Done()
			srv.Close()
		})
	}
	ok = true
	return func(ctx context.Context) {
		defer tpms.Close()
		done := make(chan struct{}, len(runs))
		for _, run := range runs {
			go func() { run(ctx); done <- struct{}{} }()
		}
		for range runs {
			<-done
		}
	}, nil
}

// fileUploadAddr is the hub's HTTPS address for file upload: HostName:443
// unless connection.httpsPort says otherwise (emulators).
func fileUploadAddr(c config.Connection, host string) string {
	if c.HTTPSPort != 0 {
		return net.JoinHostPort(host, strconv.Itoa(c.HTTPSPort))
	}
	return ""
}
