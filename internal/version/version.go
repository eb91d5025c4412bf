// Package version holds the build's version and source date, set at link
// time by the Makefile from git:
//
//	-ldflags "-X github.com/twinlet/twinlet/internal/version.Version=1.2.3
//	          -X github.com/twinlet/twinlet/internal/version.SourceDate=1700000000"
package version

import (
	"strconv"
	"time"
)

// Version is the agent's version (from `git describe`); "dev" for builds
// made without the Makefile.
var Version = "dev"

// SourceDate is the commit time of the source in Unix seconds (as
// SOURCE_DATE_EPOCH), so that generated files are reproducible.
var SourceDate = ""

// Date returns SourceDate as a time; the Unix epoch when unset.
func Date() time.Time {
	n, err := strconv.ParseInt(SourceDate, 10, 64)
	if err != nil {
		return time.Unix(0, 0).UTC()
	}
	return time.Unix(n, 0).UTC()
}
