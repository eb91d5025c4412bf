// Package version holds the build's version, set with
// -ldflags "-X github.com/twinlet/twinlet/internal/version.Version=v1.2.3".
package version

// Version is the agent's version; "dev" for untagged builds.
var Version = "dev"
