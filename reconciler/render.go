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
			what := "invalid"
			if s.Status.Reason == ReasonForbidden {
				what = "forbidden"
			}
			fmt.Fprintf(w, "%s: %s (%s)\n", s.ID, what, s.Status.Message)
			renderErrors(w, s)
		case s.Status.State == StateFailed:
			fmt.Fprintf(w, "%s: failed: %s\n", s.ID, s.Status.Message)
			continue
		case s.Status.Reason == ReasonInProgress:
			fmt.Fprintf(w, "%s: in progress: %s\n", s.ID, s.Status.Message)
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

// PlanChange is one change of a plan in its JSON form.
type PlanChange struct {
	Action string `json:"action"`
	Item   string `json:"item"`
	Before string `json:"before,omitempty"`
	After  string `json:"after,omitempty"`
}

// PlanSection is one section of a plan in its JSON form.
type PlanSection struct {
	Section string       `json:"section"`
	Changes []PlanChange `json:"changes"`
	Errors  []ErrorItem  `json:"errors,omitempty"`
	Message string       `json:"message,omitempty"`
}

// PlanDoc is a dry run in its JSON form (`twinlet plan --output json`,
// the getPlan direct method). It never carries provider data.
type PlanDoc struct {
	Pending  int           `json:"pending"`
	Sections []PlanSection `json:"sections"`
	Problems []string      `json:"policyProblems,omitempty"`
}

// PlanDocument turns a dry run's report into its JSON form.
func PlanDocument(rep *Report) PlanDoc {
	out := PlanDoc{Pending: rep.Pending(), Problems: rep.PolicyProblems, Sections: []PlanSection{}}
	for _, s := range rep.Sections {
		sec := PlanSection{Section: s.ID, Changes: []PlanChange{}, Errors: s.Errors}
		if s.Status.State == StateFailed {
			sec.Message = s.Status.Message
		}
		for _, c := range s.Plan {
			sec.Changes = append(sec.Changes, PlanChange{string(c.Action), c.Item, c.Before, c.After})
		}
		out.Sections = append(out.Sections, sec)
	}
	return out
}
