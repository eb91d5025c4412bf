package extprov

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/twinlet/twinlet/providers/plugin"
)

// The reasons a process failure gives its section's __status (they join
// the reconciler's vocabulary through Failure.StatusReason).
const (
	// ReasonCrashed: the process exited (or could not start) while a call
	// was in flight, or is waiting out its relaunch backoff.
	ReasonCrashed = "ProviderCrashed"
	// ReasonTimeout: a call did not answer within its timeout; the
	// process was killed.
	ReasonTimeout = "ProviderTimeout"
	// ReasonProtocol: the process broke the protocol (garbage on stdout,
	// an unknown response); it was killed.
	ReasonProtocol = "ProviderBug"
)

// Failure is a failure of the process behind an external provider. It is
// transient: the reconciler retries with backoff, from a fresh Observe.
type Failure struct {
	Reason  string
	Message string
	// Stderr is the tail of what the process wrote to stderr.
	Stderr string
}

func (f *Failure) Error() string {
	if f.Stderr == "" {
		return f.Message
	}
	return f.Message + "; stderr: " + f.Stderr
}

// StatusReason is the reason the reconciler reports for the section.
func (f *Failure) StatusReason() string { return f.Reason }

// tailSize bounds the stderr kept for messages.
const tailSize = 2048

// tail keeps the last bytes written to it, cut at a line start.
type tail struct {
	mu  sync.Mutex
	buf []byte
}

func (t *tail) add(line string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, line...)
	t.buf = append(t.buf, '\n')
	if len(t.buf) > tailSize {
		cut := t.buf[len(t.buf)-tailSize:]
		if i := strings.IndexByte(string(cut), '\n'); i >= 0 && i < len(cut)-1 {
			cut = cut[i+1:]
		}
		t.buf = append([]byte(nil), cut...)
	}
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.TrimSpace(string(t.buf))
}

// pending is a call waiting for its response.
type pending struct {
	ch chan plugin.Message

	mu       sync.Mutex // held while progress runs
	progress func(plugin.ProgressParams)
	over     bool // the call has returned: no more progress
}

// report hands a progress notification to the call's listener, unless the
// call has returned (a notification that arrives after its call gave up).
func (c *pending) report(pp plugin.ProgressParams) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.over && c.progress != nil {
		c.progress(pp)
	}
}

// end marks the call returned; it waits for a listener that is running.
func (c *pending) end() {
	c.mu.Lock()
	c.over = true
	c.mu.Unlock()
}

// proc is one running provider process and its JSON-RPC session.
type proc struct {
	cmd    *exec.Cmd
	log    *slog.Logger
	trace  func(out bool, line []byte)
	stderr tail

	wmu   sync.Mutex
	stdin io.WriteCloser

	mu      sync.Mutex
	seq     int64
	calls   map[int64]*pending
	failure *Failure // set once: why the session ended
	killed  bool

	done chan struct{} // closed when the process was reaped
}

// start runs the manifest's program: argv only, its own process group,
// a clean environment, as the manifest's user.
func start(m *Manifest, log *slog.Logger, trace func(out bool, line []byte)) (*proc, error) {
	cmd := exec.Command(m.Executable, m.Args...)
	cmd.Dir = "/"
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8",
		"TWINLET_SECTION=" + m.Section, fmt.Sprintf("TWINLET_PROTOCOL=%d", plugin.ProtocolMajor)}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if m.cred != nil {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: m.cred.uid, Gid: m.cred.gid, Groups: m.cred.groups}
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	// Our own pipes, not cmd's: Wait then does not close them under the
	// readers, so the end of the process is seen even while a child it
	// left behind still holds them (that child is killed with the group).
	stdout, outW, err := os.Pipe()
	if err != nil {
		stdin.Close()
		return nil, err
	}
	stderr, errW, err := os.Pipe()
	if err != nil {
		stdin.Close()
		stdout.Close()
		outW.Close()
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = outW, errW
	err = cmd.Start()
	outW.Close()
	errW.Close()
	if err != nil {
		stdin.Close()
		stdout.Close()
		stderr.Close()
		return nil, fmt.Errorf("start %s: %w", m.Executable, err)
	}
	if trace == nil {
		trace = func(bool, []byte) {}
	}
	p := &proc{cmd: cmd, log: log.With("pid", cmd.Process.Pid), trace: trace, stdin: stdin, calls: map[int64]*pending{}, done: make(chan struct{})}
	var readers sync.WaitGroup
	readers.Add(2)
	go func() { defer readers.Done(); p.readStdout(stdout) }()
	go func() { defer readers.Done(); p.readStderr(stderr) }()
	go func() {
		err := cmd.Wait()
		// What the program left running in its group goes with it, so
		// that the pipes close and the readers end.
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		readers.Wait()
		stdout.Close()
		stderr.Close()
		p.exited(err)
		close(p.done)
	}()
	return p, nil
}

func (p *proc) readStderr(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 4096), 64<<10)
	for sc.Scan() {
		line := sc.Text()
		if len(line) > 1024 {
			line = line[:1024] + "…"
		}
		p.stderr.add(line)
		p.log.Info("provider stderr", "line", line)
	}
	_, _ = io.Copy(io.Discard, r)
}

func (p *proc) readStdout(r io.Reader) {
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		line, err := readLine(br)
		if s := strings.TrimSpace(string(line)); s != "" {
			p.trace(false, []byte(s))
			if perr := p.dispatch([]byte(s)); perr != nil {
				p.broke(perr.Error())
				_, _ = io.Copy(io.Discard, r)
				return
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrClosedPipe) {
				p.broke(err.Error())
				_, _ = io.Copy(io.Discard, r)
			}
			return
		}
	}
}

