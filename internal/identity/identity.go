// Package identity serves IoT Hub identities to other applications on the
// device over a local Unix socket, the way Azure's identity service does:
// an application is known by its peer uid (SO_PEERCRED), which the
// configuration maps to exactly one identity, and it receives the hub
// host name, device and module id and a fresh SAS token signed in the TPM
// (or with a stored key). No key ever crosses the socket; a uid that maps
// to no identity is refused and logged.
//
// The protocol is HTTP over the socket:
//
//	GET /identity[?ttl=SECONDS]  →  200 {"name", "hostName", "deviceId",
//	    "moduleId", "sasToken", "expiresOn", "connectionString"}
//	                                403 for an unmapped uid
//
// e.g. curl --unix-socket /run/twinlet/identity.sock http://twinlet/identity
package identity

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/twinlet/twinlet/internal/iothub"
)

// DefaultSocket is where the agent serves identities.
const DefaultSocket = "/run/twinlet/identity.sock"

// Token lifetimes: the default, and the longest an application may ask for.
const (
	DefaultTTL = time.Hour
	MaxTTL     = 24 * time.Hour
)

// Entry is one identity and the uids allowed to use it.
type Entry struct {
	// Name is the identity's name in the configuration.
	Name     string
	HostName string
	DeviceID string
	ModuleID string
	// Signer signs tokens for the identity (in the TPM, or with a key).
	Signer iothub.Signer
	// UIDs are the peer uids that get this identity.
	UIDs []uint32
}

// Server serves the entries on a Unix socket.
type Server struct {
	path  string
	byUID map[uint32]*Entry
	log   *slog.Logger
	now   func() time.Time
}

// New checks the entries (every uid maps to one identity) and returns a
// server for the socket at path.
func New(path string, entries []Entry, log *slog.Logger) (*Server, error) {
	if path == "" {
		path = DefaultSocket
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{path: path, byUID: map[uint32]*Entry{}, log: log, now: time.Now}
	for i := range entries {
		e := &entries[i]
		if e.HostName == "" || e.DeviceID == "" || e.Signer == nil {
			return nil, fmt.Errorf("identity %s: needs a host name, a device id and a signer", e.Name)
		}
		for _, u := range e.UIDs {
			if prev, ok := s.byUID[u]; ok {
				return nil, fmt.Errorf("identity %s: uid %d already maps to identity %s", e.Name, u, prev.Name)
			}
			s.byUID[u] = e
		}
	}
	return s, nil
}

// Path is the socket's path.
func (s *Server) Path() string { return s.path }

type credKey struct{}

// Listen creates the socket (and its directory, 0755), replacing a stale
// socket but never another kind of file. Anyone may connect: the answer
// depends on the peer's uid.
func (s *Server) Listen() (net.Listener, error) {
	dir := filepath.Dir(s.path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("identity socket: %w", err)
	}
	// Whoever can write the directory can put their own socket in our place.
	if fi, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("identity socket: %w", err)
	} else if fi.Mode().Perm()&0o022 != 0 && fi.Mode()&fs.ModeSticky == 0 {
		return nil, fmt.Errorf("identity socket %s: refused: directory %s is writable by group or others (chmod go-w %s)", s.path, dir, dir)
	}
	if fi, err := os.Lstat(s.path); err == nil {
		if fi.Mode()&fs.ModeSocket == 0 {
			return nil, fmt.Errorf("identity socket %s: refused: exists and is not a socket", s.path)
		}
		if err := os.Remove(s.path); err != nil {
			return nil, fmt.Errorf("identity socket: %w", err)
		}
	}
	ln, err := net.Listen("unix", s.path)
	if err != nil {
		return nil, fmt.Errorf("identity socket: %w", err)
	}
	if err := os.Chmod(s.path, 0o666); err != nil {
		ln.Close()
		return nil, fmt.Errorf("identity socket: %w", err)
	}
	return ln, nil
}

// Serve answers on ln until ctx ends, then closes it and removes the socket.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /identity", s.identity)
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, credKey{}, peerCred(c))
		},
	}
	var wg sync.WaitGroup
	errc := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		errc <- srv.Serve(ln)
	}()
	s.log.Info("serving identities", "socket", s.path, "uids", len(s.byUID))
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	srv.Close()
	wg.Wait()
	os.Remove(s.path)
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// cred is a peer's credentials, or the error reading them.
type cred struct {
	uid, pid int
	err      error
}

func peerCred(c net.Conn) cred {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return cred{err: errors.New("not a unix socket")}
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return cred{err: err}
	}
	var uc2 *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		uc2, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return cred{err: err}
	}
	if cerr != nil {
		return cred{err: cerr}
	}
	return cred{uid: int(uc2.Uid), pid: int(uc2.Pid)}
}

// Response is what an application receives.
type Response struct {
	Name     string `json:"name"`
	HostName string `json:"hostName"`
	DeviceID string `json:"deviceId"`
	ModuleID string `json:"moduleId,omitempty"`
	// SASToken is "SharedAccessSignature sr=…&sig=…&se=…".
	SASToken string `json:"sasToken"`
	// ExpiresOn is the token's expiry, Unix seconds.
	ExpiresOn int64 `json:"expiresOn"`
	// ConnectionString carries the token, as the Azure IoT SDKs accept it.
	ConnectionString string `json:"connectionString"`
}

func (s *Server) identity(w http.ResponseWriter, r *http.Request) {
	c, _ := r.Context().Value(credKey{}).(cred)
	if c.err != nil {
		s.log.Warn("identity request refused: peer credentials unreadable", "err", c.err)
		httpError(w, http.StatusForbidden, "peer credentials unreadable")
		return
	}
	e, ok := s.byUID[uint32(c.uid)]
	if !ok {
		s.log.Warn("identity request refused: uid maps to no identity", "uid", c.uid, "pid", c.pid)
		httpError(w, http.StatusForbidden, fmt.Sprintf("uid %d maps to no identity", c.uid))
		return
	}
	ttl := DefaultTTL
	if v := r.URL.Query().Get("ttl"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 || time.Duration(n)*time.Second > MaxTTL {
			httpError(w, http.StatusBadRequest, fmt.Sprintf("ttl: %q is not 1-%d seconds", v, int(MaxTTL/time.Second)))
			return
		}
		ttl = time.Duration(n) * time.Second
	}
	exp := s.now().Add(ttl)
	tok, err := e.Signer.Sign(r.Context(), iothub.DeviceResource(e.HostName, e.DeviceID, e.ModuleID), exp)
	if err != nil {
		s.log.Error("identity: signing failed", "identity", e.Name, "err", err)
		httpError(w, http.StatusInternalServerError, "signing failed")
		return
	}
	cs := "HostName=" + e.HostName + ";DeviceId=" + e.DeviceID
	if e.ModuleID != "" {
		cs += ";ModuleId=" + e.ModuleID
	}
	cs += ";SharedAccessSignature=" + tok
	s.log.Info("identity issued", "identity", e.Name, "uid", c.uid, "pid", c.pid, "expires", exp.UTC().Format(time.RFC3339))
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(Response{
		Name: e.Name, HostName: e.HostName, DeviceID: e.DeviceID, ModuleID: e.ModuleID,
		SASToken: tok, ExpiresOn: exp.Unix(), ConnectionString: cs,
	})
}

func httpError(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(map[string]string{"error": msg})
}
