// Package tpmblob builds and parses the activation blob the Device
// Provisioning Service sends a TPM device (TPM 2.0 Part 1 §24 credential
// protection and §23 duplication), in software: the service side (twinhub)
// uses it to issue a key only a given TPM can load, and the device side
// (internal/tpm) to split the blob. It has no cgo and talks to no TPM.
//
// A blob is the concatenation of six TPM-marshaled, size-prefixed
// structures: TPM2B_ID_OBJECT credentialBlob, TPM2B_ENCRYPTED_SECRET
// encSecret, TPM2B_PRIVATE idKeyDupBlob, TPM2B_ENCRYPTED_SECRET encWrapKey,
// TPM2B_PUBLIC idKeyPub and TPM2B_DATA encUriData.
package tpmblob

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/google/go-tpm/tpm2"
)

// innerKeySize is the size of the inner wrapping key (AES-128) that the
// credential carries, as the DPS service issues it.
const innerKeySize = 16

// Blob is a parsed activation blob; each field holds the contents of its
// structure without the size prefix.
type Blob struct {
	CredentialBlob []byte // TPM2B_ID_OBJECT
	EncSecret      []byte // TPM2B_ENCRYPTED_SECRET for ActivateCredential
	Duplicate      []byte // TPM2B_PRIVATE: the HMAC key, duplicated to the SRK
	EncWrapKey     []byte // TPM2B_ENCRYPTED_SECRET: the outer wrapper's seed
	Public         []byte // TPM2B_PUBLIC contents (a TPMT_PUBLIC)
	EncURI         []byte // TPM2B_DATA, empty from DPS
}

// Parse splits an activation blob. A blob with trailing bytes, or one that
// ends inside a structure, is refused with the field at fault.
func Parse(b []byte) (Blob, error) {
	var out Blob
	fields := []struct {
		name string
		dst  *[]byte
	}{
		{"credentialBlob", &out.CredentialBlob}, {"encSecret", &out.EncSecret},
		{"idKeyDupBlob", &out.Duplicate}, {"encWrapKey", &out.EncWrapKey},
		{"idKeyPub", &out.Public}, {"encUriData", &out.EncURI},
	}
	off := 0
	for i, f := range fields {
		if i == len(fields)-1 && off == len(b) {
			break // Some services omit the empty trailing TPM2B_DATA.
		}
		if len(b)-off < 2 {
			return Blob{}, fmt.Errorf("activation blob: %s at byte %d: truncated size", f.name, off)
		}
		n := int(binary.BigEndian.Uint16(b[off:]))
		off += 2
		if len(b)-off < n {
			return Blob{}, fmt.Errorf("activation blob: %s at byte %d: %d bytes announced, %d left", f.name, off-2, n, len(b)-off)
		}
		*f.dst = b[off : off+n]
		off += n
	}
	if off != len(b) {
		return Blob{}, fmt.Errorf("activation blob: %d trailing bytes after encUriData", len(b)-off)
	}
	if len(out.Public) == 0 || len(out.CredentialBlob) == 0 || len(out.Duplicate) == 0 {
		return Blob{}, errors.New("activation blob: empty credential, key or public area")
	}
	return out, nil
}

// ParsePublic decodes a TPM2B_PUBLIC (as DPS carries endorsementKey and
// storageRootKey); a bare TPMT_PUBLIC is accepted too.
func ParsePublic(b []byte) (*tpm2.TPMTPublic, error) {
	body := b
	if len(b) >= 2 && int(binary.BigEndian.Uint16(b)) == len(b)-2 {
		body = b[2:]
	}
	p, err := tpm2.Unmarshal[tpm2.TPMTPublic](body)
	if err != nil {
		return nil, fmt.Errorf("TPM public area: %w", err)
	}
	return p, nil
}

// HMACKeyPublic is the public area of an imported HMAC-SHA256 key whose
// sensitive part is key obfuscated with seed: sign-only, usable with an
// empty password, and without fixedTPM/fixedParent (an imported object
// cannot have them), yet with no policy it can never be duplicated out.
func HMACKeyPublic(seed, key []byte) tpm2.TPMTPublic {
	u := sha256.New()
	u.Write(seed)
	u.Write(key)
	return tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgKeyedHash,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			UserWithAuth: true,
			NoDA:         true,
			SignEncrypt:  true,
		},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgKeyedHash, &tpm2.TPMSKeyedHashParms{
			Scheme: tpm2.TPMTKeyedHashScheme{
				Scheme:  tpm2.TPMAlgHMAC,
				Details: tpm2.NewTPMUSchemeKeyedHash(tpm2.TPMAlgHMAC, &tpm2.TPMSSchemeHMAC{HashAlg: tpm2.TPMAlgSHA256}),
			},
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgKeyedHash, &tpm2.TPM2BDigest{Buffer: u.Sum(nil)}),
	}
}

// RegistrationID is the DPS registration id of the TPM whose EK public
// area (TPM2B_PUBLIC) is ekPub: lower-case RFC 4648 base32, without
// padding, of its SHA-256.
func RegistrationID(ekPub []byte) string {
	sum := sha256.Sum256(ekPub)
	return strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(sum[:]))
}

