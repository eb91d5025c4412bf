package iothub

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"
)

// ErrConnectionString is wrapped by every ParseConnectionString error.
var ErrConnectionString = errors.New("invalid connection string")

// ConnectionString is an IoT Hub connection string: a device's
// ("HostName=…;DeviceId=…;SharedAccessKey=…"), a module's (plus
// "ModuleId=…"), an X.509 device's ("…;x509=true", no key) or a shared
// access policy's ("HostName=…;SharedAccessKeyName=…;SharedAccessKey=…").
type ConnectionString struct {
	HostName            string
	DeviceID            string
	ModuleID            string
	SharedAccessKeyName string
	// SharedAccessKey is the decoded key (base64 in the string form).
	SharedAccessKey []byte
	// X509 marks a device that authenticates with a client certificate.
	X509 bool
	// GatewayHostName is kept when present (IoT Edge); twinlet ignores it.
	GatewayHostName string
}

// ParseConnectionString parses s. Field names are matched case-
// insensitively; unknown fields are an error. Errors name the field at
// fault and never repeat the key.
func ParseConnectionString(s string) (ConnectionString, error) {
	var c ConnectionString
	seen := map[string]bool{}
	for i, part := range strings.Split(strings.TrimSpace(s), ";") {
		if strings.TrimSpace(part) == "" {
			continue
		}
		k, v, ok := strings.Cut(part, "=")
		k = strings.TrimSpace(k)
		if !ok {
			return ConnectionString{}, fmt.Errorf("%w: field %d has no '='", ErrConnectionString, i+1)
		}
		lk := strings.ToLower(k)
		if seen[lk] {
			return ConnectionString{}, fmt.Errorf("%w: duplicate field %s", ErrConnectionString, k)
		}
		seen[lk] = true
		switch lk {
		case "hostname":
			c.HostName = v
		case "deviceid":
			c.DeviceID = v
		case "moduleid":
			c.ModuleID = v
		case "sharedaccesskeyname":
			c.SharedAccessKeyName = v
		case "sharedaccesskey":
			key, err := base64.StdEncoding.DecodeString(v)
			if err != nil {
				return ConnectionString{}, fmt.Errorf("%w: SharedAccessKey is not valid base64", ErrConnectionString)
			}
			if len(key) == 0 {
				return ConnectionString{}, fmt.Errorf("%w: SharedAccessKey is empty", ErrConnectionString)
			}
			c.SharedAccessKey = key
		case "x509":
			switch strings.ToLower(v) {
			case "true":
				c.X509 = true
			case "false":
			default:
				return ConnectionString{}, fmt.Errorf("%w: x509 must be true or false, got %q", ErrConnectionString, v)
			}
		case "gatewayhostname":
			c.GatewayHostName = v
		default:
			return ConnectionString{}, fmt.Errorf("%w: unknown field %s", ErrConnectionString, fieldName(i, k))
		}
	}
	return c, c.validate()
}

// fieldName names an unknown field for an error message: by name when it
// is a short word, else by position, so that a key pasted in the wrong
// place is never repeated.
func fieldName(i int, k string) string {
	if len(k) <= 24 && strings.IndexFunc(k, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z')
	}) < 0 && looksLikeWord(k) {
		return k
	}
	return fmt.Sprintf("#%d", i+1)
}

// looksLikeWord rejects long runs without vowels or with mixed case noise
// typical of base64.
func looksLikeWord(k string) bool {
	upper := 0
	for _, r := range k {
		if r >= 'A' && r <= 'Z' {
			upper++
		}
	}
	return upper*3 <= len(k)+2
}

func (c ConnectionString) validate() error {
	switch {
	case c.HostName == "":
		return fmt.Errorf("%w: missing HostName", ErrConnectionString)
	case c.DeviceID == "" && c.SharedAccessKeyName == "":
		return fmt.Errorf("%w: missing DeviceId (device) or SharedAccessKeyName (policy)", ErrConnectionString)
	case c.ModuleID != "" && c.DeviceID == "":
		return fmt.Errorf("%w: ModuleId needs DeviceId", ErrConnectionString)
	case c.X509 && c.DeviceID == "":
		return fmt.Errorf("%w: x509=true needs DeviceId", ErrConnectionString)
	case c.X509 && len(c.SharedAccessKey) > 0:
		return fmt.Errorf("%w: x509=true and SharedAccessKey are exclusive", ErrConnectionString)
	case !c.X509 && len(c.SharedAccessKey) == 0:
		return fmt.Errorf("%w: missing SharedAccessKey", ErrConnectionString)
	}
	return nil
}

// String formats c in the canonical field order. The result contains the
// key: never log it.
func (c ConnectionString) String() string {
	var parts []string
	add := func(k, v string) {
		if v != "" {
			parts = append(parts, k+"="+v)
		}
	}
	add("HostName", c.HostName)
	add("DeviceId", c.DeviceID)
	add("ModuleId", c.ModuleID)
	add("SharedAccessKeyName", c.SharedAccessKeyName)
	if len(c.SharedAccessKey) > 0 {
		add("SharedAccessKey", base64.StdEncoding.EncodeToString(c.SharedAccessKey))
	}
	if c.X509 {
		add("x509", "true")
	}
	add("GatewayHostName", c.GatewayHostName)
	return strings.Join(parts, ";")
}

// Redacted formats c like String with the key replaced, for logs.
func (c ConnectionString) Redacted() string {
	if len(c.SharedAccessKey) > 0 {
		c.SharedAccessKey = []byte("redacted")
		s := c.String()
		return strings.Replace(s, base64.StdEncoding.EncodeToString(c.SharedAccessKey), "<redacted>", 1)
	}
	return c.String()
}

// ResourceURI is the SAS resource a token from this connection string is
// scoped to: the device or module for identity keys, the hub for policies.
func (c ConnectionString) ResourceURI() string {
	if c.DeviceID != "" && c.SharedAccessKeyName == "" {
		return DeviceResource(c.HostName, c.DeviceID, c.ModuleID)
	}
	return c.HostName
}

// SASToken signs a token valid until expiry with this connection string's
// key and scope. It fails for X.509 connection strings.
func (c ConnectionString) SASToken(expiry time.Time) (string, error) {
	if len(c.SharedAccessKey) == 0 {
		return "", fmt.Errorf("sas token for %s: connection string has no SharedAccessKey", c.ResourceURI())
	}
	return NewSASToken(c.ResourceURI(), c.SharedAccessKey, c.SharedAccessKeyName, expiry), nil
}
