// Package standard imports the built-in providers, so that a binary that
// imports it (blank) has all of them registered.
package standard

import (
	// The built-in providers register themselves in init.
	_ "github.com/twinlet/twinlet/providers/certificates"
	_ "github.com/twinlet/twinlet/providers/commands"
	_ "github.com/twinlet/twinlet/providers/deviceinfo"
	_ "github.com/twinlet/twinlet/providers/diagnostics"
	_ "github.com/twinlet/twinlet/providers/files"
	_ "github.com/twinlet/twinlet/providers/groups"
	_ "github.com/twinlet/twinlet/providers/hostname"
	_ "github.com/twinlet/twinlet/providers/ntp"
	_ "github.com/twinlet/twinlet/providers/packages"
	_ "github.com/twinlet/twinlet/providers/reboot"
	_ "github.com/twinlet/twinlet/providers/services"
	_ "github.com/twinlet/twinlet/providers/sysctl"
	_ "github.com/twinlet/twinlet/providers/timezone"
	_ "github.com/twinlet/twinlet/providers/users"
)
