// Package console is the web fleet console of `twinctl console`: an HTTP
// server whose page (embedded, no build step, nothing fetched from the
// internet) shows devices, twins, rollouts and configurations of a hub,
// and whose every write is one specific server-side call of the service
// client (a section of a device's desired properties with If-Match, a
// named direct method, a configuration's create, update or delete). The
// hub's credentials stay in this process; the page never sees them.
package console

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twinlet/twinlet/internal/iothub"
	"github.com/twinlet/twinlet/schemas"
)

//go:embed static
var static embed.FS

// Section is what the console knows of one section: its schema (the one
// the agent validates with) and its provider's direct methods.
type Section struct {
	ID       string          `json:"id"`
	Writable bool            `json:"writable"` // false: the provider only reports
	Schema   json.RawMessage `json:"-"`
	Methods  []Method        `json:"methods,omitempty"`
}

// Method is a provider's direct method ("<section>.<name>").
type Method struct {
	Name        string          `json:"name"`
	Description string          `json:"description,omitempty"`
	Schema      json.RawMessage `json:"schema,omitempty"`
}

// Options configure a Server.
type Options struct {
	// Client talks to the hub.
	Client *iothub.ServiceClient
	// Token authenticates every request; required.
	Token string
	// Hosts are the Host header values accepted (a guard against DNS
	// rebinding); empty accepts any.
	Hosts []string
	// Interval is how often the shared poll queries the hub (default 5s).
	Interval time.Duration
	// Sections are the known sections with their schemas.
	Sections []Section
	// Logger logs errors of the hub; default slog.Default().
	Logger *slog.Logger
}

// Server serves the console.
type Server struct {
	opts     Options
	csrf     string
	cookie   string
	sections map[string]*section
	log      *slog.Logger
	mux      *http.ServeMux
	index    []byte

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	watch  map[string]*watch

	// beforePatch, when set (by tests), runs between reading a twin and
	// writing a section into it.
	beforePatch func()
	// fetches counts the shared polls' reads of the hub.
	fetches atomic.Int64
}

type section struct {
	Section
	schema  *schemas.Schema
	methods map[string]*schemas.Schema
}

// New returns a server; Close stops its polls.
func New(opts Options) (*Server, error) {
	if opts.Client == nil {
		return nil, errors.New("console: no hub client")
	}
	if len(opts.Token) < 8 {
		return nil, errors.New("console: the token must have at least 8 characters")
	}
	if opts.Interval <= 0 {
		opts.Interval = 5 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	sum := sha256.Sum256([]byte(opts.Token))
	s := &Server{opts: opts, csrf: randomToken(), cookie: "twinctl_console_" + hex.EncodeToString(sum[:4]),
		sections: map[string]*section{}, log: opts.Logger, watch: map[string]*watch{}}
	for _, sec := range opts.Sections {
		x := &section{Section: sec, methods: map[string]*schemas.Schema{}}
		if len(sec.Schema) > 0 {
			sch, err := schemas.Compile(sec.ID, sec.Schema)
			if err != nil {
				return nil, fmt.Errorf("console: %w", err)
			}
			x.schema = sch
		}
		for _, m := range sec.Methods {
			if len(m.Schema) > 0 {
				sch, err := schemas.Compile(sec.ID+"."+m.Name+" payload", m.Schema)
				if err != nil {
					return nil, fmt.Errorf("console: %w", err)
				}
				x.methods[m.Name] = sch
			}
		}
		s.sections[sec.ID] = x
	}
	idx, err := static.ReadFile("static/index.html")
	if err != nil {
		return nil, err
	}
	s.index = []byte(strings.Replace(string(idx), "{{CSRF}}", s.csrf, 1))
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.routes()
	return s, nil
}

// RandomToken returns a fresh random token for --token.
func RandomToken() string { return randomToken() }

func randomToken() string {
	b := make([]byte, 18)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return hex.EncodeToString(b)
}

// Close stops the polls and ends the event streams.
func (s *Server) Close() {
	s.cancel()
	s.wg.Wait()
}

// ServeHTTP checks the host, the token and, for writes, the origin and
// the CSRF header, then serves the request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Referrer-Policy", "no-referrer")
	w.Header().Set("X-Frame-Options", "DENY")
	w.Header().Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
	if !s.hostOK(r.Host) {
		http.Error(w, "unexpected Host header", http.StatusMisdirectedRequest)
		return
	}
	if t := r.URL.Query().Get("token"); t != "" && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
		if !s.tokenOK(t) {
			http.Error(w, "wrong token", http.StatusUnauthorized)
			return
		}
		http.SetCookie(w, &http.Cookie{Name: s.cookie, Value: s.opts.Token, Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode})
		q := r.URL.Query()
		q.Del("token")
		u := url.URL{Path: r.URL.Path, RawQuery: q.Encode()}
		http.Redirect(w, r, u.String(), http.StatusSeeOther)
		return
	}
	if !s.authenticated(r) {
		http.Error(w, "twinctl console: open the address that `twinctl console` printed (with ?token=…)", http.StatusUnauthorized)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		if err := s.writeOK(r); err != nil {
			http.Error(w, err.Error(), http.StatusForbidden)
			return
		}
	}
	s.mux.ServeHTTP(w, r)
}

