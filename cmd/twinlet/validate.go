package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/twinlet/twinlet/internal/config"
	"github.com/twinlet/twinlet/internal/policy"
	"github.com/twinlet/twinlet/providers"
	"github.com/twinlet/twinlet/schemas"
)

// validate checks policy files: YAML, the policy schema, each section's
// schema and each provider's own checks. One line per problem:
// file:line:col: /json/pointer: message.
func validate(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("twinlet validate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", config.DefaultPath, "agent configuration file (for root and allowed roots)")
	root := fs.String("root", "", "directory providers act on (default from config)")
	providerDirs := fs.String("provider-dirs", "", "comma-separated directories of external provider manifests (default from config)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() == 0 {
		fmt.Fprintln(stderr, "usage: twinlet validate [--config FILE] [--root DIR] PATH...")
		return 2
	}
	cfg, err := config.Load(*cfgPath, set(fs, "config"))
	if err != nil {
		fmt.Fprintf(stderr, "twinlet validate: %v\n", err)
		return 1
	}
	if *root != "" {
		cfg.Root = *root
	}
	if err := cfg.CheckAllowedRoots(); err != nil {
		fmt.Fprintf(stderr, "twinlet validate: config %v\n", err)
		return 1
	}
	var files []string
	for _, p := range fs.Args() {
		fi, err := os.Stat(p)
		if err != nil {
			fmt.Fprintf(stdout, "%s: %v\n", p, err)
			files = append(files, "")
			continue
		}
		if !fi.IsDir() {
			files = append(files, p)
			continue
		}
		ents, _ := os.ReadDir(p)
		for _, e := range ents {
			if !e.IsDir() && (strings.HasSuffix(e.Name(), ".yaml") || strings.HasSuffix(e.Name(), ".yml")) {
				files = append(files, filepath.Join(p, e.Name()))
			}
		}
	}
	env := &providers.Env{Root: cfg.Root, AllowedRoots: cfg.AllowedRoots, Runner: providers.ExecRunner{}}
	if set(fs, "provider-dirs") {
		cfg.ProviderDirs = splitDirs(*providerDirs)
	}
	// External sections are validated by their schema and their Decode
	// too; a refused manifest is reported on stderr.
	ext := loadExternal(context.Background(), cfg.ProviderDirs, slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	defer ext.Close()
	external := map[string]providers.Info{}
	for _, info := range ext.Infos() {
		external[info.ID] = info
	}
	lookup := func(id string) (providers.Info, bool) {
		if info, ok := providers.Lookup(id); ok {
			return info, true
		}
		info, ok := external[id]
		return info, ok
	}
	known := func(id string) bool { _, ok := lookup(id); return ok }
	bad := 0
	for _, f := range files {
		if f == "" {
			bad++
			continue
		}
		lines := validateFile(f, env, known, lookup)
		for _, l := range lines {
			fmt.Fprintln(stdout, l)
		}
		bad += len(lines)
	}
	if bad > 0 {
		return 1
	}
	return 0
}

func validateFile(file string, env *providers.Env, known func(string) bool, lookup func(string) (providers.Info, bool)) []string {
	data, err := policy.ReadSecure(file)
	if err != nil {
		return []string{fmt.Sprintf("%s: %v", file, err)}
	}
	docs, probs := policy.Parse(file, data, known)
	var out []string
	for _, p := range probs {
		out = append(out, p.String())
	}
	for _, d := range docs {
		ids := make([]string, 0, len(d.Sections))
		for id := range d.Sections {
			ids = append(ids, id)
		}
		sort.Strings(ids)
		for _, id := range ids {
			raw := d.Sections[id]
			loc := func(ptr, msg string) string {
				return fmt.Sprintf("%s: /spec/%s%s: %s", d.Locate(id, ptr), id, ptr, msg)
			}
			info, _ := lookup(id)
			sp, err := validateSection(id, info, raw)
			if err != nil {
				out = append(out, loc("", err.Error()))
				continue
			}
			for _, p := range sp {
				out = append(out, loc(p.Pointer, p.Message))
			}
			if len(sp) > 0 {
				continue
			}
			var m map[string]json.RawMessage
			_ = json.Unmarshal(raw, &m)
			delete(m, "__meta")
			delete(m, "reportingMode")
			stripped, _ := json.Marshal(m)
			if _, err := info.New().Decode(env, stripped); err != nil {
				if inv, ok := err.(*providers.InvalidError); ok {
					for _, fe := range inv.Errors {
						out = append(out, loc(fe.Pointer, fe.Message))
					}
				} else {
					out = append(out, loc("", err.Error()))
				}
			}
		}
	}
	return out
}

// validateSection validates a section against its provider's schema: the
// registration's own (a third-party provider) or the embedded one.
func validateSection(id string, info providers.Info, raw []byte) ([]schemas.Problem, error) {
	if len(info.Schema) == 0 {
		return schemas.Validate(id, raw)
	}
	s, err := schemas.Compile(id, info.Schema)
	if err != nil {
		return nil, err
	}
	return s.Validate(raw)
}
