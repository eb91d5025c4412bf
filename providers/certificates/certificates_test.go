package certificates

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"log/slog"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/twinlet/twinlet/providers"
	"github.com/twinlet/twinlet/providers/providertest"
	"github.com/twinlet/twinlet/reconciler"
)

// needTools skips when the Debian tools the tests drive are missing.
func needTools(t *testing.T) {
	t.Helper()
	for _, tool := range []string{Tool, "openssl"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed: run `make ca-tools` (apt-get install ca-certificates openssl)", tool)
		}
	}
}

type pair struct {
	cert    *x509.Certificate
	certPEM string
	key     *ecdsa.PrivateKey
	keyPEM  string
}

var serial int64

// mint makes a certificate valid from now-1h for life, signed by parent
// (self-signed when nil).
func mint(t *testing.T, cn string, ca bool, life time.Duration, parent *pair) *pair {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial++
	tpl := &x509.Certificate{
		SerialNumber: big.NewInt(1000 + serial), Subject: pkix.Name{CommonName: cn, Organization: []string{"twinlet test"}},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(life),
		BasicConstraintsValid: true, IsCA: ca,
	}
	if ca {
		tpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign
	} else {
		tpl.KeyUsage = x509.KeyUsageDigitalSignature
		tpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	signer, signKey := tpl, key
	if parent != nil {
		signer, signKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tpl, signer, &key.PublicKey, signKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return &pair{cert: cert, key: key,
		certPEM: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		keyPEM:  string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}))}
}

