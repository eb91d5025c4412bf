package console_test

import (
	"context"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	cdplog "github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
)

// pageErrors collects what went wrong in the page: uncaught exceptions
// and the browser's error messages (a Content-Security-Policy violation,
// a failed request).
type pageErrors struct {
	mu   sync.Mutex
	errs []string
}

func (p *pageErrors) add(s string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.errs = append(p.errs, s)
}

func (p *pageErrors) take() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := p.errs
	p.errs = nil
	return out
}

func (p *pageErrors) listen(ev any) {
	switch e := ev.(type) {
	case *runtime.EventExceptionThrown:
		d := e.ExceptionDetails
		msg := d.Text
		if d.Exception != nil && d.Exception.Description != "" {
			msg = d.Exception.Description
		}
		p.add("exception: " + msg)
	case *cdplog.EventEntryAdded:
		if e.Entry.Level == cdplog.EntryLevelError {
			p.add(string(e.Entry.Source) + ": " + e.Entry.Text + " " + e.Entry.URL)
		}
	}
}

// browser starts headless Chromium (the Debian package) with a fresh
// profile and returns a context of its first tab, closed at cleanup. It
// skips the test, naming the make target, when Chromium is missing.
func browser(t *testing.T, width, height int) context.Context {
	ctx, _ := browserWithErrors(t, width, height)
	return ctx
}

// browserWithErrors is browser, with what goes wrong in the page.
func browserWithErrors(t *testing.T, width, height int) (context.Context, *pageErrors) {
	t.Helper()
	bin := ""
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			bin = p
			break
		}
	}
	if bin == "" {
		t.Skip("chromium is not installed: run `make chromium` (apt-get install chromium)")
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(bin),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("hide-scrollbars", true),
		chromedp.WindowSize(width, height),
	}
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	pe := &pageErrors{}
	ctx, cancelB := chromedp.NewContext(actx, chromedp.WithListener(pe.listen))
	t.Cleanup(func() {
		cancelB()
		cancelA()
	})
	// Start the browser now so that a broken Chromium fails here and not
	// in the middle of a test. (The browser lives as long as the context
	// of this first call: no deadline on it.)
	if err := chromedp.Do(ctx, chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		_, err := cdp.Call(ctx, t, cdplog.Enable, cdp.Empty{})
		return err
	})); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return ctx, pe
}

// noPageErrors fails the test with what went wrong in the page so far,
// except the messages that contain one of the expected strings.
func noPageErrors(t *testing.T, pe *pageErrors, expected ...string) {
	t.Helper()
next:
	for _, e := range pe.take() {
		for _, x := range expected {
			if strings.Contains(e, x) {
				continue next
			}
		}
		t.Errorf("in the page: %s", e)
	}
}

// do runs browser actions with a deadline.
func do(t *testing.T, ctx context.Context, what string, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	c, cancel := context.WithTimeout(ctx, 45*time.Second)
	defer cancel()
	if err := chromedp.Do(c, actions...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// activate presses Enter on the element sel (a button or a link), once it
// is visible: what a keyboard user does. Not a mouse click: chromedp
// clicks at the coordinates it measured a moment before, and a live
// update that moves the page in between (a section's history growing
// above the buttons) makes the click land elsewhere, on a loaded machine
// now and then.
func activate(sel string) chromedp.Action[chromedp.Void] {
	return func(ctx context.Context, t *chromedp.Target) (chromedp.Void, error) {
		return chromedp.Void{}, chromedp.Do(ctx, chromedp.WaitVisible(sel), chromedp.SendKeys(sel, "\r"))
	}
}

// get runs one browser action with a deadline and returns its value.
func get[T any](t *testing.T, ctx context.Context, what string, a chromedp.Action[T]) T {
	t.Helper()
	c, cancel := context.WithTimeout(ctx, 45*time.Second)
	defer cancel()
	v, err := chromedp.Run(c, a)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return v
}
