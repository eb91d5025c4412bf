package main

import (
	"context"
	"encoding/base64"
	"encoding/csv"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	qrcode "github.com/skip2/go-qrcode"

	"github.com/twinlet/twinlet/internal/iothub"
	"github.com/twinlet/twinlet/internal/tpm"
)

const tpmUsage = `usage: twinlet tpm [--tpm TCTI] <command> [SLOT] [flags]

TCTI: device:/dev/tpmrm0 (default), swtpm:host=127.0.0.1,port=2321, sim

commands:
  info                          TPM manufacturer, firmware, HMAC support
  ek | srk                      the endorsement / storage root key (base64 TPM2B_PUBLIC)
  regid                         the DPS registration id (base32 of SHA-256 of the EK)
  enrollment-info [--output json|csv|qr|text]
                                what a factory line records for a DPS enrollment
  slots [--output json]         the slots (0-9) in use
  slot-set-key N                store an HMAC key (base64 on stdin) in slot N
  slot-set-uri N                store host/devices/ID[/modules/M] (stdin) in slot N
  slot-set-connection-string N  store a device or module connection string (stdin)
  slot-token N [--ttl 1h]       print a SAS token connection string for slot N
  slot-clear N                  remove slot N's key and URI

Secrets are read from stdin, or from --in FILE (mode 0600), never from arguments.
`

// tpmCommand runs `twinlet tpm …`. stdin carries the secrets.
func tpmCommand(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	var tcti, output, in string
	var ttl time.Duration
	fs := flag.NewFlagSet("twinlet tpm", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, tpmUsage) }
	fs.StringVar(&tcti, "tpm", envOr("TWINLET_TPM", tpm.DefaultTCTI), "TPM to use (TCTI)")
	fs.StringVar(&output, "output", "text", "output format")
	fs.StringVar(&in, "in", "", "read the secret from this file (mode 0600) instead of stdin")
	fs.DurationVar(&ttl, "ttl", time.Hour, "token lifetime (slot-token)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	rest := fs.Args()
	if len(rest) == 0 {
		fmt.Fprint(stderr, tpmUsage)
		return 2
	}
	sub, rest := rest[0], rest[1:]
	// A command's flags may follow it and its slot number.
	slot := -1
	if len(rest) > 0 && !strings.HasPrefix(rest[0], "-") {
		n, err := strconv.Atoi(rest[0])
		if err != nil || n < 0 || n >= tpm.Slots {
			fmt.Fprintf(stderr, "twinlet tpm %s: slot %q: want 0-%d\n", sub, rest[0], tpm.Slots-1)
			return 2
		}
		slot, rest = n, rest[1:]
	}
	if err := fs.Parse(rest); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "twinlet tpm %s: unexpected argument %q (secrets come from stdin or --in)\n", sub, fs.Arg(0))
		return 2
	}
	needSlot := strings.HasPrefix(sub, "slot-")
	if needSlot && slot < 0 {
		fmt.Fprintf(stderr, "twinlet tpm %s: a slot number (0-%d) is required\n", sub, tpm.Slots-1)
		return 2
	}
	if !needSlot && slot >= 0 {
		fmt.Fprintf(stderr, "twinlet tpm %s: takes no slot\n", sub)
		return 2
	}
	switch {
	case (sub == "info" || sub == "slots") && output != "text" && output != "json":
		fmt.Fprintf(stderr, "twinlet tpm %s: --output %q: want text or json\n", sub, output)
		return 2
	case sub == "enrollment-info" && output != "text" && output != "json" && output != "csv" && output != "qr":
		fmt.Fprintf(stderr, "twinlet tpm %s: --output %q: want json, csv, qr or text\n", sub, output)
		return 2
	}
	if ttl <= 0 {
		fmt.Fprintln(stderr, "twinlet tpm: --ttl must be positive")
		return 2
	}
	switch sub {
	case "info", "ek", "srk", "regid", "enrollment-info", "slots", "slot-set-key", "slot-set-uri",
		"slot-set-connection-string", "slot-token", "slot-clear":
	case "help":
		fmt.Fprint(stdout, tpmUsage)
		return 0
	default:
		fmt.Fprintf(stderr, "twinlet tpm: unknown command %q\n%s", sub, tpmUsage)
		return 2
	}
	var secret string
	if sub == "slot-set-key" || sub == "slot-set-uri" || sub == "slot-set-connection-string" {
		s, err := readSecret(stdin, in)
		if err != nil {
			fmt.Fprintf(stderr, "twinlet tpm %s: %v\n", sub, err)
			return 1
		}
		secret = s
	}
	t, err := tpm.Open(tcti)
	if err != nil {
		fmt.Fprintf(stderr, "twinlet tpm: %v\n", err)
		return 1
	}
	defer t.Close()
	if err := tpmRun(ctx, t, sub, slot, secret, output, ttl, stdout); err != nil {
		fmt.Fprintf(stderr, "twinlet tpm %s: %v\n", sub, err)
		return 1
	}
	return 0
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// readSecret reads one secret from a file that only its owner can read,
// or from stdin.
func readSecret(stdin io.Reader, path string) (string, error) {
	var r io.Reader = stdin
	if path != "" {
		f, err := os.Open(path)
		if err != nil {
			return "", fmt.Errorf("--in: %w", err)
		}
		defer f.Close()
		fi, err := f.Stat()
		if err != nil {
			return "", fmt.Errorf("--in: %w", err)
		}
		if fi.Mode().Perm()&0o077 != 0 {
			return "", fmt.Errorf("--in %s: refused: mode %04o lets group or others read it (chmod 600 %s)", path, fi.Mode().Perm(), path)
		}
		r = f
	}
	if r == nil {
		return "", errors.New("no input")
	}
	b, err := io.ReadAll(io.LimitReader(r, 8192))
	if err != nil {
		return "", fmt.Errorf("read input: %w", err)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", errors.New("nothing on stdin (pipe the value in, or use --in FILE)")
	}
	return s, nil
}

