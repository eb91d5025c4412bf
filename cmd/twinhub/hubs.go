package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/twinlet/twinlet/internal/hub"
)

// hubsFile is the --hubs-file format.
type hubsFile struct {
	Hubs []struct {
		Hostname     string `json:"hostname"`
		Weight       int    `json:"weight,omitempty"`
		Latency      string `json:"latency,omitempty"`
		NoAllocation bool   `json:"noAllocation,omitempty"`
	} `json:"hubs"`
}

// linkedHubs reads --hubs (NAME[:WEIGHT],…) or --hubs-file.
func linkedHubs(list, file string) ([]hub.LinkedHub, error) {
	if list != "" && file != "" {
		return nil, fmt.Errorf("--hubs and --hubs-file exclude each other")
	}
	var out []hub.LinkedHub
	if list != "" {
		for _, item := range strings.Split(list, ",") {
			name, w, hasW := strings.Cut(strings.TrimSpace(item), ":")
			l := hub.LinkedHub{Hostname: name}
			if hasW {
				n, err := strconv.Atoi(w)
				if err != nil || n < 1 || n > 1000 {
					return nil, fmt.Errorf("--hubs %q: weight %q is not 1 to 1000", item, w)
				}
				l.Weight = n
			}
			if name == "" {
				return nil, fmt.Errorf("--hubs: empty host name in %q", list)
			}
			out = append(out, l)
		}
		return out, nil
	}
	if file == "" {
		return nil, nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("--hubs-file: %w", err)
	}
	var f hubsFile
	if err := yaml.UnmarshalStrict(b, &f); err != nil {
		return nil, fmt.Errorf("--hubs-file %s: %w", file, err)
	}
	for i, hf := range f.Hubs {
		l := hub.LinkedHub{Hostname: hf.Hostname, Weight: hf.Weight, NoAllocation: hf.NoAllocation}
		if hf.Hostname == "" {
			return nil, fmt.Errorf("--hubs-file %s: hubs[%d]: hostname is required", file, i)
		}
		if hf.Latency != "" {
			d, err := time.ParseDuration(hf.Latency)
			if err != nil {
				return nil, fmt.Errorf("--hubs-file %s: hubs[%d].latency: %w", file, i, err)
			}
			l.Latency = d
		}
		out = append(out, l)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("--hubs-file %s: no hubs", file)
	}
	return out, nil
}