func (s *Server) hostOK(host string) bool {
	if len(s.opts.Hosts) == 0 {
		return true
	}
	for _, h := range s.opts.Hosts {
		if strings.EqualFold(h, host) {
			return true
		}
	}
	return false
}

func (s *Server) tokenOK(t string) bool {
	return subtle.ConstantTimeCompare([]byte(t), []byte(s.opts.Token)) == 1
}

func (s *Server) authenticated(r *http.Request) bool {
	if c, err := r.Cookie(s.cookie); err == nil && s.tokenOK(c.Value) {
		return true
	}
	if t, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok && s.tokenOK(t) {
		return true
	}
	return false
}

// writeOK is the CSRF guard: a write comes from the console's own page
// (same origin, the page's CSRF token in a header no other site can set
// without a CORS preflight this server never answers) and carries JSON.
func (s *Server) writeOK(r *http.Request) error {
	if o := r.Header.Get("Origin"); o != "" {
		u, err := url.Parse(o)
		if err != nil || !strings.EqualFold(u.Host, r.Host) {
			return fmt.Errorf("cross-origin write refused (Origin %s)", o)
		}
	}
	if sf := r.Header.Get("Sec-Fetch-Site"); sf != "" && sf != "same-origin" {
		return fmt.Errorf("cross-site write refused (Sec-Fetch-Site %s)", sf)
	}
	if subtle.ConstantTimeCompare([]byte(r.Header.Get("X-Twinctl-Csrf")), []byte(s.csrf)) != 1 {
		return errors.New("missing or wrong X-Twinctl-Csrf header: reload the page")
	}
	if r.Method != http.MethodDelete && !strings.HasPrefix(r.Header.Get("Content-Type"), "application/json") {
		return errors.New("a write must carry application/json")
	}
	return nil
}

func (s *Server) routes() {
	m := http.NewServeMux()
	sub, _ := fs.Sub(static, "static")
	files := http.FileServerFS(sub)
	m.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		w.Write(s.index)
	})
	m.Handle("GET /static/", http.StripPrefix("/static/", files))
	m.HandleFunc("GET /api/info", s.info)
	m.HandleFunc("GET /api/schemas/{id}", s.schema)
	m.HandleFunc("GET /api/devices", s.devices)
	m.HandleFunc("GET /api/devices/{id}", s.device)
	m.HandleFunc("PUT /api/devices/{id}/sections/{section}", s.putSection)
	m.HandleFunc("POST /api/devices/{id}/methods/{method}", s.invoke)
	m.HandleFunc("GET /api/configs", s.configs)
	m.HandleFunc("POST /api/configs", s.createConfig)
	m.HandleFunc("PUT /api/configs/{id}", s.updateConfig)
	m.HandleFunc("DELETE /api/configs/{id}", s.deleteConfig)
	m.HandleFunc("GET /api/watch", s.watchHandler)
	s.mux = m
}