func section(t *testing.T, v map[string]any) json.RawMessage {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// fingerprint asks openssl for a thumbprint of the certificate file.
func fingerprint(t *testing.T, file, alg string) string {
	t.Helper()
	out, err := exec.Command("openssl", "x509", "-noout", "-fingerprint", "-"+alg, "-in", file).Output()
	if err != nil {
		t.Fatalf("openssl x509 -fingerprint -%s: %v", alg, err)
	}
	// "sha256 Fingerprint=AB:CD:…"
	_, v, ok := strings.Cut(strings.TrimSpace(string(out)), "=")
	if !ok {
		t.Fatalf("openssl printed %q", out)
	}
	return strings.ReplaceAll(v, ":", "")
}

// hashLinked reports whether a link <subject hash>.N in /etc/ssl/certs
// points to target; with cert "", any link does.
func hashLinked(t *testing.T, env *providers.Env, cert, target string) bool {
	t.Helper()
	pattern := "*.[0-9]"
	if cert != "" {
		out, err := exec.Command("openssl", "x509", "-noout", "-hash", "-in", env.HostPath(cert)).Output()
		if err != nil {
			t.Fatalf("openssl x509 -hash: %v", err)
		}
		pattern = strings.TrimSpace(string(out)) + ".[0-9]"
	}
	links, _ := filepath.Glob(env.HostPath(EtcCertsDir + "/" + pattern))
	for _, l := range links {
		if to, _ := os.Readlink(l); to == target {
			return true
		}
	}
	return false
}

func writeFile(t *testing.T, env *providers.Env, p, data string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(env.HostPath(p)), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(env.HostPath(p), []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func bundle(t *testing.T, env *providers.Env) string {
	t.Helper()
	b, err := os.ReadFile(env.HostPath(Bundle))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestRegistered(t *testing.T) {
	info, ok := providers.Lookup(ID)
	if !ok || info.Kind != providers.Collection || info.Methods["get"].Call == nil {
		t.Fatalf("Lookup(%q) = %+v, %v", ID, info, ok)
	}
}

func TestDriftTimeline(t *testing.T) {
	needTools(t)
	p, env := New(), providertest.NewEnv(t)
	ca := mint(t, "Twinlet Test Root", true, 5*365*24*time.Hour, nil)
	leaf := mint(t, "device-1", false, 10*24*time.Hour, ca) // expires within 30 days
	raw := section(t, map[string]any{
		"corpRoot": map[string]any{"type": "trustAnchor", "pem": ca.certPEM},
		"mqtt":     map[string]any{"type": "device", "pem": leaf.certPEM, "key": leaf.keyPEM},
	})

	// The root looks like a Debian system: a distribution CA listed in
	// ca-certificates.conf.
	distro := mint(t, "Distro Root", true, 365*24*time.Hour, nil)
	writeFile(t, env, "/usr/share/ca-certificates/mozilla/Distro_Root.crt", distro.certPEM)
	writeFile(t, env, "/etc/ca-certificates.conf", "# test\nmozilla/Distro_Root.crt\n")

	changes := providertest.Converge(t, p, env, raw)
	got := providertest.Lines(changes)
	if !strings.Contains(bundle(t, env), distro.certPEM) {
		t.Fatal("the bundle lost the distribution's CA")
	}
	if len(got) != 4 || !strings.HasPrefix(got[0], "+ corpRoot: "+TrustDir+"/corpRoot.crt: CN=Twinlet Test Root") ||
		got[2] != "+ mqtt: /etc/twinlet/certs/mqtt.key: private key, mode 0600" || got[3] != "~ (trust store): add corpRoot -> update-ca-certificates" {
		t.Fatalf("first plan %q", got)
	}
	if strings.Contains(strings.Join(got, "\n"), "PRIVATE") {
		t.Fatal("a plan line shows key material")
	}

	// The real store in the temp root: the bundle holds the anchor, the
	// tool linked it and openssl rehash made its hash link.
	if !strings.Contains(bundle(t, env), ca.certPEM) {
		t.Fatal("the bundle lacks the trust anchor")
	}
	link, err := os.Readlink(env.HostPath(EtcCertsDir + "/corpRoot.pem"))
	if err != nil || link != env.HostPath(TrustDir+"/corpRoot.crt") {
		t.Fatalf("corpRoot.pem -> %q, %v", link, err)
	}
	if !hashLinked(t, env, TrustDir+"/corpRoot.crt", "corpRoot.pem") {
		t.Fatal("openssl rehash made no hash link to corpRoot.pem")
	}
	fi, err := os.Stat(env.HostPath("/etc/twinlet/certs/mqtt.key"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file %v, %v", fi, err)
	}

	// Reported: thumbprints as openssl prints them (colons removed),
	// states, and no key material.
	obs := providertest.ObserveJSON(t, p, env, raw)
	root, mqtt := obs["corpRoot"].(map[string]any), obs["mqtt"].(map[string]any)
	for _, c := range []struct {
		item map[string]any
		file string
	}{{root, TrustDir + "/corpRoot.crt"}, {mqtt, "/etc/twinlet/certs/mqtt.crt"}} {
		if c.item["sha1"] != fingerprint(t, env.HostPath(c.file), "sha1") || c.item["sha256"] != fingerprint(t, env.HostPath(c.file), "sha256") {
			t.Fatalf("%s: thumbprints %v %v differ from openssl's", c.file, c.item["sha1"], c.item["sha256"])
		}
	}
	if root["state"] != StateValid || root["inStore"] != true || root["subject"] != "CN=Twinlet Test Root,O=twinlet test" || root["isCA"] != true {
		t.Fatalf("corpRoot reported %v", root)
	}
	if mqtt["state"] != StateExpiring || mqtt["key"] != "matches" || mqtt["issuer"] != "CN=Twinlet Test Root,O=twinlet test" || mqtt["daysLeft"] != float64(9) {
		t.Fatalf("mqtt reported %v", mqtt)
	}
	b, _ := json.Marshal(obs)
	if strings.Contains(string(b), "PRIVATE") {
		t.Fatal("the report holds key material")
	}
	counters := Provider{}.SummaryCounters(providertest.Observe(t, p, env, raw))
	if !reflect.DeepEqual(counters, map[string]int{"certificatesExpiring": 1, "certificatesExpired": 0}) {
		t.Fatalf("counters %v", counters)
	}
	// A wider window makes the root Expiring too; a clock past notAfter
	// makes the leaf Expired.
	env.Now = func() time.Time { return time.Now().Add(11 * 24 * time.Hour) }
	if c := (Provider{}).SummaryCounters(providertest.Observe(t, p, env, raw)); c["certificatesExpired"] != 1 {
		t.Fatalf("counters 11 days later %v", c)
	}
	env.Now = time.Now

	// Behind the agent's back: the bundle loses the anchor.
	if err := os.WriteFile(env.HostPath(Bundle), []byte(leaf.certPEM), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := providertest.Lines(providertest.Converge(t, p, env, raw)); !reflect.DeepEqual(got, []string{"~ (trust store): corpRoot not in the store -> update-ca-certificates"}) {
		t.Fatalf("heal plan %q", got)
	}
	if !strings.Contains(bundle(t, env), ca.certPEM) {
		t.Fatal("the bundle was not healed")
	}
	// The link is removed, the key loosened, the certificate replaced.
	os.Remove(env.HostPath(EtcCertsDir + "/corpRoot.pem"))
	os.Chmod(env.HostPath("/etc/twinlet/certs/mqtt.key"), 0o644)
	other := mint(t, "impostor", false, time.Hour, nil)
	os.WriteFile(env.HostPath("/etc/twinlet/certs/mqtt.crt"), []byte(other.certPEM), 0o644)
	heal := providertest.Lines(providertest.Converge(t, p, env, raw))
	if len(heal) != 3 || !strings.HasPrefix(heal[0], "~ mqtt: /etc/twinlet/certs/mqtt.crt: CN=impostor") ||
		heal[1] != "~ mqtt: /etc/twinlet/certs/mqtt.key: another key or mode -> /etc/twinlet/certs/mqtt.key: private key, mode 0600" ||
		heal[2] != "~ (trust store): corpRoot not in the store -> update-ca-certificates" {
		t.Fatalf("heal plan %q", heal)
	}
	if left := providertest.PlanOnly(t, p, env, raw); len(left) != 0 {
		t.Fatalf("further plan %q", providertest.Lines(left))
	}

	// The anchor leaves with ensure: absent: its file goes, and a fresh
	// run of the tool takes it out of the bundle and the links.
	gone := section(t, map[string]any{
		"corpRoot": map[string]any{"type": "trustAnchor", "ensure": "absent"},
		"mqtt":     map[string]any{"type": "device", "pem": leaf.certPEM, "key": leaf.keyPEM},
	})
	got = providertest.Lines(providertest.Converge(t, p, env, gone))
	if !reflect.DeepEqual(got, []string{"- corpRoot: " + TrustDir + "/corpRoot.crt", "~ (trust store): remove corpRoot -> update-ca-certificates --fresh"}) {
		t.Fatalf("remove plan %q", got)
	}
	if s := bundle(t, env); strings.Contains(s, ca.certPEM) || !strings.Contains(s, distro.certPEM) {
		t.Fatal("the removed anchor is still in the bundle, or the distribution's CA left")
	}
	if _, err := os.Lstat(env.HostPath(EtcCertsDir + "/corpRoot.pem")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("corpRoot.pem still there: %v", err)
	}
	if hashLinked(t, env, "", "corpRoot.pem") {
		t.Fatal("a hash link to corpRoot.pem is left")
	}
}

func TestPrune(t *testing.T) {
	needTools(t)
	p, env := New(), providertest.NewEnv(t)
	a := mint(t, "A", true, 365*24*time.Hour, nil)
	b := mint(t, "B", true, 365*24*time.Hour, nil)
	providertest.Converge(t, p, env, section(t, map[string]any{
		"a": map[string]any{"type": "trustAnchor", "pem": a.certPEM},
		"b": map[string]any{"type": "trustAnchor", "pem": b.certPEM}}))
	// Without prune, b's file stays; with it, it goes and the store is
	// refreshed.
	only := map[string]any{"a": map[string]any{"type": "trustAnchor", "pem": a.certPEM}}
	if got := providertest.Converge(t, p, env, section(t, only)); len(got) != 0 {
		t.Fatalf("plan without prune %q", providertest.Lines(got))
	}
	only["prune"] = true
	got := providertest.Lines(providertest.Converge(t, p, env, section(t, only)))
	if !reflect.DeepEqual(got, []string{"- b.crt: " + TrustDir + "/b.crt (pruned)", "~ (trust store): prune b.crt -> update-ca-certificates --fresh"}) {
		t.Fatalf("prune plan %q", got)
	}
	if s := bundle(t, env); !strings.Contains(s, a.certPEM) || strings.Contains(s, b.certPEM) {
		t.Fatal("bundle after prune")
	}
}

func TestKeyFile(t *testing.T) {
	p, env := New(), providertest.NewEnv(t)
	leaf := mint(t, "dev", false, 365*24*time.Hour, nil)
	other := mint(t, "other", false, 365*24*time.Hour, nil)
	raw := section(t, map[string]any{"dev": map[string]any{"type": "device", "pem": leaf.certPEM, "keyFile": "/etc/dev/dev.key", "path": "/etc/dev/dev.crt"}})
	spec := providertest.Decode(t, p, env, raw)
	obs, err := p.Observe(context.Background(), env, spec)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Plan(spec, obs); !reflect.DeepEqual(providertest.Invalid(t, err), []string{"/dev/keyFile"}) {
		t.Fatalf("missing key file: %v", err)
	}
	os.MkdirAll(env.HostPath("/etc/dev"), 0o755)
	os.WriteFile(env.HostPath("/etc/dev/dev.key"), []byte(other.keyPEM), 0o600)
	obs, _ = p.Observe(context.Background(), env, spec)
	if _, err := p.Plan(spec, obs); err == nil || !strings.Contains(err.Error(), "/dev/keyFile: the key file /etc/dev/dev.key does not match") {
		t.Fatalf("mismatched key file: %v", err)
	}
	os.WriteFile(env.HostPath("/etc/dev/dev.key"), []byte(leaf.keyPEM), 0o600)
	if got := providertest.Lines(providertest.Converge(t, p, env, raw)); len(got) != 1 || !strings.HasPrefix(got[0], "+ dev: /etc/dev/dev.crt: CN=dev") {
		t.Fatalf("plan %q", got)
	}
	if o := providertest.ObserveJSON(t, p, env, raw)["dev"].(map[string]any); o["key"] != "matches" || o["keyPath"] != "/etc/dev/dev.key" || o["state"] != StateValid {
		t.Fatalf("reported %v", o)
	}
}

func TestInvalid(t *testing.T) {
	p, env := New(), providertest.NewEnv(t)
	ca := mint(t, "CA", true, time.Hour, nil)
	leaf := mint(t, "leaf", false, time.Hour, ca)
	other := mint(t, "other", false, time.Hour, nil)
	q := func(s string) string { b, _ := json.Marshal(s); return string(b) }
	for _, tc := range []struct{ raw, ptr string }{
		{`{"x": {"type": "device", "pem": ` + q(leaf.certPEM) + `, "key": ` + q(other.keyPEM) + `}}`, "/x/key"},
		{`{"x": {"type": "device", "pem": ` + q(leaf.certPEM) + `, "key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"}}`, "/x/key"},
		{`{"x": {"type": "trustAnchor", "pem": ` + q(ca.certPEM) + `, "key": ` + q(other.keyPEM) + `}}`, "/x/key"},
		{`{"x": {"type": "trustAnchor", "pem": ` + q(leaf.certPEM) + `}}`, "/x/pem"},
		{`{"x": {"type": "trustAnchor", "pem": ` + q(ca.certPEM+leaf.certPEM) + `}}`, "/x/pem"},
		{`{"x": {"type": "trustAnchor", "pem": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"}}`, "/x/pem"},
		{`{"x": {"type": "trustAnchor"}}`, "/x/pem"},
		{`{"x": {"type": "device", "pem": ` + q(leaf.certPEM) + `, "path": "/boot/x.crt"}}`, "/x/path"},
		{`{"x": {"type": "device", "pem": ` + q(leaf.certPEM) + `, "path": "/etc/../etc/x.crt"}}`, "/x/path"},
		{`{"x": {"type": "device", "pem": ` + q(leaf.certPEM) + `, "keyFile": "/etc/k", "key": ` + q(leaf.keyPEM) + `}}`, "/x/keyFile"},
		{`{"x": {"type": "device", "pem": ` + q(leaf.certPEM) + `, "keyPath": "/etc/k"}}`, "/x/keyPath"},
		{`{"x": {"type": "device", "pem": ` + q(leaf.certPEM) + `, "expiringDays": -1}}`, "/x/expiringDays"},
		{`{"x": {"type": "server", "pem": ` + q(leaf.certPEM) + `}}`, "/x/type"},
		{`{"x y": {"type": "trustAnchor", "pem": ` + q(ca.certPEM) + `}}`, "/x y"},
	} {
		_, err := p.Decode(env, json.RawMessage(tc.raw))
		if got := providertest.Invalid(t, err); !reflect.DeepEqual(got, []string{tc.ptr}) {
			t.Errorf("%.80s…: pointers %v, want %s (%v)", tc.raw, got, tc.ptr, err)
		}
		if err != nil && strings.Contains(err.Error(), "PRIVATE KEY") && strings.Contains(err.Error(), "AAAA") {
			t.Errorf("an error quotes key material: %v", err)
		}
	}
}

func TestCloudScope(t *testing.T) {
	leaf := mint(t, "leaf", false, time.Hour, nil)
	twin := section(t, map[string]any{
		"a":      map[string]any{"type": "device", "pem": leaf.certPEM, "key": leaf.keyPEM},
		"b":      map[string]any{"type": "device", "pem": leaf.certPEM, "keyFile": "/etc/b.key"},
		"lab-ca": map[string]any{"type": "trustAnchor", "pem": leaf.certPEM},
	})
	ptrs := func(fes []providers.FieldError) []string {
		var out []string
		for _, fe := range fes {
			out = append(out, fe.Pointer)
		}
		return out
	}
	if got := ptrs(Provider{}.CloudScope(providers.ScopeRules{}, twin)); !reflect.DeepEqual(got, []string{"/a/key"}) {
		t.Fatalf("default scope forbids %v", got)
	}
	if got := ptrs(Provider{}.CloudScope(providers.ScopeRules{Deny: []string{"lab-*"}}, twin)); !reflect.DeepEqual(got, []string{"/a/key", "/lab-ca"}) {
		t.Fatalf("deny lab-* forbids %v", got)
	}
	if got := ptrs(Provider{}.CloudScope(providers.ScopeRules{Allow: []string{"b"}, Privileged: true}, twin)); !reflect.DeepEqual(got, []string{"/a", "/lab-ca"}) {
		t.Fatalf("allow b forbids %v", got)
	}
}

func TestGet(t *testing.T) {
	needTools(t)
	p, env := New(), providertest.NewEnv(t)
	ca := mint(t, "Get Root", true, 365*24*time.Hour, nil)
	leaf := mint(t, "get-leaf", false, 365*24*time.Hour, ca)
	providertest.Converge(t, p, env, section(t, map[string]any{
		"root": map[string]any{"type": "trustAnchor", "pem": ca.certPEM},
		"leaf": map[string]any{"type": "device", "pem": leaf.certPEM, "key": leaf.keyPEM}}))
	sha1 := fingerprint(t, env.HostPath(TrustDir+"/root.crt"), "sha1")
	// openssl's own form: uppercase with colons.
	var colons []string
	for i := 0; i < len(sha1); i += 2 {
		colons = append(colons, sha1[i:i+2])
	}
	out, err := get(context.Background(), env, json.RawMessage(`{"thumbprint":"`+strings.Join(colons, ":")+`"}`))
	if err != nil {
		t.Fatal(err)
	}
	res := out.(*GetResult)
	if res.Subject != "CN=Get Root,O=twinlet test" || res.SHA1 != sha1 || !reflect.DeepEqual(res.Paths, []string{Bundle, TrustDir + "/root.crt"}) {
		t.Fatalf("get root: %+v", res)
	}
	sha256 := strings.ToLower(fingerprint(t, env.HostPath("/etc/twinlet/certs/leaf.crt"), "sha256"))
	out, err = get(context.Background(), env, json.RawMessage(`{"thumbprint":"`+sha256+`"}`))
	if err != nil || out.(*GetResult).Subject != "CN=get-leaf,O=twinlet test" {
		t.Fatalf("get leaf: %+v, %v", out, err)
	}
	_, err = get(context.Background(), env, json.RawMessage(`{"thumbprint":"`+strings.Repeat("AB", 20)+`"}`))
	var me *providers.MethodError
	if !errors.As(err, &me) || me.Status != 404 {
		t.Fatalf("unknown thumbprint: %v", err)
	}
}

// TestThroughRuntime drives the real reconciler: the summary counts the
// expiring certificate, and a key from the twin is Forbidden with its
// pointer while the rest of the section converges.
func TestThroughRuntime(t *testing.T) {
	needTools(t)
	root, stateDir := t.TempDir(), t.TempDir()
	ca := mint(t, "Runtime Root", true, 365*24*time.Hour, nil)
	leaf := mint(t, "runtime-leaf", false, 5*24*time.Hour, ca)
	twin := filepath.Join(t.TempDir(), "twin.json")
	b, _ := json.Marshal(map[string]any{"certificates": map[string]any{
		"root": map[string]any{"type": "trustAnchor", "pem": ca.certPEM},
		"leaf": map[string]any{"type": "device", "pem": leaf.certPEM, "key": leaf.keyPEM},
		"ok":   map[string]any{"type": "device", "pem": leaf.certPEM, "path": "/etc/twinlet/certs/ok.pem"},
	}})
	os.WriteFile(twin, b, 0o600)
	info, _ := providers.Lookup(ID)
	r, err := reconciler.New(reconciler.Options{Root: root, StateDir: stateDir, TwinDesiredFile: twin,
		Providers: []providers.Info{info}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	rep := r.ReconcileAll(context.Background(), false)
	var d struct {
		Summary      map[string]any `json:"__summary"`
		Certificates struct {
			Status reconciler.Status      `json:"__status"`
			Errors []reconciler.ErrorItem `json:"__errors"`
			OK     map[string]any         `json:"ok"`
			Root   map[string]any         `json:"root"`
			Leaf   *map[string]any        `json:"leaf"`
		} `json:"certificates"`
	}
	if err := json.Unmarshal(rep.Document, &d); err != nil {
		t.Fatal(err)
	}
	c := d.Certificates
	if c.Status.Reason != reconciler.ReasonForbidden || len(c.Errors) != 1 || c.Errors[0].Pointer != "/leaf/key" || c.Errors[0].At != "twin:/certificates/leaf/key" {
		t.Fatalf("certificates: %+v %+v", c.Status, c.Errors)
	}
	if c.OK["state"] != StateExpiring || c.Root["state"] != StateValid || c.Leaf != nil {
		t.Fatalf("items: ok=%v root=%v leaf=%v", c.OK, c.Root, c.Leaf)
	}
	if d.Summary["certificatesExpiring"] != float64(1) || d.Summary["certificatesExpired"] != float64(0) {
		t.Fatalf("summary %v", d.Summary)
	}
	if _, err := os.Stat(filepath.Join(root, "etc/twinlet/certs/leaf.key")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the twin's key was written: %v", err)
	}
	// certificates.get through the runtime: the payload is validated
	// (400 with the pointer), a known thumbprint found.
	_, err = r.CallMethod(context.Background(), ID, "get", json.RawMessage(`{"thumbprint": "not-hex"}`))
	var inv *providers.InvalidError
	if !errors.As(err, &inv) || inv.Errors[0].Pointer != "/thumbprint" {
		t.Fatalf("bad payload: %v", err)
	}
	out, err := r.CallMethod(context.Background(), ID, "get", json.RawMessage(`{"thumbprint": "`+c.Root["sha256"].(string)+`"}`))
	if err != nil || out.(*GetResult).Subject != "CN=Runtime Root,O=twinlet test" {
		t.Fatalf("get: %+v, %v", out, err)
	}
}

// TestExpiringWindow: the Expiring window is each item's expiringDays
// (30 by default), and notAfter is reported as the certificate has it.
// Device certificates need no store tool.
func TestExpiringWindow(t *testing.T) {
	p, env := New(), providertest.NewEnv(t)
	leaf := mint(t, "window-leaf", false, 10*24*time.Hour, nil) // 10 days left
	item := func(days *int) map[string]any {
		m := map[string]any{"type": "device", "pem": leaf.certPEM, "key": leaf.keyPEM}
		if days != nil {
			m["expiringDays"] = *days
		}
		return m
	}
	five, fifteen := 5, 15
	raw := section(t, map[string]any{"narrow": item(&five), "wide": item(&fifteen), "default": item(nil)})
	providertest.Converge(t, p, env, raw)
	obs := providertest.ObserveJSON(t, p, env, raw)
	want := map[string]string{"narrow": StateValid, "wide": StateExpiring, "default": StateExpiring}
	for name, state := range want {
		it := obs[name].(map[string]any)
		if it["state"] != state {
			t.Errorf("%s (10 days left): state %v, want %s", name, it["state"], state)
		}
		if it["notAfter"] != leaf.cert.NotAfter.UTC().Format(time.RFC3339) {
			t.Errorf("%s: notAfter %v, want %s", name, it["notAfter"], leaf.cert.NotAfter.UTC().Format(time.RFC3339))
		}
	}
	if c := (Provider{}).SummaryCounters(providertest.Observe(t, p, env, raw)); c["certificatesExpiring"] != 2 {
		t.Errorf("counters %v, want 2 expiring", c)
	}
	// Six days later the narrow window is entered too.
	env.Now = func() time.Time { return time.Now().Add(6 * 24 * time.Hour) }
	if it := providertest.ObserveJSON(t, p, env, raw)["narrow"].(map[string]any); it["state"] != StateExpiring {
		t.Errorf("narrow, 4 days left: state %v", it["state"])
	}
}