func readLine(br *bufio.Reader) ([]byte, error) {
	var buf []byte
	for {
		chunk, err := br.ReadSlice('\n')
		buf = append(buf, chunk...)
		if len(buf) > plugin.MaxMessage {
			return nil, fmt.Errorf("a line longer than %d bytes on stdout", plugin.MaxMessage)
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		return buf, err
	}
}

// dispatch routes one line: a response to its call, a progress
// notification to its call's listener. Anything else breaks the session.
func (p *proc) dispatch(line []byte) error {
	var m plugin.Message
	if err := json.Unmarshal(line, &m); err != nil || m.JSONRPC != "2.0" {
		return fmt.Errorf("the provider wrote something that is not a JSON-RPC 2.0 message to stdout: %q (logs go to stderr)", clip(string(line), 120))
	}
	if m.Method == plugin.MethodProgress && m.ID == nil {
		var pp plugin.ProgressParams
		if err := json.Unmarshal(m.Params, &pp); err != nil {
			return fmt.Errorf("a progress notification with bad params: %v", err)
		}
		p.mu.Lock()
		c := p.calls[pp.Request]
		p.mu.Unlock()
		if c != nil {
			c.report(pp)
		}
		return nil
	}
	if m.Method != "" || m.ID == nil {
		return fmt.Errorf("the provider sent %q, which the agent does not take (only responses and progress)", clip(string(line), 120))
	}
	p.mu.Lock()
	c := p.calls[*m.ID]
	delete(p.calls, *m.ID)
	p.mu.Unlock()
	if c == nil {
		return fmt.Errorf("the provider answered id %d, which no call is waiting for", *m.ID)
	}
	c.ch <- m
	return nil
}

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// broke ends a session whose process broke the protocol.
func (p *proc) broke(msg string) {
	p.fail(&Failure{Reason: ReasonProtocol, Message: "protocol: " + msg + "; process killed"})
	p.kill()
}

// fail records why the session ended (the first reason wins).
func (p *proc) fail(f *Failure) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.failure == nil {
		p.failure = f
	}
}

// exited records the end of the process.
func (p *proc) exited(err error) {
	p.mu.Lock()
	killed := p.killed
	p.mu.Unlock()
	msg := "the provider process exited"
	if err != nil {
		msg = "the provider process exited: " + err.Error()
	}
	if killed {
		msg = "the provider process was stopped"
	}
	p.fail(&Failure{Reason: ReasonCrashed, Message: msg})
}

// kill ends the process group at once.
func (p *proc) kill() {
	p.mu.Lock()
	p.killed = true
	p.mu.Unlock()
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
}

// alive reports whether the session still takes calls.
func (p *proc) alive() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.failure == nil
}

// stop ends the process: stdin closed (the provider's cue to exit), then
// SIGKILL after grace. It returns once the process is reaped.
func (p *proc) stop(grace time.Duration) {
	p.wmu.Lock()
	_ = p.stdin.Close()
	p.wmu.Unlock()
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.done:
	case <-t.C:
		p.kill()
		<-p.done
	}
}

// call sends one request and waits for its answer, the end of the process
// or ctx. A call that times out kills the process: a hung provider is
// never left holding its section.
func (p *proc) call(ctx context.Context, method string, params any, progress func(plugin.ProgressParams)) (json.RawMessage, error) {
	raw, err := json.Marshal(params)
	if err != nil {
		return nil, err
	}
	c := &pending{ch: make(chan plugin.Message, 1), progress: progress}
	defer c.end()
	p.mu.Lock()
	if f := p.failure; f != nil {
		p.mu.Unlock()
		return nil, p.withTail(f)
	}
	p.seq++
	id := p.seq
	p.calls[id] = c
	p.mu.Unlock()
	line, err := json.Marshal(plugin.Request{JSONRPC: "2.0", ID: &id, Method: method, Params: raw})
	if err != nil {
		return nil, err
	}
	p.trace(true, line)
	p.wmu.Lock()
	_, werr := p.stdin.Write(append(line, '\n'))
	p.wmu.Unlock()
	forget := func() {
		p.mu.Lock()
		delete(p.calls, id)
		p.mu.Unlock()
	}
	if werr != nil {
		forget()
		<-p.done
		return nil, p.withTail(p.failure)
	}
	select {
	case m := <-c.ch:
		if m.Error != nil {
			return nil, m.Error
		}
		return m.Result, nil
	case <-p.done:
		forget()
		select {
		case m := <-c.ch: // answered just before it exited
			if m.Error != nil {
				return nil, m.Error
			}
			return m.Result, nil
		default:
		}
		p.mu.Lock()
		f := p.failure
		p.mu.Unlock()
		return nil, p.withTail(&Failure{Reason: f.Reason, Message: method + ": " + f.Message})
	case <-ctx.Done():
		forget()
		if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return nil, fmt.Errorf("%s: %w", method, ctx.Err())
		}
		p.fail(&Failure{Reason: ReasonTimeout, Message: method + " did not answer within its timeout; the provider process was killed"})
		p.kill()
		<-p.done
		return nil, p.withTail(p.failure)
	}
}

// withTail adds the stderr tail to a failure once the process is gone (so
// that the tail is complete).
func (p *proc) withTail(f *Failure) *Failure {
	select {
	case <-p.done:
	default:
		return f
	}
	g := *f
	g.Stderr = p.stderr.String()
	return &g
}
