package main

import (
	"context"
	"flag"
	"fmt"
	"strings"

	"github.com/twinlet/twinlet/internal/iothub"
)

func init() {
	register(&command{name: "devices create", args: "DEVICE", nargs: 1, setup: devicesCreate})
	register(&command{name: "devices list", nargs: 0, setup: devicesList})
	register(&command{name: "devices show", args: "DEVICE", nargs: 1, setup: devicesShow})
	register(&command{name: "devices delete", args: "DEVICE", nargs: 1, setup: devicesDelete})
}

func devicesCreate(fs *flag.FlagSet) runFunc {
	status := fs.String("status", "enabled", "enabled or disabled")
	edge := fs.Bool("edge", false, "an IoT Edge device")
	return func(ctx context.Context, c *cli, args []string) error {
		if *status != "enabled" && *status != "disabled" {
			return usagef("--status: want enabled or disabled, got %q", *status)
		}
		sc, err := c.client()
		if err != nil {
			return err
		}
		defer sc.Close()
		d := iothub.Device{DeviceID: args[0], Status: *status}
		if *edge {
			d.Capabilities = &iothub.Capabilities{IoTEdge: true}
		}
		out, err := sc.CreateDevice(ctx, d)
		if err != nil {
			return err
		}
		return c.showDevices([]iothub.Device{*out}, true)
	}
}

func devicesList(*flag.FlagSet) runFunc {
	return func(ctx context.Context, c *cli, _ []string) error {
		sc, err := c.client()
		if err != nil {
			return err
		}
		defer sc.Close()
		ds, err := sc.ListDevices(ctx)
		if err != nil {
			return err
		}
		if ds == nil {
			ds = []iothub.Device{}
		}
		return c.showDevices(ds, false)
	}
}

func devicesShow(*flag.FlagSet) runFunc {
	return func(ctx context.Context, c *cli, args []string) error {
		sc, err := c.client()
		if err != nil {
			return err
		}
		defer sc.Close()
		d, err := sc.GetDevice(ctx, args[0])
		if err != nil {
			return err
		}
		return c.showDevices([]iothub.Device{*d}, true)
	}
}

func devicesDelete(fs *flag.FlagSet) runFunc {
	etag := fs.String("etag", "", "delete only if the device's etag still matches")
	return func(ctx context.Context, c *cli, args []string) error {
		sc, err := c.client()
		if err != nil {
			return err
		}
		defer sc.Close()
		if err := sc.DeleteDevice(ctx, args[0], *etag); err != nil {
			return err
		}
		if ok, err := c.emit(map[string]string{"deleted": args[0]}); ok {
			return err
		}
		_, err = fmt.Fprintf(c.stdout, "deleted device %s\n", args[0])
		return err
	}
}

// showDevices renders devices; with single, one device is rendered as an
// object in JSON and YAML rather than a list.
func (c *cli) showDevices(ds []iothub.Device, single bool) error {
	var v any = ds
	if single && len(ds) == 1 {
		v = ds[0]
	}
	if ok, err := c.emit(v); ok {
		return err
	}
	rows := make([][]string, 0, len(ds))
	for _, d := range ds {
		auth := ""
		if d.Authentication != nil {
			auth = d.Authentication.Type
		}
		edge := "false"
		if d.Capabilities != nil && d.Capabilities.IoTEdge {
			edge = "true"
		}
		rows = append(rows, []string{d.DeviceID, d.Status, d.ConnectionState, auth, edge, when(d.LastActivityTime)})
	}
	return table(c.stdout, []string{"DEVICE", "STATUS", "CONNECTION", "AUTH", "EDGE", "LAST ACTIVITY"}, rows)
}

// when renders a service time, "" for the zero time the service sends
// for "never".
func when(t string) string {
	if strings.HasPrefix(t, "0001-01-01") {
		return ""
	}
	return t
}
