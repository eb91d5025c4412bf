package iothub

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/twinlet/twinlet/internal/sas"
)

func TestParseServiceError(t *testing.T) {
	cases := []struct {
		name   string
		status int
		header string
		body   string
		want   ServiceError
	}{
		{
			name: "classic envelope", status: 404, header: "DeviceNotFound",
			body: `{"Message":"ErrorCode:DeviceNotFound;Device d9 not registered","ExceptionMessage":"Tracking ID:abc123-G:0-TimeStamp:10/18/2022 20:50:39"}`,
			want: ServiceError{StatusCode: 404, Code: "DeviceNotFound", Message: "Device d9 not registered", TrackingID: "abc123"},
		},
		{
			name: "code only in the body", status: 412,
			body: `{"Message":"ErrorCode:PreconditionFailed;etag mismatch","ExceptionMessage":""}`,
			want: ServiceError{StatusCode: 412, Code: "PreconditionFailed", Message: "etag mismatch"},
		},
		{
			name: "nested JSON message", status: 404, header: "DeviceNotOnline",
			body: `{"Message":"{\"errorCode\":404103,\"trackingId\":\"t-1\",\"message\":\"Timed out waiting for device to connect.\",\"info\":{},\"timestampUtc\":\"2024-01-01T00:00:00Z\"}","ExceptionMessage":""}`,
			want: ServiceError{StatusCode: 404, Code: "DeviceNotOnline", Message: "Timed out waiting for device to connect.", ErrorCode: 404103, TrackingID: "t-1"},
		},
		{
			name: "bare error object", status: 401,
			body: `{"errorCode":401002,"trackingId":"x","message":"Unauthorized","timestampUtc":"…"}`,
			want: ServiceError{StatusCode: 401, Message: "Unauthorized", ErrorCode: 401002, TrackingID: "x"},
		},
		{
			name: "not JSON", status: 502, body: "bad gateway\n",
			want: ServiceError{StatusCode: 502, Message: "bad gateway"},
		},
		{
			name: "empty", status: 504, header: "GatewayTimeout",
			want: ServiceError{StatusCode: 504, Code: "GatewayTimeout"},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := http.Header{}
			if c.header != "" {
				h.Set("iothub-errorcode", c.header)
			}
			got := parseServiceError(c.status, h, []byte(c.body))
			if *got != c.want {
				t.Errorf("got %+v\nwant %+v", *got, c.want)
			}
		})
	}
}

func TestServiceErrorMessage(t *testing.T) {
	err := fmt.Errorf("get device d9: %w", &ServiceError{StatusCode: 404, Code: "DeviceNotFound", Message: "Device d9 not registered"})
	if got, want := err.Error(), "get device d9: iothub: 404 Not Found (DeviceNotFound): Device d9 not registered"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if !IsNotFound(err) {
		t.Error("IsNotFound = false")
	}
	var se *ServiceError
	if !errors.As(err, &se) || se.Code != "DeviceNotFound" {
		t.Errorf("errors.As: %v", se)
	}
	if IsNotFound(errors.New("x")) {
		t.Error("IsNotFound(plain error) = true")
	}
}

func TestIfMatch(t *testing.T) {
	for in, want := range map[string]string{"": "*", "*": "*", "AAAAAAAAAAE=": `"AAAAAAAAAAE="`, `"x"`: `"x"`} {
		if got := ifMatch(in); got != want {
			t.Errorf("ifMatch(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestTwinPatchJSON(t *testing.T) {
	cases := []struct {
		p    TwinPatch
		want string
	}{
		{TwinPatch{}, `{}`},
		{TwinPatch{Tags: map[string]any{"env": "prod", "old": nil}}, `{"tags":{"env":"prod","old":null}}`},
		{TwinPatch{Desired: map[string]any{}}, `{"properties":{"desired":{}}}`},
		{TwinPatch{Tags: map[string]any{}, Desired: map[string]any{"a": 1}}, `{"properties":{"desired":{"a":1}},"tags":{}}`},
	}
	for _, c := range cases {
		b, err := json.Marshal(c.p)
		if err != nil {
			t.Fatal(err)
		}
		if string(b) != c.want {
			t.Errorf("got %s, want %s", b, c.want)
		}
	}
}

func TestServiceClientTokenRenewal(t *testing.T) {
	cs := ConnectionString{HostName: "hub.example", SharedAccessKeyName: "iothubowner", SharedAccessKey: testKey}
	now := time.Unix(1_700_000_000, 0)
	c, err := NewServiceClient(cs, withClock(func() time.Time { return now }))
	if err != nil {
		t.Fatal(err)
	}
	first, err := c.authToken()
	if err != nil {
		t.Fatal(err)
	}
	tok, err := sas.VerifyString(first, testKey, "hub.example/devices/d1", now)
	if err != nil {
		t.Fatalf("token does not verify: %v", err)
	}
	if tok.KeyName != "iothubowner" || tok.Resource != "hub.example" {
		t.Errorf("token scope %v", tok)
	}
	now = now.Add(50 * time.Minute)
	if again, _ := c.authToken(); again != first {
		t.Error("token renewed although 10 minutes are left")
	}
	now = now.Add(6 * time.Minute)
	renewed, _ := c.authToken()
	if renewed == first {
		t.Error("token not renewed 4 minutes before expiry")
	}
	if _, err := sas.VerifyString(renewed, testKey, "hub.example", now); err != nil {
		t.Errorf("renewed token: %v", err)
	}
}

func TestNewServiceClientNeedsPolicy(t *testing.T) {
	cases := []ConnectionString{
		{HostName: "h", DeviceID: "d1", SharedAccessKey: testKey},
		{HostName: "h", SharedAccessKeyName: "iothubowner"},
		{SharedAccessKeyName: "iothubowner", SharedAccessKey: testKey},
	}
	for _, cs := range cases {
		_, err := NewServiceClient(cs)
		if err == nil {
			t.Errorf("NewServiceClient(%s) succeeded", cs.Redacted())
			continue
		}
		if strings.Contains(err.Error(), string(testKey)) {
			t.Errorf("error leaks the key: %v", err)
		}
	}
	if _, err := NewServiceClient(ConnectionString{HostName: "h", SharedAccessKeyName: "p", SharedAccessKey: testKey}, WithServiceAddr("no-port")); err == nil {
		t.Error("WithServiceAddr without a port accepted")
	}
}

func TestSeconds(t *testing.T) {
	for d, want := range map[time.Duration]int64{0: 0, -time.Second: 0, time.Millisecond: 1, time.Second: 1, 1500 * time.Millisecond: 2, time.Minute: 60} {
		if got := seconds(d); got != want {
			t.Errorf("seconds(%v) = %d, want %d", d, got, want)
		}
	}
}
