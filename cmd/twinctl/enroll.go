package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	yamlv3 "go.yaml.in/yaml/v3"

	"github.com/twinlet/twinlet/internal/iothub"
	"github.com/twinlet/twinlet/schemas"
)

// enrollmentSchema is the schema id of `twinctl enroll` files.
const enrollmentSchema = "enrollment"

func init() {
	groups["enrollments"] = true
	groups["registrations"] = true
	register(&command{name: "enroll", nargs: 0, setup: enrollCmd})
	register(&command{name: "enrollments list", nargs: 0, setup: enrollmentsList})
	register(&command{name: "enrollments show", args: "ID", nargs: 1, setup: enrollmentsShow})
	register(&command{name: "enrollments delete", args: "ID", nargs: 1, setup: enrollmentsDelete})
	register(&command{name: "registrations list", nargs: 0, setup: registrationsList})
	register(&command{name: "registrations show", args: "REGISTRATION", nargs: 1, setup: registrationsShow})
	register(&command{name: "registrations delete", args: "REGISTRATION", nargs: 1, setup: registrationsDelete})
}

// dpsFlags are the flags of the DPS commands.
type dpsFlags struct{ dps, addr string }

func addDPSFlags(fs *flag.FlagSet) *dpsFlags {
	f := &dpsFlags{}
	fs.StringVar(&f.dps, "dps", "", "DPS policy connection string (env TWINCTL_DPS)")
	fs.StringVar(&f.addr, "dps-addr", "", "connect to this host:port instead of the DPS HostName:443 (env TWINCTL_DPS_ADDR)")
	return f
}

// dpsClient builds the DPS service client from the flags and environment.
func (c *cli) dpsClient(f *dpsFlags) (*iothub.DPSServiceClient, error) {
	raw, src := f.dps, "--dps"
	if raw == "" {
		raw, src = c.getenv("TWINCTL_DPS"), "TWINCTL_DPS"
	}
	if raw == "" {
		return nil, usagef("no DPS: set --dps or TWINCTL_DPS to a DPS policy connection string (HostName=…;SharedAccessKeyName=provisioningserviceowner;SharedAccessKey=…)")
	}
	cs, err := iothub.ParseConnectionString(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", src, err)
	}
	opts, err := c.serviceOptions(f.addr, "TWINCTL_DPS_ADDR")
	if err != nil {
		return nil, err
	}
	dc, err := iothub.NewDPSServiceClient(cs, opts...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", src, err)
	}
	return dc, nil
}

// enrollDoc is one validated document of an enrollment file.
type enrollDoc struct {
	kind string // Enrollment or EnrollmentGroup
	name string
	at   string // file:line of the document
	spec map[string]any
}

func (d enrollDoc) collection() string {
	if d.kind == "EnrollmentGroup" {
		return iothub.DPSEnrollmentGroups
	}
	return iothub.DPSEnrollments
}

// body is the service's JSON for the document.
func (d enrollDoc) body() map[string]any {
	b := map[string]any{}
	for k, v := range d.spec {
		b[k] = v
	}
	if d.kind == "EnrollmentGroup" {
		b["enrollmentGroupId"] = d.name
	} else {
		b["registrationId"] = d.name
	}
	return b
}

