package reconciler

import (
	"fmt"
	"io"
	"strings"
)

// RenderPlan prints a dry run as a readable diff, section by section:
//
//	files: 2 change(s)
//	  + motd: create /etc/motd (sha256:ab12… 6 B, mode 0644)
//	hostname: no changes
func RenderPlan(w io.Writer, rep *Report) {
	for _, p := range rep.PolicyProblems {
		fmt.Fprintf(w, "policy: %s\n", p)
	}
	for _, s := range rep.Sections {
		switch {
		case len(s.Errors) > 0:
			fmt.Fprintf(w, "%s: invalid (%s)\n", s.ID, s.Status.Message)
			renderErrors(w, s)
		case s.Status.State == StateFailed:
			fmt.Fprintf(w, "%s: failed: %s\n", s.ID, s.Status.Message)
			continue
		}
		if len(s.Plan) == 0 {
			if len(s.Errors) == 0 {
				fmt.Fprintf(w, "%s: no changes\n", s.ID)
			}
			continue
		}
		fmt.Fprintf(w, "%s: %d change(s)\n", s.ID, len(s.Plan))
		for _, c := range s.Plan {
			fmt.Fprintf(w, "  %s\n", c.String())
		}
		for _, c := range s.Status.Conflicts {
			fmt.Fprintf(w, "  ! conflict: %s\n", c)
		}
	}
	fmt.Fprintf(w, "plan: %d change(s) in %d section(s)\n", rep.Pending(), countWithPlan(rep))
}

func countWithPlan(rep *Report) int {
	n := 0
	for _, s := range rep.Sections {
		if len(s.Plan) > 0 {
			n++
		}
	}
	return n
}

func renderErrors(w io.Writer, s *SectionResult) {
	for _, e := range s.Errors {
		at := e.At
		if at == "" {
			at = s.ID
		}
		if e.Pointer != "" {
			fmt.Fprintf(w, "  %s: /%s%s: %s\n", at, s.ID, e.Pointer, e.Message)
		} else {
			fmt.Fprintf(w, "  %s: %s\n", at, e.Message)
		}
	}
}

// RenderSummary prints one line per section after an apply, then the
// problems and the summary.
func RenderSummary(w io.Writer, rep *Report) {
	width := 8
	for _, s := range rep.Sections {
		width = max(width, len(s.ID))
	}
	for _, p := range rep.PolicyProblems {
		fmt.Fprintf(w, "policy: %s\n", p)
	}
	for _, s := range rep.Sections {
		msg := s.Status.Message
		fmt.Fprintf(w, "%-*s  %-11s %-18s %s\n", width, s.ID, s.Status.State, s.Status.Reason, strings.TrimSpace(msg))
		renderErrors(w, s)
		for _, c := range s.Status.Conflicts {
			fmt.Fprintf(w, "  conflict: %s\n", c)
		}
	}
	sum := rep.Summary
	fmt.Fprintf(w, "summary: %s, %d ready, %d failed", sum.State, sum.Ready, sum.Failed)
	if sum.FailedSections != "" {
		fmt.Fprintf(w, " (%s)", sum.FailedSections)
	}
	if sum.RebootRequired {
		fmt.Fprint(w, ", reboot required")
	}
	fmt.Fprintln(w)
}
