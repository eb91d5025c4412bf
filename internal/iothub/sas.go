// Package iothub holds what every Azure IoT Hub client and the twinhub
// emulator share: shared access signature (SAS) tokens and connection
// strings.
package iothub

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// sasPrefix starts every SAS token.
const sasPrefix = "SharedAccessSignature "

// Errors returned by VerifySAS, for errors.Is. Each maps to IoT Hub's
// 401002 IotHubUnauthorizedAccess.
var (
	ErrSASMalformed = errors.New("malformed SAS token")
	ErrSASExpired   = errors.New("SAS token expired")
	ErrSASScope     = errors.New("SAS token resource does not cover the target")
	ErrSASSignature = errors.New("SAS token signature does not match")
)

// SAS is a parsed shared access signature token.
type SAS struct {
	// Resource is the decoded resource URI (sr), e.g. "host/devices/d1".
	Resource string
	// RawResource is sr exactly as transmitted, still percent-encoded;
	// the signature covers this form.
	RawResource string
	// Signature is the base64 HMAC-SHA256 signature (sig), URL-decoded.
	Signature string
	// KeyName is the shared access policy name (skn); empty for device keys.
	KeyName string
	// Expiry is the expiry (se), at second granularity.
	Expiry time.Time
	// rawExpiry is se as transmitted; the signature covers this form.
	rawExpiry string
}

// String formats the token without its signature, for logs.
func (s SAS) String() string {
	return fmt.Sprintf("SAS{sr=%s skn=%s se=%s}", s.Resource, s.KeyName, s.Expiry.UTC().Format(time.RFC3339))
}

// NewSASToken signs a token for resourceURI (e.g. "host/devices/d1", not
// encoded) with the decoded key, valid until expiry. keyName is the shared
// access policy name, empty for device and module keys.
func NewSASToken(resourceURI string, key []byte, keyName string, expiry time.Time) string {
	sr := url.QueryEscape(resourceURI)
	se := strconv.FormatInt(expiry.Unix(), 10)
	sig := sign(key, sr, se)
	var b strings.Builder
	b.WriteString(sasPrefix)
	b.WriteString("sr=")
	b.WriteString(sr)
	b.WriteString("&sig=")
	b.WriteString(url.QueryEscape(sig))
	b.WriteString("&se=")
	b.WriteString(se)
	if keyName != "" {
		b.WriteString("&skn=")
		b.WriteString(url.QueryEscape(keyName))
	}
	return b.String()
}

func sign(key []byte, rawResource, rawExpiry string) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(rawResource))
	m.Write([]byte{'\n'})
	m.Write([]byte(rawExpiry))
	return base64.StdEncoding.EncodeToString(m.Sum(nil))
}

// ParseSASToken parses "SharedAccessSignature sr=…&sig=…&se=…[&skn=…]" in
// any field order. It checks the syntax only; VerifySAS checks the rest.
func ParseSASToken(s string) (SAS, error) {
	rest, ok := strings.CutPrefix(s, sasPrefix)
	if !ok {
		return SAS{}, fmt.Errorf("%w: missing %q prefix", ErrSASMalformed, strings.TrimSpace(sasPrefix))
	}
	var t SAS
	seen := map[string]bool{}
	for _, field := range strings.Split(rest, "&") {
		k, v, ok := strings.Cut(field, "=")
		if !ok {
			return SAS{}, fmt.Errorf("%w: field without '='", ErrSASMalformed)
		}
		if seen[k] {
			return SAS{}, fmt.Errorf("%w: duplicate field %q", ErrSASMalformed, k)
		}
		seen[k] = true
		dec, err := url.QueryUnescape(v)
		if err != nil {
			return SAS{}, fmt.Errorf("%w: field %q is not URL-encoded", ErrSASMalformed, k)
		}
		switch k {
		case "sr":
			t.RawResource, t.Resource = v, dec
		case "sig":
			t.Signature = dec
		case "se":
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < 0 {
				return SAS{}, fmt.Errorf("%w: se is not a Unix time in seconds", ErrSASMalformed)
			}
			t.Expiry, t.rawExpiry = time.Unix(n, 0), v
		case "skn":
			t.KeyName = dec
		default:
			// Unknown fields are ignored, as the service does.
		}
	}
	for _, k := range []string{"sr", "sig", "se"} {
		if !seen[k] {
			return SAS{}, fmt.Errorf("%w: missing field %q", ErrSASMalformed, k)
		}
	}
	if t.Resource == "" {
		return SAS{}, fmt.Errorf("%w: empty sr", ErrSASMalformed)
	}
	return t, nil
}

