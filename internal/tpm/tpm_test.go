package tpm_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base32"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/twinlet/twinlet/internal/iothub"
	"github.com/twinlet/twinlet/internal/sas"
	"github.com/twinlet/twinlet/internal/tpm"
	"github.com/twinlet/twinlet/internal/tpm/tpmblob"
	"github.com/twinlet/twinlet/internal/tpm/tpmtest"
)

// backends runs f against swtpm (libtpms) and, when this test binary has
// cgo, against go-tpm-tools' simulator (the Microsoft reference TPM).
func backends(t *testing.T, f func(t *testing.T, tcti string)) {
	t.Run("swtpm", func(t *testing.T) { f(t, tpmtest.Start(t).TCTI) })
	t.Run("sim", func(t *testing.T) {
		if !tpm.SimAvailable() {
			t.Skip("built without cgo: no simulator")
		}
		f(t, "sim")
	})
}

func open(t *testing.T, tcti string) *tpm.TPM {
	t.Helper()
	tp, err := tpm.Open(tcti)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tp.Close() })
	return tp
}

func key(t *testing.T, n int) []byte {
	k := make([]byte, n)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

func TestEndorsementAndStorageRootKeys(t *testing.T) {
	backends(t, func(t *testing.T, tcti string) {
		tp := open(t, tcti)
		ek, err := tp.EndorsementKeyPublic()
		if err != nil {
			t.Fatal(err)
		}
		ek2, err := tp.EndorsementKeyPublic()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(ek, ek2) {
			t.Fatal("EK changed between two reads: it was not persisted")
		}
		p, err := tpmblob.ParsePublic(ek)
		if err != nil {
			t.Fatal(err)
		}
		if p.Type != tpm2.TPMAlgRSA || !p.ObjectAttributes.AdminWithPolicy || !p.ObjectAttributes.Restricted {
			t.Fatalf("EK is not the standard RSA EK: %+v", p.ObjectAttributes)
		}
		srk, err := tp.StorageRootKeyPublic()
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(srk, ek) {
			t.Fatal("SRK equals EK")
		}
		id, err := tp.RegistrationID()
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(ek)
		want := strings.ToLower(strings.TrimRight(base32.StdEncoding.EncodeToString(sum[:]), "="))
		if id != want || len(id) != 52 {
			t.Fatalf("registration id %q, want %q", id, want)
		}
	})
}

func TestSlotKeySignsTokensTheKeyVerifies(t *testing.T) {
	backends(t, func(t *testing.T, tcti string) {
		tp := open(t, tcti)
		k := key(t, 32)
		if err := tp.SetSlotKey(3, k); err != nil {
			t.Fatal(err)
		}
		now := time.Now()
		res := "hub.example/devices/kiosk-17"
		tok, err := tp.Signer(3).Sign(context.Background(), res, now.Add(time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		tok1, err := sas.Parse(tok)
		if err != nil {
			t.Fatal(err)
		}
		if err := sas.Verify(tok1, k, res, now); err != nil {
			t.Fatalf("token signed in the TPM does not verify with the imported key: %v", err)
		}
		if err := sas.Verify(tok1, key(t, 32), res, now); !errors.Is(err, sas.ErrSignature) {
			t.Fatalf("another key verifies it: %v", err)
		}
		// Past 1,024 bytes the TPM signs with an HMAC sequence.
		for _, n := range []int{0, 1, 1024, 1025, 2048, 5000} {
			data := bytes.Repeat([]byte{'x'}, n)
			got, err := tp.HMAC(3, data)
			if err != nil {
				t.Fatalf("%d bytes: %v", n, err)
			}
			m := hmac.New(sha256.New, k)
			m.Write(data)
			if !hmac.Equal(got, m.Sum(nil)) {
				t.Fatalf("%d bytes: TPM HMAC differs from software HMAC", n)
			}
		}
		// A new key replaces the old one.
		k2 := key(t, 16)
		if err := tp.SetSlotKey(3, k2); err != nil {
			t.Fatal(err)
		}
		got, _ := tp.HMAC(3, []byte("a"))
		m := hmac.New(sha256.New, k2)
		m.Write([]byte("a"))
		if !hmac.Equal(got, m.Sum(nil)) {
			t.Fatal("slot key was not replaced")
		}
		if _, err := tp.HMAC(4, []byte("a")); err == nil {
			t.Fatal("empty slot signed")
		}
		if err := tp.SetSlotKey(3, key(t, 8)); err == nil {
			t.Fatal("8-byte key accepted")
		}
		if err := tp.SetSlotKey(10, k); err == nil {
			t.Fatal("slot 10 accepted")
		}
	})
}

func TestSlotURIsAndClear(t *testing.T) {
	backends(t, func(t *testing.T, tcti string) {
		tp := open(t, tcti)
		if got, err := tp.SlotsInUse(); err != nil || len(got) != 0 {
			t.Fatalf("fresh TPM slots %v %v", got, err)
		}
		cs, err := iothub.ParseConnectionString("HostName=hub.example;DeviceId=kiosk-17;ModuleId=agent;SharedAccessKey=" + "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=")
		if err != nil {
			t.Fatal(err)
		}
		if err := tp.SetSlotConnectionString(1, cs); err != nil {
			t.Fatal(err)
		}
		if err := tp.SetSlotURI(7, tpm.Identity{HostName: "h2", DeviceID: "d2"}); err != nil {
			t.Fatal(err)
		}
		// Rewriting a URI of another length replaces the index.
		if err := tp.SetSlotURI(7, tpm.Identity{HostName: "hub-two.example", DeviceID: "dev-two"}); err != nil {
			t.Fatal(err)
		}
		id, err := tp.SlotURI(1)
		if err != nil || id != (tpm.Identity{HostName: "hub.example", DeviceID: "kiosk-17", ModuleID: "agent"}) {
			t.Fatalf("slot 1 = %+v %v", id, err)
		}
		got, err := tp.SlotsInUse()
		if err != nil {
			t.Fatal(err)
		}
		want := []tpm.SlotInfo{{Slot: 1, Key: true, URI: "hub.example/devices/kiosk-17/modules/agent"}, {Slot: 7, URI: "hub-two.example/devices/dev-two"}}
		if len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
			t.Fatalf("slots %+v, want %+v", got, want)
		}
		_, tok, err := tp.SlotToken(context.Background(), 1, time.Hour, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		tok1, _ := sas.Parse(tok)
		if err := sas.Verify(tok1, cs.SharedAccessKey, "hub.example/devices/kiosk-17/modules/agent", time.Now()); err != nil {
			t.Fatal(err)
		}
		if err := tp.ClearSlot(1); err != nil {
			t.Fatal(err)
		}
		if err := tp.ClearSlot(1); err != nil {
			t.Fatalf("clearing an empty slot: %v", err)
		}
		if _, err := tp.SlotURI(1); !errors.Is(err, tpm.ErrEmptySlot) {
			t.Fatalf("cleared slot URI: %v", err)
		}
		got, _ = tp.SlotsInUse()
		if len(got) != 1 || got[0].Slot != 7 {
			t.Fatalf("after clear: %+v", got)
		}
	})
}

// A slot's key can be used, never read back out: the TPM returns only its
// public area, and refuses to duplicate it (fixedTPM for keys created from
// bytes; no duplication policy for DPS-imported keys).
func TestKeysCannotBeReadOut(t *testing.T) {
	backends(t, func(t *testing.T, tcti string) {
		tp := open(t, tcti)
		k := key(t, 32)
		if err := tp.SetSlotKey(0, k); err != nil {
			t.Fatal(err)
		}
		ek, _ := tp.EndorsementKeyPublic()
		srk, _ := tp.StorageRootKeyPublic()
		blob, err := tpmblob.Make(ek, srk, k)
		if err != nil {
			t.Fatal(err)
		}
		if err := tp.ActivateIdentityKey(blob, 1); err != nil {
			t.Fatal(err)
		}
		raw := tp.Raw()
		for _, slot := range []int{0, 1} {
			rp, err := tpm2.ReadPublic{ObjectHandle: tpm.KeyHandle(slot)}.Execute(raw)
			if err != nil {
				t.Fatal(err)
			}
			pub, _ := rp.OutPublic.Contents()
			if bytes.Contains(tpm2.Marshal(rp.OutPublic), k) {
				t.Fatalf("slot %d: the public area contains the key", slot)
			}
			if slot == 0 && !(pub.ObjectAttributes.FixedTPM && pub.ObjectAttributes.FixedParent) {
				t.Fatalf("slot 0 key is not fixedTPM|fixedParent")
			}
			srkRP, err := tpm2.ReadPublic{ObjectHandle: tpm.SRKHandle}.Execute(raw)
			if err != nil {
				t.Fatal(err)
			}
			_, err = tpm2.Duplicate{
				ObjectHandle:    tpm2.AuthHandle{Handle: tpm.KeyHandle(slot), Name: rp.Name, Auth: tpm2.PasswordAuth(nil)},
				NewParentHandle: tpm2.NamedHandle{Handle: tpm.SRKHandle, Name: srkRP.Name},
				Symmetric:       tpm2.TPMTSymDef{Algorithm: tpm2.TPMAlgNull},
			}.Execute(raw)
			if err == nil {
				t.Fatalf("slot %d: the TPM duplicated the key out", slot)
			}
		}
	})
}

func TestActivationBlobRoundTrip(t *testing.T) {
	backends(t, func(t *testing.T, tcti string) {
		tp := open(t, tcti)
		ek, err := tp.EndorsementKeyPublic()
		if err != nil {
			t.Fatal(err)
		}
		srk, err := tp.StorageRootKeyPublic()
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range []int{32, 64} {
			k := key(t, n)
			blob, err := tpmblob.Make(ek, srk, k)
			if err != nil {
				t.Fatal(err)
			}
			if err := tp.ActivateIdentityKey(blob, 0); err != nil {
				t.Fatalf("%d-byte key: %v", n, err)
			}
			now := time.Now()
			res := "0ne00000001/registrations/" + "r1"
			tok, err := tp.Signer(0).Sign(context.Background(), res, now.Add(time.Hour))
			if err != nil {
				t.Fatal(err)
			}
			tok1, _ := sas.Parse(tok)
			if err := sas.Verify(tok1, k, res, now); err != nil {
				t.Fatalf("%d-byte key: token from the activated key does not verify: %v", n, err)
			}
		}
		// A blob made for another TPM's EK does not activate here.
		other := otherEK(t)
		blob, err := tpmblob.Make(other, srk, key(t, 32))
		if err != nil {
			t.Fatal(err)
		}
		if err := tp.ActivateIdentityKey(blob, 0); err == nil {
			t.Fatal("a blob for another EK was activated")
		}
		// Truncated blobs are refused before the TPM sees them.
		good, _ := tpmblob.Make(ek, srk, key(t, 32))
		if err := tp.ActivateIdentityKey(good[:len(good)-5], 0); err == nil || !strings.Contains(err.Error(), "activation blob") {
			t.Fatalf("truncated blob: %v", err)
		}
	})
}

// otherEK is the TPM2B_PUBLIC of an RSA EK that no TPM here holds.
func otherEK(t *testing.T) []byte {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	p := tpm2.RSAEKTemplate
	p.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: k.N.Bytes()})
	return tpm2.Marshal(tpm2.New2B(p))
}

// What twinlet writes is what tpm2-tools reads.
func TestTPM2ToolsReadWhatTwinletWrites(t *testing.T) {
	for _, tool := range []string{"tpm2_readpublic", "tpm2_nvread"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed: run `make tpm-tools`", tool)
		}
	}
	sw := tpmtest.Start(t)
	tp, err := tpm.Open(sw.TCTI)
	if err != nil {
		t.Fatal(err)
	}
	ek, err := tp.EndorsementKeyPublic()
	if err != nil {
		t.Fatal(err)
	}
	if err := tp.SetSlotKey(0, key(t, 32)); err != nil {
		t.Fatal(err)
	}
	if err := tp.SetSlotURI(0, tpm.Identity{HostName: "hub.example", DeviceID: "kiosk-17"}); err != nil {
		t.Fatal(err)
	}
	tp.Close() // swtpm serves one client at a time
	dir := t.TempDir()
	run := func(args ...string) {
		t.Helper()
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Env = sw.Env()
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	run("tpm2_readpublic", "-c", "0x81010001", "-f", "tss", "-o", filepath.Join(dir, "ek.pub"))
	got, _ := os.ReadFile(filepath.Join(dir, "ek.pub"))
	if !bytes.Equal(got, ek) {
		t.Fatalf("tpm2_readpublic EK differs from twinlet's:\n%x\n%x", got, ek)
	}
	run("tpm2_readpublic", "-c", "0x81000100")
	run("tpm2_nvread", "0x01400100", "-o", filepath.Join(dir, "uri"))
	uri, _ := os.ReadFile(filepath.Join(dir, "uri"))
	if string(uri) != "hub.example/devices/kiosk-17" {
		t.Fatalf("tpm2_nvread: %q", uri)
	}
}

// BenchmarkSign is one SAS token signed inside swtpm over its TCP port
// (ReadPublic + TPM2_HMAC): what every hub (re)connect and every identity
// socket request costs.
func BenchmarkSign(b *testing.B) {
	sw := tpmtest.Start(b)
	tp, err := tpm.Open(sw.TCTI)
	if err != nil {
		b.Fatal(err)
	}
	defer tp.Close()
	if err := tp.SetSlotKey(0, bytes.Repeat([]byte{1}, 32)); err != nil {
		b.Fatal(err)
	}
	s := tp.Signer(0)
	exp := time.Now().Add(time.Hour)
	for b.Loop() {
		if _, err := s.Sign(context.Background(), "hub.example/devices/kiosk-17", exp); err != nil {
			b.Fatal(err)
		}
	}
}

// A restarted swtpm keeps its slots, and an open TPM reconnects: the
// command in flight fails, the next one works.
func TestSWTPMRestart(t *testing.T) {
	sw := tpmtest.Start(t)
	tp := open(t, sw.TCTI)
	k := key(t, 32)
	if err := tp.SetSlotKey(2, k); err != nil {
		t.Fatal(err)
	}
	sw.Restart(t)
	var got []byte
	var err error
	for range 2 {
		if got, err = tp.HMAC(2, []byte("after")); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("after restart: %v", err)
	}
	m := hmac.New(sha256.New, k)
	m.Write([]byte("after"))
	if !hmac.Equal(got, m.Sum(nil)) {
		t.Fatal("slot key lost across the restart")
	}
}

// A URI index defined by another tool, readable only with its own auth
// (as tpm2_nvdefine makes it by default), is read too.
func TestSlotURIFromTPM2Tools(t *testing.T) {
	for _, tool := range []string{"tpm2_nvdefine", "tpm2_nvwrite"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed: run `make tpm-tools`", tool)
		}
	}
	sw := tpmtest.Start(t)
	uri := "hub.example/kiosk-9" // Limpet's short form
	f := filepath.Join(t.TempDir(), "uri")
	os.WriteFile(f, []byte(uri), 0o600)
	for _, args := range [][]string{
		{"tpm2_nvdefine", "0x01400109", "-C", "o", "-s", fmt.Sprint(len(uri)), "-a", "ownerwrite|authread|authwrite"},
		{"tpm2_nvwrite", "0x01400109", "-C", "o", "-i", f},
	} {
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Env = sw.Env()
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	tp := open(t, sw.TCTI)
	id, err := tp.SlotURI(9)
	if err != nil || id != (tpm.Identity{HostName: "hub.example", DeviceID: "kiosk-9"}) {
		t.Fatalf("slot 9: %+v %v", id, err)
	}
	s, err := tp.SlotsInUse()
	if err != nil || len(s) != 1 || s[0].URI != uri || s[0].Key {
		t.Fatalf("slots %+v %v", s, err)
	}
}
