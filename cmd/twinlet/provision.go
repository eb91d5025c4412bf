package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/twinlet/twinlet/internal/config"
	"github.com/twinlet/twinlet/internal/dps"
	"github.com/twinlet/twinlet/internal/tpm"
)

// provisionFlags are the flags of `twinlet provision`.
type provisionFlags struct {
	endpoint, idScope, regID, keyFile, groupKeyFile, certFile, certKeyFile, tcti string
	addr, caFile, stateDir, output, payload, config                              string
	slot                                                                         int
}

func provision(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("twinlet provision", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var f provisionFlags
	fs.StringVar(&f.endpoint, "dps-endpoint", dps.GlobalEndpoint, "DPS host name (TLS server name)")
	fs.StringVar(&f.idScope, "id-scope", "", "the DPS ID scope (required)")
	fs.StringVar(&f.regID, "registration-id", "", "registration id (default: the certificate's CN or the TPM's id)")
	fs.StringVar(&f.keyFile, "key-file", "", "file (mode 0600) with the individual enrollment's base64 key")
	fs.StringVar(&f.groupKeyFile, "group-key-file", "", "file (mode 0600) with the enrollment group's base64 key")
	fs.StringVar(&f.certFile, "cert-file", "", "X.509 client certificate (PEM)")
	fs.StringVar(&f.certKeyFile, "cert-key-file", "", "the certificate's private key (PEM, mode 0600)")
	fs.StringVar(&f.tcti, "tpm", "", "attest with the TPM at this TCTI (device:/dev/tpmrm0, swtpm:host=…,port=…)")
	fs.IntVar(&f.slot, "slot", 0, "TPM slot (0-9) for the hub key")
	fs.StringVar(&f.addr, "dps-addr", "", "address to dial, host:port (default DPS-ENDPOINT:443)")
	fs.StringVar(&f.caFile, "ca-file", "", "extra CA (PEM) for the DPS certificate, e.g. twinhub's")
	fs.StringVar(&f.stateDir, "state-dir", "", "where the identity is stored (default from config, else /var/lib/twinlet)")
	fs.StringVar(&f.payload, "payload-file", "", "JSON file sent to DPS as the registration payload")
	fs.StringVar(&f.output, "output", "text", "output: text or json")
	fs.StringVar(&f.config, "config", config.DefaultPath, "agent configuration file (for the state directory)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "twinlet provision: unexpected argument %q (keys come from files, never from arguments)\n", fs.Arg(0))
		return 2
	}
	fail := func(code int, err error) int {
		fmt.Fprintf(stderr, "twinlet provision: %v\n", err)
		return code
	}
	if f.output != "text" && f.output != "json" {
		return fail(2, fmt.Errorf("--output: %q is not text or json", f.output))
	}
	if f.idScope == "" {
		return fail(2, errors.New("--id-scope is required"))
	}
	d := &config.DPS{Endpoint: f.endpoint, Address: f.addr, IDScope: f.idScope, RegistrationID: f.regID, CAFile: f.caFile}
	n := 0
	if f.keyFile != "" {
		n++
		d.Attestation.SymmetricKey = &config.KeyFile{KeyFile: f.keyFile}
	}
	if f.groupKeyFile != "" {
		n++
		d.Attestation.GroupKey = &config.KeyFile{KeyFile: f.groupKeyFile}
	}
	if f.certFile != "" || f.certKeyFile != "" {
		n++
		if f.certFile == "" || f.certKeyFile == "" {
			return fail(2, errors.New("--cert-file and --cert-key-file go together"))
		}
		d.Attestation.X509 = &config.X509{CertFile: f.certFile, KeyFile: f.certKeyFile}
	}
	if f.tcti != "" {
		n++
		d.Attestation.TPM = &config.TPMAttestation{TCTI: f.tcti, Slot: f.slot}
	}
	if n != 1 {
		return fail(2, errors.New("give exactly one of --key-file, --group-key-file, --cert-file/--cert-key-file, --tpm"))
	}
	if (f.keyFile != "" || f.groupKeyFile != "") && f.regID == "" {
		return fail(2, errors.New("--registration-id is required with --key-file or --group-key-file"))
	}
	if f.slot < 0 || f.slot > 9 {
		return fail(2, fmt.Errorf("--slot: %d is not 0-9", f.slot))
	}
	if f.payload != "" {
		data, err := os.ReadFile(f.payload)
		if err != nil {
			return fail(1, fmt.Errorf("--payload-file: %w", err))
		}
		if !json.Valid(data) {
			return fail(1, fmt.Errorf("--payload-file %s: not JSON", f.payload))
		}
		d.Payload = rawJSON(data)
	}
	stateDir := f.stateDir
	if stateDir == "" {
		cfg, err := config.Load(f.config, set(fs, "config"))
		if err != nil {
			return fail(1, err)
		}
		stateDir = cfg.StateDir
	}
	stateDir, err := filepath.Abs(stateDir)
	if err != nil {
		return fail(1, err)
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	tpms := &tpmSet{}
	defer tpms.Close()
	dc, err := dpsConfig(d, "", tpms, log)
	if err != nil {
		return fail(1, err)
	}
	res, err := dps.Register(ctx, dc)
	if err != nil {
		return fail(1, err)
	}
	if err := storeSlotURI(tpms, d, res); err != nil {
		return fail(1, err)
	}
	id := identityOf(res, d, time.Now())
	store := dps.Store{Dir: stateDir}
	if err := store.Save(id); err != nil {
		return fail(1, err)
	}
	where := filepath.Join(stateDir, dps.IdentityFile)
	if f.output == "json" {
		out := map[string]any{"assignedHub": res.AssignedHub, "deviceId": res.DeviceID, "registrationId": res.RegistrationID,
			"substatus": res.Substatus, "auth": id.Auth, "identityFile": where}
		if id.Auth == dps.AuthTPM {
			out["slot"] = id.Slot
		}
		if res.Payload != nil {
			out["payload"] = res.Payload
		}
		writeJSON(stdout, out)
		return 0
	}
	fmt.Fprintf(stdout, "assigned hub: %s\ndevice id:    %s\n", res.AssignedHub, res.DeviceID)
	if id.Auth == dps.AuthTPM {
		fmt.Fprintf(stdout, "key:          TPM slot %d\n", id.Slot)
	}
	fmt.Fprintf(stdout, "identity:     %s\n", where)
	return 0
}

// rawJSON keeps a payload file's bytes as JSON for the config's payload.
type rawJSON []byte

// MarshalJSON implements json.Marshaler.
func (r rawJSON) MarshalJSON() ([]byte, error) { return []byte(r), nil }

// dpsConfig turns a connection.dps block into a registration: it reads
// the keys (0600 files) and opens the TPM (in tpms, which closes it).
// caFile is used when the block names none.
func dpsConfig(d *config.DPS, caFile string, tpms *tpmSet, log *slog.Logger) (dps.Config, error) {
	c := dps.Config{Endpoint: d.Endpoint, Addr: d.Address, IDScope: d.IDScope, RegistrationID: d.RegistrationID, Logger: log}
	if c.Endpoint == "" {
		c.Endpoint = dps.GlobalEndpoint
	}
	if p := d.PayloadJSON(); p != nil {
		c.Payload = p
	}
	if d.CAFile != "" {
		caFile = d.CAFile
	}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return c, fmt.Errorf("dps ca file: %w", err)
		}
		c.CAPEM = pem
	}
	a := d.Attestation
	switch {
	case a.SymmetricKey != nil:
		key, err := dps.ReadKeyFile(a.SymmetricKey.KeyFile)
		if err != nil {
			return c, err
		}
		c.Attestation = dps.SymmetricKey{Key: key}
	case a.GroupKey != nil:
		key, err := dps.ReadKeyFile(a.GroupKey.KeyFile)
		if err != nil {
			return c, err
		}
		c.Attestation = dps.GroupKey{Key: key}
	case a.X509 != nil:
		cert, err := dps.LoadCertificate(a.X509.CertFile, a.X509.KeyFile)
		if err != nil {
			return c, err
		}
		c.Attestation = dps.X509{Certificate: cert}
	case a.TPM != nil:
		t, err := tpms.get(a.TPM.TCTI)
		if err != nil {
			return c, fmt.Errorf("tpm: %w", err)
		}
		c.Attestation = dps.TPMAttestation{TPM: t, Slot: a.TPM.Slot}
	default:
		return c, errors.New("dps: no attestation configured")
	}
	return c, nil
}

