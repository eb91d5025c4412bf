// Package sensor is the logic of the sensorCalibration example provider:
// an Object section {offset, gain, file} kept in a "key = value" file
// (default /etc/vendor/sensor/calibration.conf). It is an ordinary
// providers.Provider; the example's main serves it over the external
// provider protocol, and the agent's benchmark also runs it built in.
package sensor

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/twinlet/twinlet/providers"
)

// ID is the section id.
const ID = "sensorCalibration"

// DefaultFile is the calibration file when the section names none.
const DefaultFile = "/etc/vendor/sensor/calibration.conf"

// Schema is the section's JSON Schema.
const Schema = `{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "sensorCalibration",
  "description": "A vendor sensor's calibration, kept in a key = value file.",
  "type": "object",
  "additionalProperties": false,
  "properties": {
    "file": {"type": "string", "pattern": "^/", "description": "the calibration file (default ` + DefaultFile + `)"},
    "offset": {"type": "number", "minimum": -1000, "maximum": 1000},
    "gain": {"type": "number", "exclusiveMinimum": 0, "maximum": 100}
  }
}`

// Info is the registration of the provider.
func Info() providers.Info {
	return providers.Info{
		ID: ID, Kind: providers.Object, Schema: json.RawMessage(Schema), Timeout: 30 * time.Second,
		New: func() providers.Provider { return provider{} },
		Methods: map[string]providers.Method{
			"read": {
				Description: "read the calibration file as the sensor sees it",
				Schema:      json.RawMessage(`{"type":"object","additionalProperties":false,"properties":{"file":{"type":"string","pattern":"^/"}}}`),
				Call:        read,
			},
		},
	}
}

type spec struct {
	File   string
	Fields map[string]string // field → value as written ("0.5")
}

type provider struct{}

// fields are the managed fields, in file order.
var fields = []string{"offset", "gain"}

func (provider) Decode(env *providers.Env, raw json.RawMessage) (providers.Spec, error) {
	var in struct {
		File   string       `json:"file"`
		Offset *json.Number `json:"offset"`
		Gain   *json.Number `json:"gain"`
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&in); err != nil {
		return nil, providers.Invalid("", "%v", err)
	}
	s := spec{File: in.File, Fields: map[string]string{}}
	if s.File == "" {
		s.File = DefaultFile
	}
	if path.Clean(s.File) != s.File {
		return nil, providers.Invalid("/file", "%q is not a clean absolute path", s.File)
	}
	if !env.Allowed(s.File) {
		return nil, providers.Invalid("/file", "%s is outside the allowed roots", s.File)
	}
	for name, n := range map[string]*json.Number{"offset": in.Offset, "gain": in.Gain} {
		if n != nil {
			f, _ := n.Float64()
			s.Fields[name] = strconv.FormatFloat(f, 'g', -1, 64)
		}
	}
	return s, nil
}

// observed is what the file holds, reported as the section's body.
type observed struct {
	File   string            `json:"file"`
	Exists bool              `json:"exists"`
	Values map[string]string `json:"values"`
}

func (provider) Observe(ctx context.Context, env *providers.Env, sp providers.Spec) (providers.Observed, error) {
	s := sp.(spec)
	return readFile(env, s.File)
}

func readFile(env *providers.Env, file string) (observed, error) {
	o := observed{File: file, Values: map[string]string{}}
	root, err := env.OpenRoot()
	if err != nil {
		return o, err
	}
	defer root.Close()
	rel, err := providers.Rel(file)
	if err != nil {
		return o, err
	}
	b, err := root.ReadFileIfExists(rel)
	if err != nil {
		return o, err
	}
	o.Exists = b != nil
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if ok {
			o.Values[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	return o, nil
}

// WatchPaths implements providers.PathWatcher: the calibration file, so
// that an edit is healed at once.
func (provider) WatchPaths(env *providers.Env, sp providers.Spec) []string {
	return []string{env.HostPath(sp.(spec).File)}
}

type change struct {
	File, Field, Value string
}

func (provider) Plan(sp providers.Spec, ob providers.Observed) ([]providers.Change, error) {
	s, o := sp.(spec), ob.(observed)
	var out []providers.Change
	for _, f := range fields {
		want, ok := s.Fields[f]
		if !ok {
			continue
		}
		have, had := o.Values[f]
		switch {
		case !had:
			out = append(out, providers.Change{Action: providers.Create, Item: f, After: want, Data: change{s.File, f, want}})
		case have != want:
			out = append(out, providers.Change{Action: providers.Update, Item: f, Before: have, After: want, Data: change{s.File, f, want}})
		}
	}
	return out, nil
}

func (provider) Apply(ctx context.Context, env *providers.Env, c providers.Change) error {
	ch := c.Data.(change)
	o, err := readFile(env, ch.File)
	if err != nil {
		return err
	}
	o.Values[ch.Field] = ch.Value
	keys := make([]string, 0, len(o.Values))
	for k := range o.Values {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b bytes.Buffer
	b.WriteString("# written by twinlet (sensorCalibration)\n")
	for _, k := range keys {
		fmt.Fprintf(&b, "%s = %s\n", k, o.Values[k])
	}
	root, err := env.OpenRoot()
	if err != nil {
		return err
	}
	defer root.Close()
	rel, err := providers.Rel(ch.File)
	if err != nil {
		return err
	}
	env.Progress("write "+ch.File, 0, 1)
	return root.WriteFileAtomic(rel, b.Bytes(), providers.FileMeta{Mode: 0o644})
}

func read(ctx context.Context, env *providers.Env, payload json.RawMessage) (any, error) {
	var in struct {
		File string `json:"file"`
	}
	_ = json.Unmarshal(payload, &in)
	if in.File == "" {
		in.File = DefaultFile
	}
	o, err := readFile(env, in.File)
	if err != nil {
		return nil, err
	}
	if !o.Exists {
		return nil, &providers.MethodError{Status: 404, Message: in.File + " does not exist"}
	}
	return o, nil
}
