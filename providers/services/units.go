package services

import (
	"fmt"
	"strings"
)

// unitTypes are the unit types a services item may name: those that a
// unit file describes, so that they can be enabled, masked, started and
// stopped. Device and scope units come from the kernel and from
// processes, not from files, and are refused.
var unitTypes = []string{"service", "socket", "timer", "path", "target", "mount", "automount", "swap", "slice"}

// maxUnitName is systemd's limit on a unit name (UNIT_NAME_MAX less the
// terminating NUL).
const maxUnitName = 255

// validUnitChar reports whether c may appear in a unit name's prefix or
// instance, as systemd's unit_name_is_valid allows: ASCII letters and
// digits, ':', '-', '_', '.' and '\' (escapes such as \x2d).
func validUnitChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
		c == ':' || c == '-' || c == '_' || c == '.' || c == '\\'
}

// checkUnit validates a unit name by systemd's rules: at most 255
// characters; a prefix of letters, digits and ":-_.\"; optionally '@' and
// an instance (which may itself hold '@'; empty for a template); and a
// unit type suffix from unitTypes. It says what is wrong in a sentence a
// user can act on.
func checkUnit(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("a unit name is required (like nginx.service)")
	case len(name) > maxUnitName:
		return fmt.Errorf("unit name longer than %d characters", maxUnitName)
	}
	dot := strings.LastIndexByte(name, '.')
	if dot < 0 {
		return fmt.Errorf("%q has no unit type suffix: write %s.service (or .socket, .timer, …)", name, name)
	}
	base, suffix := name[:dot], name[dot+1:]
	known := false
	for _, t := range unitTypes {
		known = known || suffix == t
	}
	if !known {
		if suffix == "device" || suffix == "scope" {
			return fmt.Errorf("%q: %s units are not described by unit files and cannot be managed here", name, suffix)
		}
		return fmt.Errorf("%q: unknown unit type %q (one of %s)", name, suffix, strings.Join(unitTypes, ", "))
	}
	prefix, instance, templated := strings.Cut(base, "@")
	if prefix == "" {
		return fmt.Errorf("%q: the unit name before the type suffix is empty", name)
	}
	for i := 0; i < len(prefix); i++ {
		if !validUnitChar(prefix[i]) {
			return fmt.Errorf("%q: character %q is not allowed in a unit name (letters, digits and \":-_.\\\" only; see systemd-escape)", name, prefix[i])
		}
	}
	if templated {
		for i := 0; i < len(instance); i++ {
			if c := instance[i]; c != '@' && !validUnitChar(c) {
				return fmt.Errorf("%q: character %q is not allowed in a unit instance (letters, digits and \":-_.\\@\" only; see systemd-escape)", name, c)
			}
		}
	}
	return nil
}

// isTemplate reports whether a valid unit name is a template (foo@.service).
func isTemplate(name string) bool {
	base := name[:strings.LastIndexByte(name, '.')]
	return strings.HasSuffix(base, "@")
}

// checkDropInName validates the name of a drop-in file (without .conf):
// one path component that systemd reads, of letters, digits and "-_.".
func checkDropInName(name string) error {
	switch {
	case name == "" || len(name) > 200:
		return fmt.Errorf("must be 1 to 200 characters")
	case name == "." || name == ".." || strings.HasPrefix(name, "."):
		return fmt.Errorf("%q: must not start with '.'", name)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return fmt.Errorf("%q: character %q is not allowed (letters, digits, '-', '_' and '.')", name, c)
		}
	}
	return nil
}