// identityOf is the identity to store for a registration.
func identityOf(res *dps.Result, d *config.DPS, now time.Time) dps.Identity {
	var certFile, keyFile string
	if x := d.Attestation.X509; x != nil {
		certFile, keyFile = absPath(x.CertFile), absPath(x.KeyFile)
	}
	return dps.NewIdentity(res, certFile, keyFile, now)
}

func absPath(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}

// describeDPS names a DPS block for logs, without secrets.
func describeDPS(d *config.DPS) string {
	var kinds []string
	a := d.Attestation
	for _, k := range []struct {
		on   bool
		name string
	}{{a.SymmetricKey != nil, "symmetricKey"}, {a.GroupKey != nil, "groupKey"}, {a.X509 != nil, "x509"}, {a.TPM != nil, "tpm"}} {
		if k.on {
			kinds = append(kinds, k.name)
		}
	}
	if len(kinds) == 0 {
		kinds = append(kinds, "wait")
	}
	return strings.Join(kinds, ",")
}

// storeSlotURI writes the hub URI of a TPM identity into its slot's NV
// index, as Limpet does, so that other tools (and wait mode) find it.
func storeSlotURI(tpms *tpmSet, d *config.DPS, res *dps.Result) error {
	if d.Attestation.TPM == nil {
		return nil
	}
	t, err := tpms.get(d.Attestation.TPM.TCTI)
	if err != nil {
		return fmt.Errorf("tpm: %w", err)
	}
	if err := t.SetSlotURI(res.Slot, tpm.Identity{HostName: res.AssignedHub, DeviceID: res.DeviceID}); err != nil {
		return fmt.Errorf("tpm slot %d: store the hub URI: %w", res.Slot, err)
	}
	return nil
}
