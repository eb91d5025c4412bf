// Package sas signs, parses and verifies Azure IoT Hub shared access
// signature (SAS) tokens. Clients (internal/iothub) sign with it; the
// twinhub emulator (internal/hub) parses and verifies with it.
package sas

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

// Errors returned by Parse and Verify, for errors.Is. Each maps to IoT Hub's
// 401002 IotHubUnauthorizedAccess.
var (
	ErrMalformed = errors.New("malformed SAS token")
	ErrExpired   = errors.New("SAS token expired")
	ErrScope     = errors.New("SAS token resource does not cover the target")
	ErrSignature = errors.New("SAS token signature does not match")
)

// Token is a parsed shared access signature token.
type Token struct {
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
func (s Token) String() string {
	return fmt.Sprintf("SAS{sr=%s skn=%s se=%s}", s.Resource, s.KeyName, s.Expiry.UTC().Format(time.RFC3339))
}

// New signs a token for resourceURI (e.g. "host/devices/d1", not
// encoded) with the decoded key, valid until expiry. keyName is the shared
// access policy name, empty for device and module keys.
func New(resourceURI string, key []byte, keyName string, expiry time.Time) string {
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

// Parse parses "SharedAccessSignature sr=…&sig=…&se=…[&skn=…]" in
// any field order. It checks the syntax only; Verify checks the rest.
func Parse(s string) (Token, error) {
	rest, ok := strings.CutPrefix(s, sasPrefix)
	if !ok {
		return Token{}, fmt.Errorf("%w: missing %q prefix", ErrMalformed, strings.TrimSpace(sasPrefix))
	}
	var t Token
	seen := map[string]bool{}
	for _, field := range strings.Split(rest, "&") {
		k, v, ok := strings.Cut(field, "=")
		if !ok {
			return Token{}, fmt.Errorf("%w: field without '='", ErrMalformed)
		}
		if seen[k] {
			return Token{}, fmt.Errorf("%w: duplicate field %q", ErrMalformed, k)
		}
		seen[k] = true
		dec, err := url.QueryUnescape(v)
		if err != nil {
			return Token{}, fmt.Errorf("%w: field %q is not URL-encoded", ErrMalformed, k)
		}
		switch k {
		case "sr":
			t.RawResource, t.Resource = v, dec
		case "sig":
			t.Signature = dec
		case "se":
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < 0 {
				return Token{}, fmt.Errorf("%w: se is not a Unix time in seconds", ErrMalformed)
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
			return Token{}, fmt.Errorf("%w: missing field %q", ErrMalformed, k)
		}
	}
	if t.Resource == "" {
		return Token{}, fmt.Errorf("%w: empty sr", ErrMalformed)
	}
	return t, nil
}

// Verify checks a parsed token against a decoded key for access to
// target (a resource path such as "host/devices/d1/modules/m1") at now:
// the token's resource must be a segment prefix of target (compared
// case-insensitively), the token must not have expired, and the signature
// must match the resource as transmitted or its canonical re-encoding in
// either percent-encoding case.
func Verify(t Token, key []byte, target string, now time.Time) error {
	if t.rawExpiry == "" || t.RawResource == "" {
		return fmt.Errorf("%w: token was not parsed by Parse", ErrMalformed)
	}
	if !segmentPrefix(t.Resource, target) {
		return fmt.Errorf("%w: %q does not cover %q", ErrScope, t.Resource, target)
	}
	if now.Unix() >= t.Expiry.Unix() {
		return fmt.Errorf("%w at %s", ErrExpired, t.Expiry.UTC().Format(time.RFC3339))
	}
	got, err := base64.StdEncoding.DecodeString(t.Signature)
	if err != nil {
		return fmt.Errorf("%w: sig is not base64", ErrSignature)
	}
	for _, sr := range candidateResources(t) {
		want, _ := base64.StdEncoding.DecodeString(sign(key, sr, t.rawExpiry))
		if hmac.Equal(got, want) {
			return nil
		}
	}
	return ErrSignature
}

// VerifyString parses raw and verifies it; see Verify.
func VerifyString(raw string, key []byte, target string, now time.Time) (Token, error) {
	t, err := Parse(raw)
	if err != nil {
		return Token{}, err
	}
	return t, Verify(t, key, target, now)
}

// candidateResources lists the encodings of sr that a client may have
// signed: as transmitted, and the canonical encodings of the decoded and of
// the lower-cased resource, each with upper- and lower-case escapes.
func candidateResources(t Token) []string {
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
