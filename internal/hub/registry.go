package hub

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/twinlet/twinlet/internal/atomicfile"
)

// Authentication types of an identity.
const (
	AuthSAS        = "sas"
	AuthSelfSigned = "selfSigned"
	AuthCA         = "certificateAuthority"
	AuthNone       = "none"
)

// SymmetricKey holds an identity's base64 keys.
type SymmetricKey struct {
	PrimaryKey   string `json:"primaryKey"`
	SecondaryKey string `json:"secondaryKey"`
}

// X509Thumbprint holds an identity's certificate thumbprints (hex SHA-1 or
// SHA-256).
type X509Thumbprint struct {
	PrimaryThumbprint   *string `json:"primaryThumbprint"`
	SecondaryThumbprint *string `json:"secondaryThumbprint"`
}

// Authentication is an identity's authentication mechanism.
type Authentication struct {
	Type           string         `json:"type"`
	SymmetricKey   SymmetricKey   `json:"symmetricKey"`
	X509Thumbprint X509Thumbprint `json:"x509Thumbprint"`
}

// Capabilities of a device.
type Capabilities struct {
	IotEdge bool `json:"iotEdge"`
}

// Identity is a device or module in the identity registry, in the service's
// JSON shape.
type Identity struct {
	DeviceID                   string         `json:"deviceId"`
	ModuleID                   string         `json:"moduleId,omitempty"`
	ManagedBy                  string         `json:"managedBy,omitempty"`
	GenerationID               string         `json:"generationId"`
	Etag                       string         `json:"etag"`
	ConnectionState            string         `json:"connectionState"`
	Status                     string         `json:"status,omitempty"`
	StatusReason               *string        `json:"statusReason,omitempty"`
	ConnectionStateUpdatedTime time.Time      `json:"connectionStateUpdatedTime"`
	StatusUpdatedTime          time.Time      `json:"statusUpdatedTime"`
	LastActivityTime           time.Time      `json:"lastActivityTime"`
	CloudToDeviceMessageCount  int            `json:"cloudToDeviceMessageCount"`
	Authentication             Authentication `json:"authentication"`
	Capabilities               *Capabilities  `json:"capabilities,omitempty"`
	DeviceScope                string         `json:"deviceScope,omitempty"`
	ParentScopes               []string       `json:"parentScopes,omitempty"`
}

// record is one identity with its twin, as persisted.
type record struct {
	Identity Identity  `json:"identity"`
	Twin     twinState `json:"twin"`
	etagSeq  int64
}

func (r *record) key() string { return idKey(r.Identity.DeviceID, r.Identity.ModuleID) }

func idKey(deviceID, moduleID string) string {
	if moduleID == "" {
		return deviceID
	}
	return deviceID + "/" + moduleID
}

// validID is the service's rule for device and module ids.
var validID = regexp.MustCompile(`^[A-Za-z0-9\-.%_*?!(),:=@$']{1,128}$`)

func newKey() string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err))
	}
	return base64.StdEncoding.EncodeToString(b)
}

func newEtag() string {
	b := make([]byte, 9)
	_, _ = rand.Read(b)
	return base64.StdEncoding.EncodeToString(b)
}

func newGenerationID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	n := uint64(0)
	for _, c := range b {
		n = n<<8 | uint64(c)
	}
	return "6" + strconv.FormatUint(n%1e17, 10)
}

// Policy is a shared access policy of the hub.
type Policy struct {
	KeyName      string   `json:"keyName"`
	PrimaryKey   string   `json:"primaryKey"`
	SecondaryKey string   `json:"secondaryKey"`
	Rights       []string `json:"rights"`
}

// Rights of shared access policies.
const (
	RightRegistryRead   = "RegistryRead"
	RightRegistryWrite  = "RegistryWrite"
	RightServiceConnect = "ServiceConnect"
	RightDeviceConnect  = "DeviceConnect"
)

func defaultPolicies() []Policy {
	mk := func(name string, rights ...string) Policy {
		return Policy{KeyName: name, PrimaryKey: newKey(), SecondaryKey: newKey(), Rights: rights}
	}
	return []Policy{
		mk("iothubowner", RightRegistryRead, RightRegistryWrite, RightServiceConnect, RightDeviceConnect),
		mk("service", RightServiceConnect),
		mk("device", RightDeviceConnect),
		mk("registryRead", RightRegistryRead),
		mk("registryReadWrite", RightRegistryRead, RightRegistryWrite),
	}
}

func (p Policy) has(right string) bool {
	for _, r := range p.Rights {
		if r == right {
			return true
		}
	}
	return false
}

// store persists the registry: one file per identity under
// identities/, written atomically, plus policies.json. A nil store keeps
// everything in memory.
type store struct {
	dir string
}

func (s *store) identityPath(key string) string {
	return filepath.Join(s.dir, "identities", url.QueryEscape(key)+".json")
}

func (s *store) saveRecord(key string, data []byte) error {
	if s == nil {
		return nil
	}
	if data == nil {
		err := os.Remove(s.identityPath(key))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove identity %s: %w", key, err)
		}
		return nil
	}
	return atomicfile.Write(s.identityPath(key), data, 0o600)
}

func (s *store) loadRecords() ([]*record, error) {
	if s == nil {
		return nil, nil
	}
	dir := filepath.Join(s.dir, "identities")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("load registry: %w", err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("load registry: %w", err)
	}
	var out []*record
	for _, e := range ents {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".json") || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("load registry: %w", err)
		}
		r := &record{}
		if err := json.Unmarshal(b, r); err != nil {
			return nil, fmt.Errorf("load registry %s: %w", e.Name(), err)
		}
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].key() < out[j].key() })
	return out, nil
}

func (s *store) loadPolicies() ([]Policy, error) {
	if s == nil {
		return defaultPolicies(), nil
	}
	path := filepath.Join(s.dir, "policies.json")
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		ps := defaultPolicies()
		data, _ := json.MarshalIndent(ps, "", "  ")
		if err := atomicfile.Write(path, data, 0o600); err != nil {
			return nil, err
		}
		return ps, nil
	}
	if err != nil {
		return nil, fmt.Errorf("load policies: %w", err)
	}
	var ps []Policy
	if err := json.Unmarshal(b, &ps); err != nil {
		return nil, fmt.Errorf("load policies %s: %w", path, err)
	}
	return ps, nil
}