// VerifySAS checks a parsed token against a decoded key for access to
// target (a resource path such as "host/devices/d1/modules/m1") at now:
// the token's resource must be a segment prefix of target (compared
// case-insensitively), the token must not have expired, and the signature
// must match the resource as transmitted or its canonical re-encoding in
// either percent-encoding case.
func VerifySAS(t SAS, key []byte, target string, now time.Time) error {
	if t.rawExpiry == "" || t.RawResource == "" {
		return fmt.Errorf("%w: token was not parsed by ParseSASToken", ErrSASMalformed)
	}
	if !segmentPrefix(t.Resource, target) {
		return fmt.Errorf("%w: %q does not cover %q", ErrSASScope, t.Resource, target)
	}
	if now.Unix() >= t.Expiry.Unix() {
		return fmt.Errorf("%w at %s", ErrSASExpired, t.Expiry.UTC().Format(time.RFC3339))
	}
	got, err := base64.StdEncoding.DecodeString(t.Signature)
	if err != nil {
		return fmt.Errorf("%w: sig is not base64", ErrSASSignature)
	}
	for _, sr := range candidateResources(t) {
		want, _ := base64.StdEncoding.DecodeString(sign(key, sr, t.rawExpiry))
		if hmac.Equal(got, want) {
			return nil
		}
	}
	return ErrSASSignature
}

// VerifySASToken parses raw and verifies it; see VerifySAS.
func VerifySASToken(raw string, key []byte, target string, now time.Time) (SAS, error) {
	t, err := ParseSASToken(raw)
	if err != nil {
		return SAS{}, err
	}
	return t, VerifySAS(t, key, target, now)
}

// candidateResources lists the encodings of sr that a client may have
// signed: as transmitted, and the canonical encodings of the decoded and of
// the lower-cased resource, each with upper- and lower-case escapes.
func candidateResources(t SAS) []string {
	out := []string{t.RawResource}
	add := func(s string) {
		for _, c := range out {
			if c == s {
				return
			}
		}
		out = append(out, s)
	}
	for _, r := range []string{t.Resource, strings.ToLower(t.Resource)} {
		enc := url.QueryEscape(r)
		add(enc)
		add(lowerEscapes(enc))
	}
	add(lowerEscapes(t.RawResource))
	add(upperEscapes(t.RawResource))
	return out
}

func lowerEscapes(s string) string { return mapEscapes(s, toLowerHex) }
func upperEscapes(s string) string { return mapEscapes(s, toUpperHex) }

func toLowerHex(c byte) byte {
	if c >= 'A' && c <= 'F' {
		return c + 'a' - 'A'
	}
	return c
}

func toUpperHex(c byte) byte {
	if c >= 'a' && c <= 'f' {
		return c - ('a' - 'A')
	}
	return c
}

func mapEscapes(s string, f func(byte) byte) string {
	b := []byte(s)
	for i := 0; i+2 < len(b); i++ {
		if b[i] == '%' {
			b[i+1], b[i+2] = f(b[i+1]), f(b[i+2])
			i += 2
		}
	}
	return string(b)
}

// segmentPrefix reports whether resource is target or a path-segment
// prefix of it ("h/devices" covers "h/devices/d1" but not "h/devices1"),
// ignoring case, a scheme and trailing slashes.
func segmentPrefix(resource, target string) bool {
	norm := func(s string) string {
		s = strings.ToLower(s)
		if i := strings.Index(s, "://"); i >= 0 {
			s = s[i+3:]
		}
		return strings.TrimRight(s, "/")
	}
	r, t := norm(resource), norm(target)
	if r == "" {
		return false
	}
	return t == r || strings.HasPrefix(t, r+"/")
}

// DeviceResource is the SAS resource URI of a device, or of a module when
// moduleID is not empty.
func DeviceResource(host, deviceID, moduleID string) string {
	r := host + "/devices/" + deviceID
	if moduleID != "" {
		r += "/modules/" + moduleID
	}
	return r
}
