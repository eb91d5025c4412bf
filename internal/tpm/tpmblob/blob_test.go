package tpmblob_test

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/twinlet/twinlet/internal/tpm/tpmblob"
)

func rsaPub(t testing.TB, tmpl tpm2.TPMTPublic) []byte {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: k.N.Bytes()})
	return tpm2.Marshal(tpm2.New2B(tmpl))
}

// The blob has the six structures in DPS's order, and the key's public
// area is an HMAC-SHA256 key that can be imported (no fixedTPM).
func TestMakeParse(t *testing.T) {
	ek, srk := rsaPub(t, tpm2.RSAEKTemplate), rsaPub(t, tpm2.RSASRKTemplate)
	key := bytes.Repeat([]byte{7}, 32)
	b, err := tpmblob.Make(ek, srk, key)
	if err != nil {
		t.Fatal(err)
	}
	p, err := tpmblob.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.EncSecret) != 256 || len(p.EncWrapKey) != 256 || len(p.EncURI) != 0 {
		t.Fatalf("secret sizes %d %d %d", len(p.EncSecret), len(p.EncWrapKey), len(p.EncURI))
	}
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](p.Public)
	if err != nil {
		t.Fatal(err)
	}
	if pub.Type != tpm2.TPMAlgKeyedHash || pub.ObjectAttributes.FixedTPM || !pub.ObjectAttributes.SignEncrypt {
		t.Fatalf("key public %+v", pub)
	}
	if bytes.Contains(b, key) {
		t.Fatal("the blob carries the key in the clear")
	}
	if _, err := tpmblob.Make(ek, srk, nil); err == nil {
		t.Fatal("empty key accepted")
	}
	if _, err := tpmblob.Make(ek[:10], srk, key); err == nil {
		t.Fatal("truncated EK accepted")
	}
	if _, err := tpmblob.Parse(append(b, 0)); err == nil {
		t.Fatal("trailing byte accepted")
	}
}

func FuzzParse(f *testing.F) {
	ek, srk := rsaPub(f, tpm2.RSAEKTemplate), rsaPub(f, tpm2.RSASRKTemplate)
	b, err := tpmblob.Make(ek, srk, []byte("0123456789abcdef"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add([]byte{0, 1})
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := tpmblob.Parse(data)
		if err != nil {
			return
		}
		n := 2*6 + len(p.CredentialBlob) + len(p.EncSecret) + len(p.Duplicate) + len(p.EncWrapKey) + len(p.Public) + len(p.EncURI)
		if n != len(data) && n-2 != len(data) {
			t.Fatalf("parsed %d bytes of %d", n, len(data))
		}
	})
}
