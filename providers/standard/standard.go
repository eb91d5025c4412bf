// Package standard imports the built-in providers, so that a binary that
// imports it (blank) has all of them registered.
package standard

import (
	// The built-in providers register themselves in init.
	_ "github.com/twinlet/twinlet/providers/deviceinfo"
	_ "github.com/twinlet/twinlet/providers/diagnostics"
	_ "github.com/twinlet/twinlet/providers/files"
	_ "github.com/twinlet/twinlet/providers/hostname"
	_ "github.com/twinlet/twinlet/providers/sysctl"
	_ "github.com/twinlet/twinlet/providers/timezone"
)
