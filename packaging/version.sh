#!/bin/sh
# Prints the version of the source tree from git, as a Debian version that
# sorts the way the history goes: a tag v1.2.3 gives 1.2.3, five commits
# after it 1.2.3+git5.abc1234; with no tag, 0.0~git<commits>.<hash>.
if d=$(git describe --tags --match 'v[0-9]*' 2>/dev/null); then
	echo "$d" | sed -e 's/^v//' -e 's/-\([0-9][0-9]*\)-g\([0-9a-f]*\)$/+git\1.\2/'
elif h=$(git rev-parse --short=7 HEAD 2>/dev/null); then
	echo "0.0~git$(git rev-list --count HEAD).$h"
else
	echo "0.0~unknown"
fi
