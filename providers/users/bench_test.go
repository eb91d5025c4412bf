package users

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twinlet/twinlet/internal/accounts/accountstest"
	"github.com/twinlet/twinlet/providers"
	"github.com/twinlet/twinlet/providers/providertest"
)

const benchUsers = 20

// benchSection is 20 users in 4 groups; with keys, each has an
// authorized key.
func benchSection(withKeys bool) json.RawMessage {
	var b strings.Builder
	b.WriteString("{")
	for i := range benchUsers {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, `"u%02d": {"uid": %d, "groups": ["g%d"], "shell": "/bin/bash"`, i, 2000+i, i%4)
		if withKeys {
			fmt.Fprintf(&b, `, "authorizedKeys": [%q]`, edKey)
		}
		b.WriteString("}")
	}
	b.WriteString("}")
	return json.RawMessage(b.String())
}

func benchRoot(b *testing.B, raw json.RawMessage) (*providers.Env, providers.Spec) {
	env := accountstest.NewEnv(b)
	for g := range 4 {
		if out, err := exec.Command("groupadd", "--root", env.Root, fmt.Sprintf("g%d", g)).CombinedOutput(); err != nil {
			b.Fatalf("groupadd: %v %s", err, out)
		}
	}
	p := New()
	providertest.Converge(b, p, env, raw)
	return env, providertest.Decode(b, p, env, raw)
}

func benchObserve(b *testing.B, withKeys bool) {
	raw := benchSection(withKeys)
	env, spec := benchRoot(b, raw)
	p := New()
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		obs, err := p.Observe(ctx, env, spec)
		if err != nil {
			b.Fatal(err)
		}
		if ch, err := p.Plan(spec, obs); err != nil || len(ch) != 0 {
			b.Fatalf("not a no-op: %v %v", providertest.Lines(ch), err)
		}
	}
}

// BenchmarkNoopObserve20Users is a no-op Observe and Plan of 20
// converged users: parse etc/passwd, group, shadow and shells, compare.
func BenchmarkNoopObserve20Users(b *testing.B) { benchObserve(b, false) }

// BenchmarkNoopObserve20UsersWithKeys adds each user's authorized_keys
// (walked without following links, read and compared).
func BenchmarkNoopObserve20UsersWithKeys(b *testing.B) { benchObserve(b, true) }

const awkProg = `BEGIN{FS=":"} FNR==NR{if($1 ~ /^u[0-9][0-9]$/) print; next} {n=split($4,m,","); for(i=1;i<=n;i++) if(m[i] ~ /^u[0-9][0-9]$/) print m[i], $1}`

// awkFloor is the floor the no-op observe is measured against: what a
// getent-style lookup of the same 20 users costs from the outside, one
// exec of awk that reads the root's etc/passwd and etc/group and prints
// each user's entry and the groups that list them (getent itself cannot
// be pointed at another root).
func awkFloor(b *testing.B, env *providers.Env) {
	out, err := exec.Command("awk", awkProg, filepath.Join(env.Root, "etc/passwd"), filepath.Join(env.Root, "etc/group")).Output()
	if err != nil || strings.Count(string(out), "\n") != 2*benchUsers {
		b.Fatalf("awk: %v\n%s", err, out)
	}
}

// BenchmarkAwkFloor20Users is the awk floor alone.
func BenchmarkAwkFloor20Users(b *testing.B) {
	env, _ := benchRoot(b, benchSection(false))
	b.ResetTimer()
	for b.Loop() {
		awkFloor(b, env)
	}
}

// BenchmarkObserveVsAwk20Users alternates a no-op Observe and Plan of the
// 20 users (with their authorized keys) and the awk floor in the same
// loop, so that both see the same load on a shared machine, and reports
// each one's time per op and their ratio (observe/awk).
func BenchmarkObserveVsAwk20Users(b *testing.B) {
	raw := benchSection(true)
	env, spec := benchRoot(b, raw)
	p, ctx := New(), context.Background()
	var obsT, awkT time.Duration
	n := 0
	b.ResetTimer()
	for b.Loop() {
		t0 := time.Now()
		obs, err := p.Observe(ctx, env, spec)
		if err != nil {
			b.Fatal(err)
		}
		if ch, err := p.Plan(spec, obs); err != nil || len(ch) != 0 {
			b.Fatalf("not a no-op: %v %v", providertest.Lines(ch), err)
		}
		t1 := time.Now()
		awkFloor(b, env)
		obsT, awkT, n = obsT+t1.Sub(t0), awkT+time.Since(t1), n+1
	}
	b.ReportMetric(float64(obsT.Nanoseconds())/float64(n), "observe-ns/op")
	b.ReportMetric(float64(awkT.Nanoseconds())/float64(n), "awk-ns/op")
	b.ReportMetric(float64(obsT)/float64(awkT), "observe/awk")
}
