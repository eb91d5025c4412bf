package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"
)

func init() {
	register(&command{name: "events", nargs: 0, setup: events})
}

// event is one device-to-cloud message as twinhub's admin API
// (GET /_twinhub/events?since=N[&wait=D]) returns it.
type event struct {
	Seq        uint64            `json:"seq"`
	DeviceID   string            `json:"deviceId"`
	ModuleID   string            `json:"moduleId,omitempty"`
	Properties map[string]string `json:"properties"`
	Body       []byte            `json:"body"`
	Enqueued   string            `json:"enqueuedTime,omitempty"`
}

// eventOut is an event as twinctl prints it: the body as text when it is
// UTF-8 (JSON bodies stay JSON), else base64.
type eventOut struct {
	Seq        uint64            `json:"seq"`
	DeviceID   string            `json:"deviceId"`
	ModuleID   string            `json:"moduleId,omitempty"`
	Enqueued   string            `json:"enqueuedTime,omitempty"`
	Properties map[string]string `json:"properties,omitempty"`
	Body       any               `json:"body"`
	Encoding   string            `json:"bodyEncoding,omitempty"` // "base64" when not text
}

func (e event) out() eventOut {
	o := eventOut{Seq: e.Seq, DeviceID: e.DeviceID, ModuleID: e.ModuleID, Enqueued: e.Enqueued, Properties: e.Properties}
	switch {
	case json.Valid(e.Body):
		o.Body = json.RawMessage(e.Body)
	case utf8.Valid(e.Body):
		o.Body = string(e.Body)
	default:
		o.Body, o.Encoding = base64.StdEncoding.EncodeToString(e.Body), "base64"
	}
	return o
}

// followWait is how long one long-poll waits for new events.
const followWait = "30s"

func events(fs *flag.FlagSet) runFunc {
	follow := fs.Bool("follow", false, "keep printing new events until interrupted")
	since := fs.Uint64("since", 0, "print events after this sequence number")
	device := fs.String("device", "", "only this device's events")
	return func(ctx context.Context, c *cli, _ []string) error {
		sc, err := c.client()
		if err != nil {
			return err
		}
		defer sc.Close()
		after := *since
		var collected []eventOut
		first := true
		for {
			q := url.Values{"since": {strconv.FormatUint(after, 10)}}
			if *follow {
				q.Set("wait", followWait)
			}
			var page struct {
				Events []event `json:"events"`
				Last   uint64  `json:"last"`
			}
			err := sc.GetJSON(ctx, "/_twinhub/events", q, &page)
			if err != nil {
				if *follow && errors.Is(err, context.Canceled) && ctx.Err() != nil {
					return nil // interrupted: a normal end of --follow
				}
				return fmt.Errorf("events (a twinhub admin endpoint): %w", err)
			}
			var outs []eventOut
			for _, e := range page.Events {
				if e.Seq > after {
					after = e.Seq
				}
				if *device == "" || e.DeviceID == *device {
					outs = append(outs, e.out())
				}
			}
			if page.Last > after {
				after = page.Last
			}
			if !*follow {
				collected = append(collected, outs...)
				break
			}
			if err := c.printEvents(outs, first); err != nil {
				return err
			}
			if len(outs) > 0 {
				first = false
			}
		}
		if collected == nil {
			collected = []eventOut{}
		}
		if ok, err := c.emit(collected); ok {
			return err
		}
		return c.printEvents(collected, true)
	}
}

// printEvents prints a batch: a table (with its header only for the first
// batch), JSON lines or YAML documents.
func (c *cli) printEvents(evs []eventOut, header bool) error {
	switch c.g.output {
	case "json":
		enc := json.NewEncoder(c.stdout)
		for _, e := range evs {
			if err := enc.Encode(e); err != nil {
				return err
			}
		}
		return nil
	case "yaml":
		for _, e := range evs {
			fmt.Fprintln(c.stdout, "---")
			if _, err := c.emit(e); err != nil {
				return err
			}
		}
		return nil
	}
	if len(evs) == 0 && !header {
		return nil
	}
	var rows [][]string
	for _, e := range evs {
		rows = append(rows, []string{strconv.FormatUint(e.Seq, 10), e.DeviceID, e.ModuleID, props(e.Properties), bodyText(e)})
	}
	if !header {
		return tableRowsOnly(c, rows)
	}
	return table(c.stdout, []string{"SEQ", "DEVICE", "MODULE", "PROPERTIES", "BODY"}, rows)
}

// tableRowsOnly prints rows without a header; columns of later batches are
// not aligned with the first, which is acceptable for a live stream.
func tableRowsOnly(c *cli, rows [][]string) error {
	for _, r := range rows {
		cells := make([]string, len(r))
		for i, s := range r {
			cells[i] = cell(s)
		}
		if _, err := fmt.Fprintln(c.stdout, strings.Join(cells, "  ")); err != nil {
			return err
		}
	}
	return nil
}

func props(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + m[k]
	}
	return strings.Join(parts, "&")
}

func bodyText(e eventOut) string {
	switch b := e.Body.(type) {
	case json.RawMessage:
		return string(compactJSON(b))
	case string:
		if e.Encoding != "" {
			return "base64:" + b
		}
		return b
	}
	return ""
}