// readEnrollments parses and validates every document of an enrollment
// file (YAML or JSON, documents separated by ---). Every problem is
// reported, as file:line:col, before anything is sent.
func readEnrollments(file string, data []byte, readFile func(string) ([]byte, error)) ([]enrollDoc, error) {
	dec := yamlv3.NewDecoder(bytes.NewReader(data))
	var docs []enrollDoc
	var probs []string
	seen := map[string]string{}
	for i := 0; ; i++ {
		var root yamlv3.Node
		err := dec.Decode(&root)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			msg := strings.TrimPrefix(err.Error(), "yaml: ")
			line := 0
			if m := yamlLineErr.FindStringSubmatch(err.Error()); m != nil {
				fmt.Sscan(m[1], &line)
				msg = m[2]
			}
			return nil, &inputError{file, line, msg}
		}
		if len(root.Content) == 0 || root.Content[0].Kind == yamlv3.ScalarNode && root.Content[0].Tag == "!!null" {
			continue
		}
		n := root.Content[0]
		if err := checkDuplicates(file, n); err != nil {
			probs = append(probs, err.Error())
			continue
		}
		var v any
		if err := n.Decode(&v); err != nil {
			probs = append(probs, fmt.Sprintf("%s:%d: %v", file, n.Line, err))
			continue
		}
		raw, err := json.Marshal(v)
		if err != nil {
			probs = append(probs, fmt.Sprintf("%s:%d: document %d: keys must be strings", file, n.Line, i+1))
			continue
		}
		sp, err := schemas.Validate(enrollmentSchema, raw)
		if err != nil {
			return nil, err
		}
		for _, p := range sp {
			probs = append(probs, fmt.Sprintf("%s: %s: %s", locateNode(file, n, p.Pointer), p.Pointer, p.Message))
		}
		if len(sp) > 0 {
			continue
		}
		m := v.(map[string]any)
		d := enrollDoc{kind: m["kind"].(string), name: m["metadata"].(map[string]any)["name"].(string), at: fmt.Sprintf("%s:%d", file, n.Line)}
		d.spec = m["spec"].(map[string]any)
		probs = append(probs, checkEnrollment(file, n, &d, readFile)...)
		key := d.kind + "/" + strings.ToLower(d.name)
		if prev, dup := seen[key]; dup {
			probs = append(probs, fmt.Sprintf("%s: %s %s is also defined at %s", locateNode(file, n, "/metadata/name"), d.kind, d.name, prev))
		}
		seen[key] = d.at
		docs = append(docs, d)
	}
	if len(probs) > 0 {
		return nil, fmt.Errorf("%d problem(s), nothing was sent:\n  %s", len(probs), strings.Join(probs, "\n  "))
	}
	if len(docs) == 0 {
		return nil, &inputError{file, 0, "no Enrollment or EnrollmentGroup document"}
	}
	return docs, nil
}

// checkEnrollment checks what the schema cannot and reads certificate
// files (relative to the enrollment file) into the spec.
func checkEnrollment(file string, n *yamlv3.Node, d *enrollDoc, readFile func(string) ([]byte, error)) []string {
	var probs []string
	bad := func(ptr, format string, a ...any) {
		probs = append(probs, fmt.Sprintf("%s: %s: %s", locateNode(file, n, ptr), ptr, fmt.Sprintf(format, a...)))
	}
	att := d.spec["attestation"].(map[string]any)
	typ := att["type"].(string)
	for _, other := range []string{"symmetricKey", "tpm", "x509"} {
		if other != typ && att[other] != nil {
			bad("/spec/attestation/"+other, "attestation.type is %s, so %s does not apply", typ, other)
		}
	}
	if d.kind == "EnrollmentGroup" {
		if typ == "tpm" {
			bad("/spec/attestation/type", "TPM attestation is for an Enrollment (one device), not a group")
		}
		if d.spec["deviceId"] != nil {
			bad("/spec/deviceId", "a group's devices are named by their registration ids; deviceId is for an Enrollment")
		}
	}
	if x, ok := att["x509"].(map[string]any); ok {
		want := "clientCertificates"
		if d.kind == "EnrollmentGroup" {
			want = "signingCertificates"
		}
		for k := range x {
			if k != want {
				bad("/spec/attestation/x509/"+k, "an %s takes x509.%s", d.kind, want)
			}
		}
		if certs, ok := x[want].(map[string]any); ok {
			for _, slot := range []string{"primary", "secondary"} {
				c, ok := certs[slot].(map[string]any)
				if !ok {
					continue
				}
				ptr := "/spec/attestation/x509/" + want + "/" + slot
				pemText, _ := c["certificate"].(string)
				if f, ok := c["certificateFile"].(string); ok {
					path := f
					if !filepath.IsAbs(path) && file != "-" {
						path = filepath.Join(filepath.Dir(file), f)
					}
					b, err := readFile(path)
					if err != nil {
						bad(ptr+"/certificateFile", "%v", err)
						continue
					}
					pemText = string(b)
					delete(c, "certificateFile")
					c["certificate"] = pemText
				}
				if err := checkCertificate(pemText); err != nil {
					bad(ptr, "%v", err)
				}
			}
		}
	}
	if p, _ := d.spec["allocationPolicy"].(string); p == "custom" && d.spec["customAllocationDefinition"] == nil {
		bad("/spec/allocationPolicy", "the custom policy needs customAllocationDefinition.webhookUrl")
	}
	if p, _ := d.spec["allocationPolicy"].(string); p == "static" {
		if hubs, _ := d.spec["iotHubs"].([]any); len(hubs) != 1 {
			bad("/spec/iotHubs", "the static policy needs exactly one hub in iotHubs")
		}
	}
	return probs
}

