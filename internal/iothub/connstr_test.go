package iothub

import (
	"bytes"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/twinlet/twinlet/internal/sas"
)

var testKey = []byte("0123456789abcdef0123456789abcdef")

func TestParseConnectionString(t *testing.T) {
	key := base64.StdEncoding.EncodeToString(testKey)
	cases := []struct {
		in   string
		want ConnectionString
		err  string
	}{
		{in: "HostName=h.example;DeviceId=d1;SharedAccessKey=" + key,
			want: ConnectionString{HostName: "h.example", DeviceID: "d1", SharedAccessKey: testKey}},
		{in: "HostName=h;DeviceId=d1;ModuleId=twinlet;SharedAccessKey=" + key,
			want: ConnectionString{HostName: "h", DeviceID: "d1", ModuleID: "twinlet", SharedAccessKey: testKey}},
		{in: "HostName=h;SharedAccessKeyName=iothubowner;SharedAccessKey=" + key,
			want: ConnectionString{HostName: "h", SharedAccessKeyName: "iothubowner", SharedAccessKey: testKey}},
		{in: "HostName=h;DeviceId=d1;x509=true",
			want: ConnectionString{HostName: "h", DeviceID: "d1", X509: true}},
		{in: " hostname=h;deviceid=d1;sharedaccesskey=" + key + ";",
			want: ConnectionString{HostName: "h", DeviceID: "d1", SharedAccessKey: testKey}},
		{in: "HostName=h;DeviceId=d1;SharedAccessKey=" + key + ";GatewayHostName=gw",
			want: ConnectionString{HostName: "h", DeviceID: "d1", SharedAccessKey: testKey, GatewayHostName: "gw"}},
		{in: "DeviceId=d1;SharedAccessKey=" + key, err: "missing HostName"},
		{in: "HostName=h;SharedAccessKey=" + key, err: "missing DeviceId"},
		{in: "HostName=h;DeviceId=d1", err: "missing SharedAccessKey"},
		{in: "HostName=h;DeviceId=d1;SharedAccessKey=not*base64", err: "SharedAccessKey is not valid base64"},
		{in: "HostName=h;DeviceId=d1;SharedAccessKey=" + key + ";x509=true", err: "exclusive"},
		{in: "HostName=h;DeviceId=d1;x509=maybe", err: "x509 must be"},
		{in: "HostName=h;HostName=h2;DeviceId=d;SharedAccessKey=" + key, err: "duplicate field"},
		{in: "HostName=h;Bogus=1;DeviceId=d;SharedAccessKey=" + key, err: "unknown field Bogus"},
		{in: "HostName=h;ModuleId=m;SharedAccessKeyName=p;SharedAccessKey=" + key, err: "ModuleId needs DeviceId"},
		{in: "HostName=h;DeviceId=d;" + key, err: "unknown field #3"},
		{in: "HostName=h;DeviceId=d;SharedAccessKey", err: "field 3 has no '='"},
	}
	for _, c := range cases {
		t.Run(c.in, func(t *testing.T) {
			got, err := ParseConnectionString(c.in)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("want error %q, got %v", c.err, err)
				}
				if !errors.Is(err, ErrConnectionString) {
					t.Fatalf("error does not wrap ErrConnectionString: %v", err)
				}
				if strings.Contains(err.Error(), key[:16]) {
					t.Fatalf("error leaks the key: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.HostName != c.want.HostName || got.DeviceID != c.want.DeviceID || got.ModuleID != c.want.ModuleID ||
				got.SharedAccessKeyName != c.want.SharedAccessKeyName || !bytes.Equal(got.SharedAccessKey, c.want.SharedAccessKey) ||
				got.X509 != c.want.X509 || got.GatewayHostName != c.want.GatewayHostName {
				t.Fatalf("got %+v", got)
			}
			back, err := ParseConnectionString(got.String())
			if err != nil || back.String() != got.String() {
				t.Fatalf("round trip: %q %v", got.String(), err)
			}
		})
	}
}

func TestConnectionStringToken(t *testing.T) {
	exp := time.Unix(2e9, 0)
	now := exp.Add(-time.Minute)
	dev := ConnectionString{HostName: "h", DeviceID: "d1", ModuleID: "m", SharedAccessKey: testKey}
	tok, err := dev.SASToken(exp)
	if err != nil {
		t.Fatal(err)
	}
	s, err := sas.VerifyString(tok, testKey, "h/devices/d1/modules/m", now)
	if err != nil || s.KeyName != "" {
		t.Fatalf("%v %+v", err, s)
	}
	pol := ConnectionString{HostName: "h", SharedAccessKeyName: "service", SharedAccessKey: testKey}
	tok, _ = pol.SASToken(exp)
	s, err = sas.VerifyString(tok, testKey, "h", now)
	if err != nil || s.KeyName != "service" {
		t.Fatalf("%v %+v", err, s)
	}
	if _, err := (ConnectionString{HostName: "h", DeviceID: "d", X509: true}).SASToken(exp); err == nil {
		t.Fatal("x509 connection string signed a token")
	}
	if r := dev.Redacted(); strings.Contains(r, base64.StdEncoding.EncodeToString(testKey)) || !strings.Contains(r, "<redacted>") {
		t.Fatalf("Redacted: %s", r)
	}
}

func FuzzParseConnectionString(f *testing.F) {
	f.Add("HostName=h;DeviceId=d1;SharedAccessKey=" + base64.StdEncoding.EncodeToString(testKey))
	f.Add("HostName=h;DeviceId=d1;x509=true")
	f.Add("HostName=h;SharedAccessKeyName=p;SharedAccessKey=AAAA;;")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseConnectionString(s)
		if err != nil {
			if !errors.Is(err, ErrConnectionString) {
				t.Fatalf("error does not wrap ErrConnectionString: %v", err)
			}
			return
		}
		back, err := ParseConnectionString(c.String())
		if err != nil {
			t.Fatalf("String() of a parsed connection string does not parse: %v", err)
		}
		if back.String() != c.String() {
			t.Fatalf("round trip changed: %q vs %q", back.String(), c.String())
		}
	})
}
