package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/csv"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twinlet/twinlet/internal/config"
	"github.com/twinlet/twinlet/internal/sas"
	"github.com/twinlet/twinlet/internal/tpm"
	"github.com/twinlet/twinlet/internal/tpm/tpmtest"
)

func tpmCLI(t *testing.T, stdin string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := tpmCommand(context.Background(), args, strings.NewReader(stdin), &out, &errb)
	return code, out.String(), errb.String()
}

// TestTPMCommands drives `twinlet tpm` against swtpm: secrets go in on
// stdin and never come out, the token verifies with the stored key, and
// the enrollment info is what the library reports.
func TestTPMCommands(t *testing.T) {
	sw := tpmtest.Start(t)
	k := make([]byte, 32)
	rand.Read(k)
	kb := base64.StdEncoding.EncodeToString(k)
	cs := "HostName=hub.example;DeviceId=kiosk-17;SharedAccessKey=" + kb
	var all strings.Builder
	must := func(stdin string, args ...string) string {
		t.Helper()
		code, out, errs := tpmCLI(t, stdin, append([]string{"--tpm", sw.TCTI}, args...)...)
		all.WriteString(out + errs)
		if code != 0 {
			t.Fatalf("twinlet tpm %s: %d\n%s%s", strings.Join(args, " "), code, out, errs)
		}
		return out
	}
	if out := must("", "slots"); !strings.Contains(out, "no slot in use") {
		t.Fatalf("slots: %q", out)
	}
	must(cs+"\n", "slot-set-connection-string", "2")
	must(base64.StdEncoding.EncodeToString(k[:16]), "slot-set-key", "5")
	must("other.example/devices/d5/modules/m\n", "slot-set-uri", "5")
	var slots []tpm.SlotInfo
	if err := json.Unmarshal([]byte(must("", "slots", "--output", "json")), &slots); err != nil {
		t.Fatal(err)
	}
	if len(slots) != 2 || slots[0] != (tpm.SlotInfo{Slot: 2, Key: true, URI: "hub.example/devices/kiosk-17"}) || slots[1].URI != "other.example/devices/d5/modules/m" {
		t.Fatalf("slots %+v", slots)
	}

	tok := strings.TrimSpace(must("", "slot-token", "2", "--ttl", "10m"))
	head, sig, ok := strings.Cut(tok, ";SharedAccessSignature=")
	if !ok || head != "HostName=hub.example;DeviceId=kiosk-17" {
		t.Fatalf("token connection string %q", tok)
	}
	st, err := sas.Parse(sig)
	if err != nil {
		t.Fatal(err)
	}
	if err := sas.Verify(st, k, "hub.example/devices/kiosk-17", time.Now()); err != nil {
		t.Fatal(err)
	}
	if d := time.Until(st.Expiry); d > 10*time.Minute+time.Second || d < 9*time.Minute {
		t.Fatalf("expiry in %s, want 10m", d)
	}

	// From a file: only one its owner alone can read.
	f := filepath.Join(t.TempDir(), "cs")
	os.WriteFile(f, []byte(cs), 0o644)
	if code, _, errs := tpmCLI(t, "", "--tpm", sw.TCTI, "slot-set-connection-string", "3", "--in", f); code != 1 || !strings.Contains(errs, "chmod 600") {
		t.Fatalf("group-readable --in: %d %s", code, errs)
	}
	os.Chmod(f, 0o600)
	must("", "slot-set-connection-string", "3", "--in", f)

	// Secrets are never taken from argv.
	if code, _, errs := tpmCLI(t, "", "--tpm", sw.TCTI, "slot-set-key", "4", kb); code != 2 || !strings.Contains(errs, "stdin") {
		t.Fatalf("key on argv: %d %s", code, errs)
	}
	for _, bad := range [][]string{{"slot-token"}, {"slot-clear", "10"}, {"regid", "1"}, {"nope"}} {
		if code, _, _ := tpmCLI(t, "", append([]string{"--tpm", sw.TCTI}, bad...)...); code != 2 {
			t.Fatalf("%v: exit %d, want 2", bad, code)
		}
	}
	if code, _, errs := tpmCLI(t, "not base64!", "--tpm", sw.TCTI, "slot-set-key", "4"); code != 1 || !strings.Contains(errs, "base64") {
		t.Fatalf("bad key: %d %s", code, errs)
	}

	must("", "slot-clear", "2")
	if code, _, errs := tpmCLI(t, "", "--tpm", sw.TCTI, "slot-token", "2"); code != 1 || !strings.Contains(errs, "empty") {
		t.Fatalf("token of a cleared slot: %d %s", code, errs)
	}

	// Enrollment info, three ways, agreeing with ek/srk/regid.
	ek := strings.TrimSpace(must("", "ek"))
	srk := strings.TrimSpace(must("", "srk"))
	regid := strings.TrimSpace(must("", "regid"))
	ekb, _ := base64.StdEncoding.DecodeString(ek)
	if regid != tpm.RegistrationIDOf(ekb) {
		t.Fatalf("regid %s", regid)
	}
	var e enrollment
	json.Unmarshal([]byte(must("", "enrollment-info", "--output", "json")), &e)
	if e != (enrollment{RegistrationID: regid, EndorsementKey: ek, StorageRootKey: srk}) {
		t.Fatalf("enrollment-info json %+v", e)
	}
	rows, err := csv.NewReader(strings.NewReader(must("", "enrollment-info", "--output", "csv"))).ReadAll()
	if err != nil || len(rows) != 2 || rows[1][0] != regid || rows[1][1] != ek || rows[1][2] != srk {
		t.Fatalf("csv %v %v", rows, err)
	}
	qr := must("", "enrollment-info", "--output", "qr")
	if !strings.Contains(qr, "█") || !strings.Contains(qr, regid) {
		t.Fatalf("qr output:\n%s", qr)
	}
	if info := must("", "info"); !strings.Contains(info, "hmac:          true") || !strings.Contains(info, "2.0") {
		t.Fatalf("info:\n%s", info)
	}

	// Nothing printed the keys.
	for _, secret := range []string{kb, base64.StdEncoding.EncodeToString(k[:16])} {
		if strings.Contains(all.String(), secret) {
			t.Fatal("a key was printed")
		}
	}
}

// The TPM example configuration is valid.
func TestTPMExampleConfig(t *testing.T) {
	c, err := config.Load("../../examples/tpm/twinlet.yaml", true)
	if err != nil {
		t.Fatal(err)
	}
	if c.Connection.TPM == nil || c.Connection.TPM.Slot != 0 || c.Identities["collector"].Module != "collector" {
		t.Fatalf("example config %+v", c)
	}
}
