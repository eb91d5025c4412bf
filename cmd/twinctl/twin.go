package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strconv"

	"github.com/twinlet/twinlet/internal/iothub"
)

func init() {
	register(&command{name: "twin show", args: "DEVICE", nargs: 1, setup: twinShow})
	register(&command{name: "twin patch", args: "DEVICE -f FILE|-", nargs: 1, setup: twinPatch})
}

func twinShow(fs *flag.FlagSet) runFunc {
	module := fs.String("module", "", "a module twin of the device")
	return func(ctx context.Context, c *cli, args []string) error {
		sc, err := c.client()
		if err != nil {
			return err
		}
		defer sc.Close()
		var t *iothub.Twin
		if *module != "" {
			t, err = sc.GetModuleTwin(ctx, args[0], *module)
		} else {
			t, err = sc.GetTwin(ctx, args[0])
		}
		if err != nil {
			return err
		}
		return c.showTwin(t)
	}
}

func twinPatch(fs *flag.FlagSet) runFunc {
	module := fs.String("module", "", "patch a module twin of the device")
	file := fs.String("f", "", "the patch, JSON or YAML; - reads standard input")
	etag := fs.String("etag", "", "patch only if the twin's etag still matches")
	return func(ctx context.Context, c *cli, args []string) error {
		if *file == "" {
			return usagef("twin patch: -f FILE (or -f - for standard input) is required")
		}
		name, data, err := c.readInput(*file)
		if err != nil {
			return err
		}
		patch, err := readPatch(name, data)
		if err != nil {
			return err
		}
		sc, err := c.client()
		if err != nil {
			return err
		}
		defer sc.Close()
		var t *iothub.Twin
		if *module != "" {
			t, err = sc.PatchModuleTwin(ctx, args[0], *module, patch, *etag)
		} else {
			t, err = sc.PatchTwin(ctx, args[0], patch, *etag)
		}
		if err != nil {
			return err
		}
		if ok, err := c.emit(t); ok {
			return err
		}
		_, err = fmt.Fprintf(c.stdout, "patched twin %s (version %d, desired $version %s)\n",
			twinName(args[0], *module), t.Version, scalar(t.Properties.Desired["$version"]))
		return err
	}
}

// readInput reads a file, or standard input for "-", and returns the name
// to use in messages.
func (c *cli) readInput(path string) (string, []byte, error) {
	if path == "-" {
		data, err := io.ReadAll(c.stdin)
		if err != nil {
			return "", nil, fmt.Errorf("read standard input: %w", err)
		}
		return "<stdin>", data, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return "", nil, fmt.Errorf("-f %s: %w", path, err)
	}
	return path, data, nil
}

func twinName(device, module string) string {
	if module == "" {
		return device
	}
	return device + "/" + module
}

// showTwin renders a twin; the table lists its identity and then every
// tag and property leaf by path.
func (c *cli) showTwin(t *iothub.Twin) error {
	if ok, err := c.emit(t); ok {
		return err
	}
	rows := [][]string{{"deviceId", t.DeviceID}}
	if t.ModuleID != "" {
		rows = append(rows, []string{"moduleId", t.ModuleID})
	}
	rows = append(rows,
		[]string{"status", t.Status},
		[]string{"connectionState", t.ConnectionState},
		[]string{"version", strconv.FormatInt(t.Version, 10)},
		[]string{"etag", t.ETag},
	)
	var leaves [][2]string
	flatten("tags", t.Tags, &leaves)
	flatten("desired", t.Properties.Desired, &leaves)
	flatten("reported", t.Properties.Reported, &leaves)
	for _, l := range leaves {
		rows = append(rows, []string{l[0], l[1]})
	}
	return table(c.stdout, []string{"FIELD", "VALUE"}, rows)
}