// Make builds an activation blob that delivers hmacKey to the TPM whose
// endorsement key is ekPub and storage root key is srkPub (both
// TPM2B_PUBLIC, as the device sends them). Only that TPM can recover the
// inner wrapping key (ActivateCredential with the EK, bound to the SRK's
// name) and so import the key under its SRK.
func Make(ekPub, srkPub, hmacKey []byte) ([]byte, error) {
	return MakeWith(rand.Reader, ekPub, srkPub, hmacKey)
}

// MakeWith is Make with a chosen source of randomness.
func MakeWith(rnd io.Reader, ekPub, srkPub, hmacKey []byte) ([]byte, error) {
	if len(hmacKey) == 0 || len(hmacKey) > 64 {
		return nil, fmt.Errorf("activation blob: HMAC key of %d bytes (want 1-64)", len(hmacKey))
	}
	ek, err := ParsePublic(ekPub)
	if err != nil {
		return nil, fmt.Errorf("activation blob: endorsement key: %w", err)
	}
	srk, err := ParsePublic(srkPub)
	if err != nil {
		return nil, fmt.Errorf("activation blob: storage root key: %w", err)
	}
	ekKEM, err := tpm2.ImportEncapsulationKey(ek)
	if err != nil {
		return nil, fmt.Errorf("activation blob: endorsement key: %w", err)
	}
	srkKEM, err := tpm2.ImportEncapsulationKey(srk)
	if err != nil {
		return nil, fmt.Errorf("activation blob: storage root key: %w", err)
	}
	srkName, err := tpm2.ObjectName(srk)
	if err != nil {
		return nil, fmt.Errorf("activation blob: storage root key name: %w", err)
	}

	// The credential: the inner wrapping key, readable only by this EK and
	// only for an object named like this SRK.
	innerKey := make([]byte, innerKeySize)
	if _, err := io.ReadFull(rnd, innerKey); err != nil {
		return nil, err
	}
	idObject, encSecret, err := tpm2.CreateCredential(rnd, ekKEM, srkName.Buffer, innerKey)
	if err != nil {
		return nil, fmt.Errorf("activation blob: make credential: %w", err)
	}

	// The key object.
	seed := make([]byte, sha256.Size)
	if _, err := io.ReadFull(rnd, seed); err != nil {
		return nil, err
	}
	pub := HMACKeyPublic(seed, hmacKey)
	name, err := tpm2.ObjectName(&pub)
	if err != nil {
		return nil, fmt.Errorf("activation blob: key name: %w", err)
	}
	sens := tpm2.Marshal(tpm2.TPMTSensitive{
		SensitiveType: tpm2.TPMAlgKeyedHash,
		SeedValue:     tpm2.TPM2BDigest{Buffer: seed},
		Sensitive:     tpm2.NewTPMUSensitiveComposite(tpm2.TPMAlgKeyedHash, &tpm2.TPM2BSensitiveData{Buffer: hmacKey}),
	})
	sens2B := sized(sens)

	// Inner wrapper (Part 1 §23.3.2.2): integrity = H(sensitive ‖ name),
	// then AES-CFB with the inner key and a zero IV.
	ih := sha256.New()
	ih.Write(sens2B)
	ih.Write(name.Buffer)
	inner := append(sized(ih.Sum(nil)), sens2B...)
	if err := cfb(innerKey, inner); err != nil {
		return nil, err
	}

	// Outer wrapper (§23.3.2.3) with a seed encrypted to the SRK.
	outerSeed, encSeed, err := srkKEM.Encapsulate(rnd, "DUPLICATE")
	if err != nil {
		return nil, fmt.Errorf("activation blob: duplication seed: %w", err)
	}
	h, err := srkKEM.NameAlg().Hash()
	if err != nil {
		return nil, fmt.Errorf("activation blob: storage root key: %w", err)
	}
	sym := srkKEM.SymmetricParameters()
	if sym.Algorithm != tpm2.TPMAlgAES {
		return nil, fmt.Errorf("activation blob: storage root key cipher %v is not AES", sym.Algorithm)
	}
	bits, err := sym.KeyBits.AES()
	if err != nil {
		return nil, fmt.Errorf("activation blob: storage root key: %w", err)
	}
	if err := cfb(tpm2.KDFa(h, outerSeed, "STORAGE", name.Buffer, nil, int(*bits)), inner); err != nil {
		return nil, err
	}
	mac := hmac.New(h.New, tpm2.KDFa(h, outerSeed, "INTEGRITY", nil, nil, h.Size()*8))
	mac.Write(inner)
	mac.Write(name.Buffer)
	dup := append(sized(mac.Sum(nil)), inner...)

	var out []byte
	for _, part := range [][]byte{idObject, encSecret, dup, encSeed, tpm2.Marshal(pub), nil} {
		out = append(out, sized(part)...)
	}
	return out, nil
}

// sized prefixes b with its big-endian uint16 length (a TPM2B).
func sized(b []byte) []byte {
	out := make([]byte, 2, 2+len(b))
	binary.BigEndian.PutUint16(out, uint16(len(b)))
	return append(out, b...)
}

// cfb encrypts b in place with AES-CFB under key and a zero IV.
func cfb(key, b []byte) error {
	c, err := aes.NewCipher(key)
	if err != nil {
		return fmt.Errorf("activation blob: %w", err)
	}
	//lint:ignore SA1019 TPM 2.0 mandates CFB for object protection.
	cipher.NewCFBEncrypter(c, make([]byte, c.BlockSize())).XORKeyStream(b, b)
	return nil
}