func checkCertificate(s string) error {
	s = strings.TrimSpace(s)
	der := []byte(nil)
	if blk, _ := pem.Decode([]byte(s)); blk != nil {
		if blk.Type != "CERTIFICATE" {
			return fmt.Errorf("PEM block is %s, not CERTIFICATE", blk.Type)
		}
		der = blk.Bytes
	} else if b, err := decodeStdBase64(s); err == nil {
		der = b
	} else {
		return errors.New("not a PEM or base64 DER certificate")
	}
	if _, err := x509.ParseCertificate(der); err != nil {
		return fmt.Errorf("certificate: %v", err)
	}
	return nil
}

// locateNode returns file:line:col of the node a JSON pointer names, or
// of its nearest existing ancestor.
func locateNode(file string, n *yamlv3.Node, pointer string) string {
	if pointer != "" {
		for _, tok := range strings.Split(strings.TrimPrefix(pointer, "/"), "/") {
			tok = strings.NewReplacer("~1", "/", "~0", "~").Replace(tok)
			var next *yamlv3.Node
			switch n.Kind {
			case yamlv3.MappingNode:
				for i := 0; i+1 < len(n.Content); i += 2 {
					if n.Content[i].Value == tok {
						next = n.Content[i+1]
						if next.Kind == yamlv3.ScalarNode {
							next = n.Content[i] // point at the key of a scalar
						}
					}
				}
			case yamlv3.SequenceNode:
				var idx int
				if _, err := fmt.Sscan(tok, &idx); err == nil && idx >= 0 && idx < len(n.Content) {
					next = n.Content[idx]
				}
			}
			if next == nil {
				break
			}
			n = next
		}
	}
	return fmt.Sprintf("%s:%d:%d", file, n.Line, n.Column)
}

func enrollCmd(fs *flag.FlagSet) runFunc {
	df := addDPSFlags(fs)
	file := fs.String("f", "", "enrollment file (YAML or JSON; - for stdin)")
	dry := fs.Bool("dry-run", false, "validate the file and send nothing")
	return func(ctx context.Context, c *cli, _ []string) error {
		if *file == "" {
			return usagef("enroll: -f FILE is required")
		}
		var data []byte
		var err error
		if *file == "-" {
			data, err = io.ReadAll(c.stdin)
		} else {
			data, err = os.ReadFile(*file)
		}
		if err != nil {
			return fmt.Errorf("enroll: %w", err)
		}
		docs, err := readEnrollments(*file, data, os.ReadFile)
		if err != nil {
			return err
		}
		if *dry {
			fmt.Fprintf(c.stdout, "%s: %d document(s) valid, nothing sent\n", *file, len(docs))
			return nil
		}
		dc, err := c.dpsClient(df)
		if err != nil {
			return err
		}
		defer dc.Close()
		var rows [][]string
		var out []map[string]any
		for _, d := range docs {
			stored, action, err := applyEnrollment(ctx, dc, d)
			if err != nil {
				return fmt.Errorf("%s: %s %s: %w", d.at, d.kind, d.name, err)
			}
			out = append(out, redactKeys(stored))
			rows = append(rows, []string{d.kind, d.name, action, attestationOf(stored), sval(stored["provisioningStatus"])})
		}
		if ok, err := c.emit(out); ok {
			return err
		}
		return table(c.stdout, []string{"KIND", "NAME", "RESULT", "ATTESTATION", "STATUS"}, rows)
	}
}

// applyEnrollment creates or updates one enrollment. An update is
// conditional on the etag read just before, and keeps the symmetric keys
// the file leaves out, so that applying a file again rotates no key.
func applyEnrollment(ctx context.Context, dc *iothub.DPSServiceClient, d enrollDoc) (map[string]any, string, error) {
	body := d.body()
	action, etag := "created", ""
	cur, err := dc.Get(ctx, d.collection(), d.name)
	switch {
	case err == nil:
		var existing map[string]any
		if err := json.Unmarshal(cur, &existing); err != nil {
			return nil, "", fmt.Errorf("decode the current enrollment: %w", err)
		}
		action, etag = "updated", sval(existing["etag"])
		att := body["attestation"].(map[string]any)
		oldAtt, _ := existing["attestation"].(map[string]any)
		if att["type"] == "symmetricKey" && oldAtt != nil && oldAtt["type"] == "symmetricKey" {
			sk, _ := att["symmetricKey"].(map[string]any)
			old, _ := oldAtt["symmetricKey"].(map[string]any)
			if sk == nil {
				sk = map[string]any{}
			}
			for _, k := range []string{"primaryKey", "secondaryKey"} {
				if sk[k] == nil && old != nil {
					sk[k] = old[k]
				}
			}
			att["symmetricKey"] = sk
		}
	case iothub.IsNotFound(err):
	default:
		return nil, "", err
	}
	b, err := dc.Put(ctx, d.collection(), d.name, body, etag)
	if err != nil {
		return nil, "", err
	}
	var stored map[string]any
	if err := json.Unmarshal(b, &stored); err != nil {
		return nil, "", fmt.Errorf("decode the stored enrollment: %w", err)
	}
	return stored, action, nil
}

