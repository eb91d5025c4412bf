package tpm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxtpm"
)

// DefaultTCTI is the kernel's TPM resource manager.
const DefaultTCTI = "device:/dev/tpmrm0"

// simOpener opens the in-process simulator; set only in builds (and
// tests) that include cgo and the simulator (build tag tpmsim).
var simOpener func() (transport.TPMCloser, error)

// retrying resends a command the TPM answered with a warning that says
// it did not run the command (TPM_RC_RETRY, TPM_RC_YIELDED, TPM_RC_TESTING,
// Part 2 §6.6.3), as tpm2-tss does; it is safe since nothing happened.
type retrying struct{ transport.TPMCloser }

// maxRetries bounds the resends of one command.
const maxRetries = 50

func (r retrying) Send(cmd []byte) ([]byte, error) {
	for i := 0; ; i++ {
		rsp, err := r.TPMCloser.Send(cmd)
		if err != nil || len(rsp) < 10 || i == maxRetries {
			return rsp, err
		}
		switch binary.BigEndian.Uint32(rsp[6:10]) {
		case 0x922, 0x908, 0x90A: // RETRY, YIELDED, TESTING
			continue
		}
		return rsp, nil
	}
}

// openTransport opens a TCTI string as tpm2-tools names it:
// "device[:PATH]", "swtpm[:host=H,port=P]" or "sim".
func openTransport(tcti string) (transport.TPMCloser, error) {
	t, err := openRaw(tcti)
	if err != nil {
		return nil, err
	}
	return retrying{t}, nil
}

func openRaw(tcti string) (transport.TPMCloser, error) {
	if tcti == "" {
		tcti = DefaultTCTI
	}
	kind, conf, _ := strings.Cut(tcti, ":")
	switch kind {
	case "device":
		path := conf
		if path == "" {
			path = "/dev/tpmrm0"
		}
		t, err := linuxtpm.Open(path)
		if err != nil {
			return nil, fmt.Errorf("tpm %s: %w", tcti, err)
		}
		return t, nil
	case "swtpm":
		host, port := "127.0.0.1", 2321
		if conf != "" {
			for _, kv := range strings.Split(conf, ",") {
				k, v, ok := strings.Cut(kv, "=")
				switch {
				case ok && k == "host":
					host = v
				case ok && k == "port":
					n, err := strconv.Atoi(v)
					if err != nil || n <= 0 || n > 65535 {
						return nil, fmt.Errorf("tpm %s: port %q is not a TCP port", tcti, v)
					}
					port = n
				default:
					return nil, fmt.Errorf("tpm %s: unknown option %q (want host=H,port=P)", tcti, kv)
				}
			}
		}
		r := &rawTPM{addr: net.JoinHostPort(host, strconv.Itoa(port))}
		if err := r.dial(); err != nil {
			return nil, fmt.Errorf("tpm %s: %w", tcti, err)
		}
		return r, nil
	case "sim":
		if simOpener == nil {
			return nil, errors.New("tpm sim: this twinlet was built without the simulator (build with cgo and -tags tpmsim)")
		}
		return simOpener()
	}
	return nil, fmt.Errorf("tpm %q: unknown TCTI (want device:/dev/tpmrm0, swtpm:host=H,port=P or sim)", tcti)
}

// rawTPM speaks raw TPM commands over a stream: swtpm's TCP command port.
// A broken connection fails its command and is dialled again for the
// next one (swtpm restarted, or its client connection timed out); a
// command is never sent twice.
type rawTPM struct {
	addr string
	c    net.Conn
}

func (r *rawTPM) dial() error {
	c, err := net.DialTimeout("tcp", r.addr, 10*time.Second)
	if err != nil {
		return err
	}
	r.c = c
	return nil
}

// broken drops the connection after a transport error.
func (r *rawTPM) broken(err error) error {
	r.c.Close()
	r.c = nil
	return err
}

// commandTimeout bounds one TPM command; key creation on a slow TPM takes
// seconds, never a minute.
const commandTimeout = time.Minute

// maxResponse bounds what we read from the wire.
const maxResponse = 1 << 16

// Send implements transport.TPM.
func (r *rawTPM) Send(cmd []byte) ([]byte, error) {
	if r.c == nil {
		if err := r.dial(); err != nil {
			return nil, fmt.Errorf("tpm: reconnect %s: %w", r.addr, err)
		}
	}
	_ = r.c.SetDeadline(time.Now().Add(commandTimeout))
	if _, err := r.c.Write(cmd); err != nil {
		return nil, r.broken(fmt.Errorf("tpm: send: %w", err))
	}
	hdr := make([]byte, 10)
	if _, err := io.ReadFull(r.c, hdr); err != nil {
		return nil, r.broken(fmt.Errorf("tpm: read response: %w", err))
	}
	n := binary.BigEndian.Uint32(hdr[2:6])
	if n < 10 || n > maxResponse {
		return nil, r.broken(fmt.Errorf("tpm: response of %d bytes", n))
	}
	rsp := make([]byte, n)
	copy(rsp, hdr)
	if _, err := io.ReadFull(r.c, rsp[10:]); err != nil {
		return nil, r.broken(fmt.Errorf("tpm: read response: %w", err))
	}
	return rsp, nil
}

// Close implements io.Closer.
func (r *rawTPM) Close() error {
	if r.c == nil {
		return nil
	}
	return r.c.Close()
}

// OpenTransport opens the raw command transport for a TCTI string, for
// tools and tests that speak TPM commands themselves.
func OpenTransport(tcti string) (transport.TPMCloser, error) { return openTransport(tcti) }