// enrollment is what a DPS TPM enrollment needs, named as DPS names it.
type enrollment struct {
	RegistrationID string `json:"registrationId"`
	EndorsementKey string `json:"endorsementKey"`
	StorageRootKey string `json:"storageRootKey"`
}

func tpmRun(ctx context.Context, t *tpm.TPM, sub string, slot int, secret, output string, ttl time.Duration, stdout io.Writer) error {
	b64 := base64.StdEncoding.EncodeToString
	switch sub {
	case "info":
		in, err := t.Info()
		if err != nil {
			return err
		}
		if output == "json" {
			writeJSON(stdout, in)
			return nil
		}
		fmt.Fprintf(stdout, "tcti:          %s\nfamily:        %s\nmanufacturer:  %s\nfirmware:      %08x.%08x\nhmac:          %v\n",
			in.TCTI, in.Family, in.Manufacturer, in.FirmwareHi, in.FirmwareLo, in.HMAC)
	case "ek", "srk":
		f := t.EndorsementKeyPublic
		if sub == "srk" {
			f = t.StorageRootKeyPublic
		}
		p, err := f()
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, b64(p))
	case "regid":
		id, err := t.RegistrationID()
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, id)
	case "enrollment-info":
		ek, err := t.EndorsementKeyPublic()
		if err != nil {
			return err
		}
		srk, err := t.StorageRootKeyPublic()
		if err != nil {
			return err
		}
		e := enrollment{RegistrationID: tpm.RegistrationIDOf(ek), EndorsementKey: b64(ek), StorageRootKey: b64(srk)}
		switch output {
		case "json":
			writeJSON(stdout, e)
		case "csv", "qr":
			var sb strings.Builder
			w := csv.NewWriter(&sb)
			if output == "csv" {
				w.Write([]string{"registrationId", "endorsementKey", "storageRootKey"})
			}
			w.Write([]string{e.RegistrationID, e.EndorsementKey, e.StorageRootKey})
			w.Flush()
			if output == "csv" {
				fmt.Fprint(stdout, sb.String())
				return nil
			}
			q, err := qrcode.New(strings.TrimSpace(sb.String()), qrcode.Low)
			if err != nil {
				return fmt.Errorf("qr: %w", err)
			}
			fmt.Fprint(stdout, q.ToSmallString(false))
			fmt.Fprintf(stdout, "registration id: %s\n", e.RegistrationID)
		case "text", "":
			fmt.Fprintf(stdout, "registrationId: %s\nendorsementKey: %s\nstorageRootKey: %s\n", e.RegistrationID, e.EndorsementKey, e.StorageRootKey)
		default:
			return fmt.Errorf("--output %q: want json, csv, qr or text", output)
		}
	case "slots":
		s, err := t.SlotsInUse()
		if err != nil {
			return err
		}
		if output == "json" {
			if s == nil {
				s = []tpm.SlotInfo{}
			}
			writeJSON(stdout, s)
			return nil
		}
		if len(s) == 0 {
			fmt.Fprintln(stdout, "no slot in use")
		}
		for _, si := range s {
			key := "no key"
			if si.Key {
				key = "key"
			}
			uri := si.URI
			switch {
			case si.Error != "":
				uri = "(unreadable: " + si.Error + ")"
			case uri == "":
				uri = "(no URI)"
			}
			fmt.Fprintf(stdout, "%d  %-6s  %s\n", si.Slot, key, uri)
		}
	case "slot-set-key":
		k, err := base64.StdEncoding.DecodeString(secret)
		if err != nil {
			return errors.New("stdin: the key is not base64")
		}
		if err := t.SetSlotKey(slot, k); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "slot %d: key stored in the TPM at %#x\n", slot, uint32(tpm.KeyHandle(slot)))
	case "slot-set-uri":
		id, err := tpm.ParseURI(secret)
		if err != nil {
			return fmt.Errorf("stdin: %w", err)
		}
		if err := t.SetSlotURI(slot, id); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "slot %d: %s\n", slot, id.URI())
	case "slot-set-connection-string":
		cs, err := iothub.ParseConnectionString(secret)
		if err != nil {
			return fmt.Errorf("stdin: %w", err)
		}
		if err := t.SetSlotConnectionString(slot, cs); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "slot %d: key stored in the TPM, identity %s\n", slot, tpm.Identity{HostName: cs.HostName, DeviceID: cs.DeviceID, ModuleID: cs.ModuleID}.URI())
	case "slot-token":
		id, tok, err := t.SlotToken(ctx, slot, ttl, time.Now())
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, tpm.TokenConnectionString(id, tok))
	case "slot-clear":
		if err := t.ClearSlot(slot); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "slot %d: cleared\n", slot)
	}
	return nil
}