func decodeStdBase64(s string) ([]byte, error) { return base64.StdEncoding.DecodeString(s) }

func attestationOf(e map[string]any) string {
	a, _ := e["attestation"].(map[string]any)
	return sval(a["type"])
}

// redactKeys hides symmetric keys unless asked for.
func redactKeys(e map[string]any) map[string]any {
	a, _ := e["attestation"].(map[string]any)
	if sk, ok := a["symmetricKey"].(map[string]any); ok {
		for _, k := range []string{"primaryKey", "secondaryKey"} {
			if sk[k] != nil {
				sk[k] = "(hidden: --show-keys)"
			}
		}
	}
	return e
}

func enrollmentsList(fs *flag.FlagSet) runFunc {
	df := addDPSFlags(fs)
	return func(ctx context.Context, c *cli, _ []string) error {
		dc, err := c.dpsClient(df)
		if err != nil {
			return err
		}
		defer dc.Close()
		var all []map[string]any
		var rows [][]string
		for _, col := range []string{iothub.DPSEnrollments, iothub.DPSEnrollmentGroups} {
			items, err := dc.Query(ctx, col, "", 100)
			if err != nil {
				return err
			}
			for _, it := range items {
				var e map[string]any
				if err := json.Unmarshal(it, &e); err != nil {
					return fmt.Errorf("decode %s: %w", col, err)
				}
				kind, name := "Enrollment", sval(e["registrationId"])
				if col == iothub.DPSEnrollmentGroups {
					kind, name = "EnrollmentGroup", sval(e["enrollmentGroupId"])
				}
				hub := sval(e["iotHubHostName"])
				if hubs, _ := e["iotHubs"].([]any); len(hubs) > 0 {
					var hs []string
					for _, h := range hubs {
						hs = append(hs, sval(h))
					}
					hub = strings.Join(hs, ",")
				}
				reg := ""
				if rs, ok := e["registrationState"].(map[string]any); ok {
					reg = sval(rs["status"]) + " " + sval(rs["assignedHub"])
				}
				rows = append(rows, []string{kind, name, attestationOf(e), sval(e["provisioningStatus"]), sval(e["allocationPolicy"]), hub, strings.TrimSpace(reg)})
				all = append(all, redactKeys(e))
			}
		}
		if all == nil {
			all = []map[string]any{}
		}
		if ok, err := c.emit(all); ok {
			return err
		}
		return table(c.stdout, []string{"KIND", "NAME", "ATTESTATION", "STATUS", "ALLOCATION", "HUBS", "REGISTRATION"}, rows)
	}
}

func enrollmentsShow(fs *flag.FlagSet) runFunc {
	df := addDPSFlags(fs)
	group := fs.Bool("group", false, "ID is an enrollment group")
	keys := fs.Bool("show-keys", false, "print symmetric keys")
	return func(ctx context.Context, c *cli, args []string) error {
		dc, err := c.dpsClient(df)
		if err != nil {
			return err
		}
		defer dc.Close()
		col := iothub.DPSEnrollments
		if *group {
			col = iothub.DPSEnrollmentGroups
		}
		b, err := dc.Get(ctx, col, args[0])
		if err != nil {
			return err
		}
		var e map[string]any
		if err := json.Unmarshal(b, &e); err != nil {
			return err
		}
		if !*keys {
			e = redactKeys(e)
		}
		if c.g.output == "" || c.g.output == "table" {
			c.g.output = "yaml"
		}
		_, err = c.emit(e)
		return err
	}
}

func enrollmentsDelete(fs *flag.FlagSet) runFunc {
	df := addDPSFlags(fs)
	group := fs.Bool("group", false, "ID is an enrollment group")
	etag := fs.String("etag", "", "delete only if the enrollment's etag is this")
	return func(ctx context.Context, c *cli, args []string) error {
		dc, err := c.dpsClient(df)
		if err != nil {
			return err
		}
		defer dc.Close()
		col, kind := iothub.DPSEnrollments, "enrollment"
		if *group {
			col, kind = iothub.DPSEnrollmentGroups, "enrollment group"
		}
		if err := dc.Delete(ctx, col, args[0], *etag); err != nil {
			return err
		}
		fmt.Fprintf(c.stdout, "deleted %s %s\n", kind, args[0])
		return nil
	}
}

