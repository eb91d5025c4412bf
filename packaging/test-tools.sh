#!/bin/sh
# test-tools.sh WHAT COMMAND:PACKAGE... (COMMAND a name on the PATH or an
# absolute path) — install, as Debian packages, the
# tools the tests drive that this machine lacks, all in one apt-get call
# (an apt-get update only when the package lists do not have them). WHAT
# names the tests in messages. Without root (or apt-get) it only says what
# to install: the tests that need a missing tool skip and name it.
set -eu
what=$1
shift
missing=""
for t in "$@"; do
	cmd=${t%%:*}
	pkg=${t#*:}
	case $cmd in
	/*) [ -x "$cmd" ] && continue ;;
	esac
	if ! command -v "$cmd" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$cmd" ] && [ ! -x "/sbin/$cmd" ]; then
		case " $missing " in *" $pkg "*) ;; *) missing="$missing $pkg" ;; esac
	fi
done
[ -n "$missing" ] || exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
	echo "the $what tests need:$missing (apt-get install$missing)" >&2
	exit 0
fi
echo "installing$missing (Debian packages) for the $what tests"
export DEBIAN_FRONTEND=noninteractive
# shellcheck disable=SC2086 # one word per package
apt-get install -y -qq -o DPkg::Lock::Timeout=600 $missing >/dev/null 2>&1 || {
	apt-get update -qq -o DPkg::Lock::Timeout=600
	apt-get install -y -qq -o DPkg::Lock::Timeout=600 $missing >/dev/null
}
