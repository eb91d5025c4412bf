package sas

import (
	"encoding/base64"
	"errors"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"
)

var testKey = []byte("0123456789abcdef0123456789abcdef")

func TestSASRoundTrip(t *testing.T) {
	exp := time.Unix(2_000_000_000, 0)
	now := exp.Add(-time.Hour)
	tok := New("hub.example/devices/d1", testKey, "", exp)
	if !strings.HasPrefix(tok, "SharedAccessSignature sr=hub.example%2Fdevices%2Fd1&sig=") {
		t.Fatalf("token shape: %s", tok)
	}
	s, err := Parse(tok)
	if err != nil {
		t.Fatal(err)
	}
	if s.Resource != "hub.example/devices/d1" || s.KeyName != "" || !s.Expiry.Equal(exp) {
		t.Fatalf("parsed %+v", s)
	}
	if err := Verify(s, testKey, "hub.example/devices/d1", now); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(s.String(), s.Signature) {
		t.Fatal("String leaks the signature")
	}
}

// handToken builds a token the way other SDKs do, with a chosen sr encoding.
func handToken(rawSR string, key []byte, se int64, extra string) string {
	ses := strconv.FormatInt(se, 10)
	return "SharedAccessSignature " + extra + "sig=" + url.QueryEscape(sign(key, rawSR, ses)) + "&se=" + ses + "&sr=" + rawSR
}

func TestVerify(t *testing.T) {
	exp := int64(2_000_000_000)
	now := time.Unix(exp-60, 0)
	other := []byte("another key, another key, 123456")
	cases := []struct {
		name   string
		tok    string
		key    []byte
		target string
		now    time.Time
		want   error
	}{
		{"upper escapes", handToken("h%2Fdevices%2Fd1", testKey, exp, ""), testKey, "h/devices/d1", now, nil},
		{"lower escapes (C#)", handToken("h%2fdevices%2fd1", testKey, exp, ""), testKey, "h/devices/d1", now, nil},
		{"unencoded sr", handToken("h/devices/d1", testKey, exp, ""), testKey, "h/devices/d1", now, nil},
		{"signed lowercase, sent mixed case", "SharedAccessSignature sr=H%2FDevices%2Fd1&sig=" + url.QueryEscape(sign(testKey, "h%2fdevices%2fd1", strconv.FormatInt(exp, 10))) + "&se=" + strconv.FormatInt(exp, 10), testKey, "h/devices/d1", now, nil},
		{"hub-scoped token (prefix)", handToken("h", testKey, exp, ""), testKey, "h/devices/d1", now, nil},
		{"module target under device token", handToken("h%2Fdevices%2Fd1", testKey, exp, ""), testKey, "h/devices/d1/modules/m", now, nil},
		{"case-insensitive scope", handToken("H%2FDEVICES%2FD1", testKey, exp, ""), testKey, "h/devices/d1", now, nil},
		{"with skn", handToken("h", testKey, exp, "skn=iothubowner&"), testKey, "h", now, nil},
		{"scheme in sr", handToken(url.QueryEscape("https://h/devices/d1"), testKey, exp, ""), testKey, "h/devices/d1", now, nil},
		{"not a segment prefix", handToken("h%2Fdevices%2Fd", testKey, exp, ""), testKey, "h/devices/d1", now, ErrScope},
		{"other device", handToken("h%2Fdevices%2Fd2", testKey, exp, ""), testKey, "h/devices/d1", now, ErrScope},
		{"wrong key", handToken("h%2Fdevices%2Fd1", other, exp, ""), testKey, "h/devices/d1", now, ErrSignature},
		{"expired", handToken("h%2Fdevices%2Fd1", testKey, exp, ""), testKey, "h/devices/d1", time.Unix(exp, 0), ErrExpired},
		{"tampered se", strings.Replace(handToken("h%2Fdevices%2Fd1", testKey, exp, ""), "se=2000000000", "se=2000000001", 1), testKey, "h/devices/d1", now, ErrSignature},
		{"no prefix", "sr=h&sig=x&se=1", testKey, "h", now, ErrMalformed},
		{"missing sig", "SharedAccessSignature sr=h&se=1", testKey, "h", now, ErrMalformed},
		{"bad se", "SharedAccessSignature sr=h&sig=x&se=soon", testKey, "h", now, ErrMalformed},
		{"duplicate sr", "SharedAccessSignature sr=h&sr=h2&sig=x&se=1", testKey, "h", now, ErrMalformed},
		{"sig not base64", "SharedAccessSignature sr=h&sig=%21%21&se=2000000000", testKey, "h", now, ErrSignature},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := VerifyString(c.tok, c.key, c.target, c.now)
			if c.want == nil && err != nil {
				t.Fatalf("want ok, got %v", err)
			}
			if c.want != nil && !errors.Is(err, c.want) {
				t.Fatalf("want %v, got %v", c.want, err)
			}
			if err != nil && strings.Contains(err.Error(), base64.StdEncoding.EncodeToString(c.key)) {
				t.Fatal("error leaks the key")
			}
		})
	}
}

func TestVerifyRequiresParsedToken(t *testing.T) {
	if err := Verify(Token{Resource: "h", Signature: "x", Expiry: time.Now().Add(time.Hour)}, testKey, "h", time.Now()); !errors.Is(err, ErrMalformed) {
		t.Fatalf("got %v", err)
	}
}

func TestSegmentPrefix(t *testing.T) {
	for _, c := range []struct {
		r, t string
		ok   bool
	}{
		{"/a/b", "/a/b/c", true},
		{"/a/b", "/a/bc", false},
		{"a/b/", "a/b", true},
		{"A/B", "a/b/c", true},
		{"", "a", false},
	} {
		if got := segmentPrefix(c.r, c.t); got != c.ok {
			t.Errorf("segmentPrefix(%q,%q)=%v", c.r, c.t, got)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add(New("h/devices/d1", testKey, "", time.Unix(2e9, 0)))
	f.Add("SharedAccessSignature sr=h&sig=a%2Fb&se=1&skn=service")
	f.Add("SharedAccessSignature sr=%zz&sig=&se=-1")
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := Parse(s)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error does not wrap ErrMalformed: %v", err)
			}
			return
		}
		if tok.Resource == "" {
			t.Fatal("parsed token without resource")
		}
		_ = Verify(tok, testKey, tok.Resource, tok.Expiry.Add(-time.Second))
	})
}
