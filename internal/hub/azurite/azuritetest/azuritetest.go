// Package azuritetest starts Azurite (package azurite) for a test: on a
// free loopback port over HTTPS, data in memory, stopped when the test
// ends; the test is skipped, naming `make azurite`, when it is missing.
package azuritetest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/twinlet/twinlet/internal/hub/azurite"
)

// Azurite is a running blob service of a test.
type Azurite struct {
	*azurite.Server
	t testing.TB
}

// Start starts Azurite for t and stops it at cleanup.
func Start(t testing.TB) *Azurite {
	t.Helper()
	s, err := azurite.Start(t.TempDir())
	if errors.Is(err, azurite.ErrNotInstalled) {
		t.Skip(err.Error())
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return &Azurite{Server: s, t: t}
}

// Restart starts a stopped Azurite again on the same port, empty.
func (a *Azurite) Restart() {
	a.t.Helper()
	if err := a.Server.Restart(); err != nil {
		a.t.Fatal(err)
	}
}

// CreateContainer creates a container with the SDK.
func (a *Azurite) CreateContainer(name string) {
	a.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := a.Server.CreateContainer(ctx, name); err != nil {
		a.t.Fatalf("create container %s: %v", name, err)
	}
}

// Download reads a blob back with the SDK.
func (a *Azurite) Download(container, blob string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return a.Server.Download(ctx, container, blob)
}