func registrationsList(fs *flag.FlagSet) runFunc {
	df := addDPSFlags(fs)
	group := fs.String("group", "", "only the registrations of this enrollment group")
	return func(ctx context.Context, c *cli, _ []string) error {
		dc, err := c.dpsClient(df)
		if err != nil {
			return err
		}
		defer dc.Close()
		var regs []map[string]any
		add := func(items []json.RawMessage) error {
			for _, it := range items {
				var r map[string]any
				if err := json.Unmarshal(it, &r); err != nil {
					return err
				}
				regs = append(regs, r)
			}
			return nil
		}
		var groupIDs []string
		if *group != "" {
			groupIDs = []string{*group}
		} else {
			// Individual enrollments carry their registration state; each
			// group's registrations are queried.
			items, err := dc.Query(ctx, iothub.DPSEnrollments, "", 100)
			if err != nil {
				return err
			}
			for _, it := range items {
				var e struct {
					RegistrationState json.RawMessage `json:"registrationState"`
				}
				if json.Unmarshal(it, &e) == nil && len(e.RegistrationState) > 0 && string(e.RegistrationState) != "null" {
					if err := add([]json.RawMessage{e.RegistrationState}); err != nil {
						return err
					}
				}
			}
			gs, err := dc.Query(ctx, iothub.DPSEnrollmentGroups, "", 100)
			if err != nil {
				return err
			}
			for _, it := range gs {
				var g struct {
					ID string `json:"enrollmentGroupId"`
				}
				if json.Unmarshal(it, &g) == nil {
					groupIDs = append(groupIDs, g.ID)
				}
			}
		}
		for _, g := range groupIDs {
			items, err := dc.Query(ctx, iothub.DPSRegistrations, g, 100)
			if err != nil {
				return err
			}
			if err := add(items); err != nil {
				return err
			}
		}
		sort.Slice(regs, func(i, j int) bool { return sval(regs[i]["registrationId"]) < sval(regs[j]["registrationId"]) })
		if regs == nil {
			regs = []map[string]any{}
		}
		if ok, err := c.emit(regs); ok {
			return err
		}
		rows := make([][]string, 0, len(regs))
		for _, r := range regs {
			rows = append(rows, []string{sval(r["registrationId"]), sval(r["status"]), sval(r["substatus"]), sval(r["assignedHub"]), sval(r["deviceId"]), regGroup(r), sval(r["lastUpdatedDateTimeUtc"])})
		}
		return table(c.stdout, []string{"REGISTRATION", "STATUS", "SUBSTATUS", "HUB", "DEVICE", "GROUP", "UPDATED"}, rows)
	}
}

func regGroup(r map[string]any) string {
	for _, k := range []string{"symmetricKey", "x509"} {
		if m, ok := r[k].(map[string]any); ok {
			return sval(m["enrollmentGroupId"])
		}
	}
	return ""
}

func registrationsShow(fs *flag.FlagSet) runFunc {
	df := addDPSFlags(fs)
	return func(ctx context.Context, c *cli, args []string) error {
		dc, err := c.dpsClient(df)
		if err != nil {
			return err
		}
		defer dc.Close()
		b, err := dc.Get(ctx, iothub.DPSRegistrations, args[0])
		if err != nil {
			return err
		}
		var r map[string]any
		if err := json.Unmarshal(b, &r); err != nil {
			return err
		}
		if r["tpm"] != nil {
			r["tpm"] = map[string]any{"authenticationKey": "(activation blob, hidden)"}
		}
		if c.g.output == "" || c.g.output == "table" {
			c.g.output = "yaml"
		}
		_, err = c.emit(r)
		return err
	}
}

func registrationsDelete(fs *flag.FlagSet) runFunc {
	df := addDPSFlags(fs)
	etag := fs.String("etag", "", "delete only if the record's etag is this")
	return func(ctx context.Context, c *cli, args []string) error {
		dc, err := c.dpsClient(df)
		if err != nil {
			return err
		}
		defer dc.Close()
		if err := dc.Delete(ctx, iothub.DPSRegistrations, args[0], *etag); err != nil {
			return err
		}
		fmt.Fprintf(c.stdout, "deleted registration %s (the device stays in its hub)\n", args[0])
		return nil
	}
}

// sval is a string field of a decoded document; "" when absent.
func sval(v any) string {
	s, _ := v.(string)
	return s
}
