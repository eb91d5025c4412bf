package commands

import (
	"context"
	"strconv"
	"testing"
)

// BenchmarkRun runs `true` bare; BenchmarkRecordedRun runs it the way the
// provider does, with its two fsync'd writes of the results file (before
// the exec and after). Compare the two in one run for the cost of the
// once-only record.
func BenchmarkRun(b *testing.B) {
	env := newEnvB(b)
	def := Def{Name: "t", Argv: []string{"true"}}
	for i := 0; i < b.N; i++ {
		if res := Run(context.Background(), env, def, nil); res.State != Succeeded {
			b.Fatal(res)
		}
	}
}

func BenchmarkRecordedRun(b *testing.B) {
	env := newEnvB(b)
	st := newStore(env.StateDir, 0)
	def := Def{Name: "t", Argv: []string{"true"}}
	for i := 0; i < b.N; i++ {
		if _, err := execute(context.Background(), env, st, runData{id: "b" + strconv.Itoa(i), origin: "twin", def: def}); err != nil {
			b.Fatal(err)
		}
	}
}
