package services

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"

	"github.com/twinlet/twinlet/schemas"
)

// FuzzUnitName checks that the schema's unit name pattern and checkUnit
// agree, and that an accepted name can never lead a drop-in path out of
// /etc/systemd/system (names may start with "-": systemctl gets them
// after "--").
func FuzzUnitName(f *testing.F) {
	for _, s := range []string{"nginx.service", "getty@tty1.service", "getty@.service", "-.mount", "../x.service", "a@b@c.socket", "x.device", "ng inx.service", "a\\x2db.swap"} {
		f.Add(s)
	}
	raw, _ := schemas.Raw(ID)
	var doc struct {
		Defs struct {
			UnitName struct {
				Pattern string `json:"pattern"`
			} `json:"unitName"`
		} `json:"$defs"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		f.Fatal(err)
	}
	re := regexp.MustCompile(doc.Defs.UnitName.Pattern)
	f.Fuzz(func(t *testing.T, name string) {
		err := checkUnit(name)
		if schemaOK := re.MatchString(name) && len(name) <= maxUnitName; schemaOK != (err == nil) {
			t.Fatalf("%q: schema says %v, checkUnit says %v", name, schemaOK, err)
		}
		if err != nil {
			return
		}
		if strings.Contains(name, "/") || name == "." || name == ".." {
			t.Fatalf("%q accepted", name)
		}
		if p := dropInPath(name, "x"); !strings.HasPrefix(p, UnitDir+"/") || strings.Count(p, "/") != 5 {
			t.Fatalf("%q gives drop-in path %s", name, p)
		}
	})
}

// FuzzParseShow checks that systemctl show output of any shape parses
// without panicking, and that blocks never come out empty.
func FuzzParseShow(f *testing.F) {
	f.Add("LoadState=loaded\nActiveState=active\n\nLoadState=not-found\n")
	f.Add("\n\n=\nx")
	f.Fuzz(func(t *testing.T, s string) {
		for _, b := range parseShow(s) {
			if len(b) == 0 {
				t.Fatalf("empty block from %q", s)
			}
		}
	})
}
