package plugin

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/twinlet/twinlet/providers"
)

// Main serves info on the process's stdin and stdout until the agent
// closes stdin or asks it to shut down, then exits: an external provider
// written in Go is a main of one line around the same Info a built-in
// provider registers. Logs go to stderr, which the agent captures.
func Main(info providers.Info) {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := Serve(ctx, os.Stdin, os.Stdout, info, log); err != nil {
		log.Error("serve", "err", err)
		stop()
		os.Exit(1)
	}
}

// Serve speaks the protocol for info on r and w until r ends, a shutdown
// request arrives or ctx ends; calls still running are cancelled and
// waited for. It returns an error only when r failed (a line longer than
// MaxMessage, a read error). After a shutdown or the end of ctx, the
// goroutine that reads r ends when r does (Main exits instead).
//
// The provider's Go values never need to marshal back: decode hands the
// agent the section itself as the spec (Decode is pure, so it is decoded
// again, from a small cache, where needed), observe hands it the
// observation as JSON for the report plus a reference ({"ref": n}) as the
// private view, and plan hands it a reference as each change's data. The
// last 256 observations and changes are kept; a reference the process no
// longer knows (it was restarted in between) fails the call as a
// transient error, and the agent observes and plans again.
func Serve(ctx context.Context, r io.Reader, w io.Writer, info providers.Info, log *slog.Logger) error {
	if err := info.Check(); err != nil {
		return err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s := &server{info: info, p: info.New(), w: w, log: log, specs: map[string]providers.Spec{},
		observed: map[int64]providers.Observed{}, changes: map[int64]providers.Change{}}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	lines := make(chan []byte)
	readErr := make(chan error, 1)
	go func() {
		defer close(lines)
		br := bufio.NewReaderSize(r, 64<<10)
		for {
			line, err := readLine(br)
			if len(bytes.TrimSpace(line)) > 0 {
				select {
				case lines <- line:
				case <-ctx.Done():
					return
				}
			}
			if err != nil {
				if !errors.Is(err, io.EOF) {
					readErr <- err
				}
				return
			}
		}
	}()
	for {
		var line []byte
		var ok bool
		select {
		case <-ctx.Done():
			return nil
		case line, ok = <-lines:
		}
		if !ok {
			select {
			case err := <-readErr:
				return err
			default:
				return nil
			}
		}
		var req Request
		if err := json.Unmarshal(line, &req); err != nil || req.JSONRPC != "2.0" || req.Method == "" {
			s.send(Response{JSONRPC: "2.0", Error: &Error{Code: -32700, Message: "not a JSON-RPC 2.0 request"}})
			continue
		}
		if req.ID == nil {
			continue // the agent sends no notifications
		}
		if req.Method == MethodShutdown {
			cancel()
			wg.Wait()
			s.send(Response{JSONRPC: "2.0", ID: req.ID, Result: json.RawMessage(`{}`)})
			return nil
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.handle(ctx, req)
		}()
	}
}

// readLine reads one line of at most MaxMessage bytes.
func readLine(br *bufio.Reader) ([]byte, error) {
	var buf []byte
	for {
		chunk, err := br.ReadSlice('\n')
		buf = append(buf, chunk...)
		if len(buf) > MaxMessage {
			return nil, fmt.Errorf("a message longer than %d bytes", MaxMessage)
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		return buf, err
	}
}

// keep is how many observations and planned changes the server remembers
// so that plan and apply can be handed the Go values the provider made.
const keep = 256

type server struct {
	info providers.Info
	p    providers.Provider
	log  *slog.Logger

	wmu sync.Mutex
	w   io.Writer

	mu       sync.Mutex
	seq      int64
	specs    map[string]providers.Spec
	observed map[int64]providers.Observed
	changes  map[int64]providers.Change
}

func (s *server) send(v any) {
	b, err := json.Marshal(v)
	if err != nil {
		b, _ = json.Marshal(Response{JSONRPC: "2.0", Error: &Error{Code: -32603, Message: err.Error()}})
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	b = append(b, '\n')
	if _, err := s.w.Write(b); err != nil {
		s.log.Error("write to the agent", "err", err)
	}
}

func (s *server) handle(ctx context.Context, req Request) {
	res, err := s.call(ctx, req)
	resp := Response{JSONRPC: "2.0", ID: req.ID}
	if err != nil {
		resp.Error = toError(err)
	} else {
		b, merr := json.Marshal(res)
		if merr != nil {
			resp.Error = &Error{Code: -32603, Message: "marshal result: " + merr.Error()}
		} else {
			resp.Result = b
		}
	}
	s.send(resp)
}

// toError maps a provider's error to the protocol's error object.
func toError(err error) *Error {
	var inv *providers.InvalidError
	var me *providers.MethodError
	var pe *Error
	switch {
	case errors.As(err, &pe):
		return pe
	case errors.As(err, &inv):
		d := InvalidData{Errors: []FieldError{}}
		for _, fe := range inv.Errors {
			d.Errors = append(d.Errors, FieldError(fe))
		}
		b, _ := json.Marshal(d)
		return &Error{Code: CodeInvalid, Message: err.Error(), Data: b}
	case errors.As(err, &me):
		b, _ := json.Marshal(MethodErrorData{Status: me.Status})
		return &Error{Code: CodeMethodError, Message: me.Message, Data: b}
	}
	return &Error{Code: CodeFailed, Message: err.Error()}
}

func params(raw json.RawMessage, v any) error {
	if err := json.Unmarshal(raw, v); err != nil {
		return &Error{Code: -32602, Message: "params: " + err.Error()}
	}
	return nil
}

func (s *server) call(ctx context.Context, req Request) (res any, err error) {
	defer func() {
		if v := recover(); v != nil {
			s.log.Error("panic", "method", req.Method, "panic", v, "stack", string(debug.Stack()))
			err = &Error{Code: -32603, Message: fmt.Sprintf("%s panicked: %v", req.Method, v)}
		}
	}()
	switch req.Method {
	case MethodInitialize:
		var p InitializeParams
		if err := params(req.Params, &p); err != nil {
			return nil, err
		}
		return InitializeResult{ProtocolVersion: ProtocolVersion, Name: s.info.ID, Version: version()}, nil
	case MethodDescribe:
		return s.describe(), nil
	case MethodDecode:
		var p DecodeParams
		if err := params(req.Params, &p); err != nil {
			return nil, err
		}
		if _, err := s.spec(s.env(ctx, *req.ID, p.Env), p.Section); err != nil {
			return nil, err
		}
		return DecodeResult{Spec: p.Section}, nil
	case MethodObserve:
		var p ObserveParams
		if err := params(req.Params, &p); err != nil {
			return nil, err
		}
		env := s.env(ctx, *req.ID, p.Env)
		spec, err := s.spec(env, p.Spec)
		if err != nil {
			return nil, err
		}
		obs, err := s.p.Observe(ctx, env, spec)
		if err != nil {
			return nil, err
		}
		b, err := json.Marshal(obs)
		if err != nil {
			return nil, fmt.Errorf("observed does not marshal to JSON: %w", err)
		}
		ref := s.remember(func(n int64) { s.observed[n] = obs }, func(n int64) { delete(s.observed, n) })
		return ObserveResult{Observed: b, Private: refJSON(ref)}, nil
	case MethodPlan:
		var p PlanParams
		if err := params(req.Params, &p); err != nil {
			return nil, err
		}
		spec, err := s.spec(s.env(ctx, *req.ID, Env{}), p.Spec)
		if err != nil {
			return nil, err
		}
		s.mu.Lock()
		obs, ok := s.observed[refOf(p.Observed)]
		s.mu.Unlock()
		if !ok {
			return nil, stale("observation")
		}
		changes, err := s.p.Plan(spec, obs)
		if err != nil {
			return nil, err
		}
		out := PlanResult{Changes: []Change{}}
		for _, c := range changes {
			ref := s.remember(func(n int64) { s.changes[n] = c }, func(n int64) { delete(s.changes, n) })
			out.Changes = append(out.Changes, Change{Action: string(c.Action), Item: c.Item, Key: c.Key, Before: c.Before, After: c.After,
				Once: c.Once, RebootRequired: c.RebootRequired, Data: refJSON(ref)})
		}
		return out, nil
	case MethodApply:
		var p ApplyParams
		if err := params(req.Params, &p); err != nil {
			return nil, err
		}
		s.mu.Lock()
		c, ok := s.changes[refOf(p.Change.Data)]
		s.mu.Unlock()
		if !ok {
			return nil, stale("plan")
		}
		if err := s.p.Apply(ctx, s.env(ctx, *req.ID, p.Env), c); err != nil {
			return nil, err
		}
		return struct{}{}, nil
	case MethodMethod:
		var p MethodParams
		if err := params(req.Params, &p); err != nil {
			return nil, err
		}
		m, ok := s.info.Methods[p.Name]
		if !ok {
			return nil, &providers.MethodError{Status: 404, Message: fmt.Sprintf("no method %q", p.Name)}
		}
		out, err := m.Call(ctx, s.env(ctx, *req.ID, p.Env), p.Payload)
		if err != nil {
			return nil, err
		}
		b, err := json.Marshal(out)
		if err != nil {
			return nil, err
		}
		return MethodResult{Response: b}, nil
	case MethodWatchPaths:
		var p WatchPathsParams
		if err := params(req.Params, &p); err != nil {
			return nil, err
		}
		pw, ok := s.p.(providers.PathWatcher)
		if !ok {
			return nil, &Error{Code: -32601, Message: "no watch paths"}
		}
		env := s.env(ctx, *req.ID, p.Env)
		spec, err := s.spec(env, p.Spec)
		if err != nil {
			return nil, err
		}
		return WatchPathsResult{Paths: append([]string{}, pw.WatchPaths(env, spec)...)}, nil
	case MethodCloudScope:
		var p CloudScopeParams
		if err := params(req.Params, &p); err != nil {
			return nil, err
		}
		sc, ok := s.p.(providers.CloudScoper)
		if !ok {
			return nil, &Error{Code: -32601, Message: "no cloud scope"}
		}
		out := CloudScopeResult{Errors: []FieldError{}}
		for _, fe := range sc.CloudScope(providers.ScopeRules(p.Rules), p.Twin) {
			out.Errors = append(out.Errors, FieldError(fe))
		}
		return out, nil
	}
	return nil, &Error{Code: -32601, Message: fmt.Sprintf("method %q not found", req.Method)}
}

func stale(what string) error {
	return &Error{Code: CodeStale, Message: "the " + what + " this call refers to is no longer known (the provider restarted since); observe and plan again"}
}

func (s *server) describe() Description {
	d := Description{ID: s.info.ID, Kind: "object", Schema: s.info.Schema, DependsOn: s.info.DependsOn, ReadOnly: s.info.ReadOnly,
		TimeoutSeconds: s.info.Timeout.Seconds(), CloudDeny: s.info.CloudDeny, Version: version()}
	if s.info.Kind == providers.Collection {
		d.Kind = "collection"
	}
	if _, ok := s.p.(providers.CloudScoper); ok {
		d.CloudScope = true
	}
	if _, ok := s.p.(providers.PathWatcher); ok {
		d.WatchPaths = true
	}
	names := make([]string, 0, len(s.info.Methods))
	for n := range s.info.Methods {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if d.Methods == nil {
			d.Methods = map[string]MethodDescription{}
		}
		d.Methods[n] = MethodDescription{Description: s.info.Methods[n].Description, Schema: s.info.Methods[n].Schema}
	}
	return d
}

// spec decodes a section, remembering the last few (Decode is pure).
func (s *server) spec(env *providers.Env, raw json.RawMessage) (providers.Spec, error) {
	key := string(raw)
	s.mu.Lock()
	spec, ok := s.specs[key]
	s.mu.Unlock()
	if ok {
		return spec, nil
	}
	spec, err := s.p.Decode(env, raw)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	if len(s.specs) >= 16 {
		clear(s.specs)
	}
	s.specs[key] = spec
	s.mu.Unlock()
	return spec, nil
}

// remember stores a value under a new reference and forgets the one
// keep references older.
func (s *server) remember(put, drop func(int64)) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seq++
	put(s.seq)
	drop(s.seq - keep)
	return s.seq
}

func refJSON(n int64) json.RawMessage {
	return json.RawMessage(`{"ref":` + strconv.FormatInt(n, 10) + `}`)
}

func refOf(raw json.RawMessage) int64 {
	var v struct {
		Ref int64 `json:"ref"`
	}
	_ = json.Unmarshal(raw, &v)
	return v.Ref
}

func (s *server) env(ctx context.Context, id int64, e Env) *providers.Env {
	set := func(keys []string) map[string]bool {
		m := make(map[string]bool, len(keys))
		for _, k := range keys {
			m[k] = true
		}
		return m
	}
	return &providers.Env{
		Root: e.Root, StateDir: e.StateDir, AllowedRoots: e.AllowedRoots,
		Runner: providers.ExecRunner{}, Now: time.Now, Logger: s.log,
		Managed: set(e.Managed), Interrupted: set(e.Interrupted),
		OnProgress: func(step string, done, total int) {
			if ctx.Err() != nil {
				return
			}
			p, _ := json.Marshal(ProgressParams{Request: id, Step: step, Done: done, Total: total})
			s.send(Request{JSONRPC: "2.0", Method: MethodProgress, Params: p})
		},
	}
}

// version is the main module's version as the Go toolchain stamped it.
func version() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "devel"
}
