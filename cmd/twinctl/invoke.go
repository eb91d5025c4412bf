package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"time"

	"github.com/twinlet/twinlet/internal/iothub"
)

func init() {
	register(&command{name: "invoke", args: "DEVICE METHOD", nargs: 2, setup: invoke})
}

func invoke(fs *flag.FlagSet) runFunc {
	module := fs.String("module", "", "invoke on a module of the device")
	payload := fs.String("payload", "", "the method's JSON payload")
	timeout := fs.Duration("timeout", 30*time.Second, "how long the hub waits for the device's answer")
	connect := fs.Duration("connect-timeout", 0, "how long the hub waits for an offline device to connect")
	return func(ctx context.Context, c *cli, args []string) error {
		req := iothub.MethodRequest{MethodName: args[1], ResponseTimeout: *timeout, ConnectTimeout: *connect}
		if *payload != "" {
			if !json.Valid([]byte(*payload)) {
				return usagef("--payload: not valid JSON: %s", *payload)
			}
			req.Payload = json.RawMessage(*payload)
		}
		if *timeout < time.Second {
			return usagef("--timeout: must be at least 1s, got %s", *timeout)
		}
		sc, err := c.client()
		if err != nil {
			return err
		}
		defer sc.Close()
		var resp *iothub.MethodResponse
		if *module != "" {
			resp, err = sc.InvokeModuleMethod(ctx, args[0], *module, req)
		} else {
			resp, err = sc.InvokeMethod(ctx, args[0], req)
		}
		if err != nil {
			return err
		}
		if len(resp.Payload) == 0 {
			resp.Payload = json.RawMessage("null")
		}
		if ok, err := c.emit(resp); !ok {
			if err := table(c.stdout, []string{"STATUS", "PAYLOAD"}, [][]string{{fmt.Sprint(resp.Status), string(compactJSON(resp.Payload))}}); err != nil {
				return err
			}
		} else if err != nil {
			return err
		}
		if resp.Status >= 400 {
			return fmt.Errorf("invoke %s on %s: the device answered status %d", args[1], twinName(args[0], *module), resp.Status)
		}
		return nil
	}
}

func compactJSON(b []byte) []byte {
	var v any
	if json.Unmarshal(b, &v) != nil {
		return b
	}
	out, err := json.Marshal(v)
	if err != nil {
		return b
	}
	return out
}
