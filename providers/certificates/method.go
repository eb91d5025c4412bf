package certificates

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strings"

	"crypto/x509"

	"github.com/twinlet/twinlet/providers"
)

var getMethod = providers.Method{
	Description: "details of a certificate on the device, by SHA-1 or SHA-256 thumbprint",
	Schema: json.RawMessage(`{
		"type": "object",
		"additionalProperties": false,
		"required": ["thumbprint"],
		"properties": {
			"thumbprint": {
				"description": "SHA-1 (40 hex digits) or SHA-256 (64) thumbprint, any case, colons optional.",
				"type": "string",
				"pattern": "^[0-9A-Fa-f]{2}(:?[0-9A-Fa-f]{2}){19}$|^[0-9A-Fa-f]{2}(:?[0-9A-Fa-f]{2}){31}$"
			}
		}
	}`),
	Call: get,
}

// GetResult is the response of certificates.get.
type GetResult struct {
	Details
	// Paths are the device files that hold the certificate: twinlet's
	// items and the system bundle.
	Paths []string `json:"paths"`
}

// get looks the thumbprint up in the files twinlet manages for the
// section, its trust anchors and the system bundle (so any trusted CA of
// the device is found).
func get(ctx context.Context, env *providers.Env, payload json.RawMessage) (any, error) {
	var in struct {
		Thumbprint string `json:"thumbprint"`
	}
	if err := json.Unmarshal(payload, &in); err != nil {
		return nil, providers.Invalid("/thumbprint", "%v", err)
	}
	want := strings.ToUpper(strings.ReplaceAll(in.Thumbprint, ":", ""))
	root, err := env.OpenRoot()
	if err != nil {
		return nil, err
	}
	defer root.Close()
	files := map[string]bool{Bundle: true}
	for p := range env.Managed {
		files[p] = true
	}
	if ents, err := fs.ReadDir(root.FS(), rel(TrustDir)); err == nil {
		for _, e := range ents {
			if strings.HasSuffix(e.Name(), ".crt") {
				files[path.Join(TrustDir, e.Name())] = true
			}
		}
	}
	names := make([]string, 0, len(files))
	for p := range files {
		names = append(names, p)
	}
	sort.Strings(names)
	var res *GetResult
	for _, p := range names {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		b, err := root.ReadFile(rel(p))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", p, err)
		}
		for {
			var blk *pem.Block
			blk, b = pem.Decode(b)
			if blk == nil {
				break
			}
			if blk.Type != "CERTIFICATE" {
				continue // never look into a key
			}
			s1, s2 := Thumbprints(blk.Bytes)
			if want != s1 && want != s2 {
				continue
			}
			if res == nil {
				c, err := x509.ParseCertificate(blk.Bytes)
				if err != nil {
					return nil, fmt.Errorf("%s: %w", p, err)
				}
				res = &GetResult{Details: details(c)}
			}
			res.Paths = append(res.Paths, p)
			break
		}
	}
	if res == nil {
		return nil, &providers.MethodError{Status: 404, Message: "no certificate with thumbprint " + want + " on the device"}
	}
	return res, nil
}
