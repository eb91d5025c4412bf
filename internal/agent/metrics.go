package agent

import (
	"bufio"
	"fmt"
	"math"
	"net/http"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/twinlet/twinlet/reconciler"
)

// Metrics are the agent's metrics, served in the Prometheus text format
// (version 0.0.4). They are a few counters, gauges and histograms kept
// here rather than in the Prometheus client library, whose package
// initialisation, registry and dependencies (protobuf among them) cost
// every twinlet command start-up time and the idle agent memory.
type Metrics struct {
	reconciles     *family
	duration       *family
	failed         *family
	connected      *family
	reportLatency  *family
	reportFailures *family
	methods        *family
	outbox         *family
	queueLen       func() int
	all            []*family
}

// NewMetrics creates the metrics; queueLen is read at every scrape.
func NewMetrics(queueLen func() int) *Metrics {
	m := &Metrics{queueLen: queueLen}
	add := func(f *family) *family { m.all = append(m.all, f); return f }
	m.reconciles = add(newFamily("twinlet_reconciles_total", "Section reconciles by section, state and reason.", "counter", nil, "section", "state", "reason"))
	m.duration = add(newFamily("twinlet_reconcile_duration_seconds", "How long a section reconcile took.", "histogram", exponential(0.0005, 4, 10), "section"))
	m.failed = add(newFamily("twinlet_section_failed", "1 when the section's last reconcile failed.", "gauge", nil, "section"))
	m.connected = add(newFamily("twinlet_hub_connected", "1 while connected to IoT Hub.", "gauge", nil))
	m.reportLatency = add(newFamily("twinlet_reported_patch_seconds", "Round trip of a reported-properties patch.", "histogram", exponential(0.001, 4, 8)))
	m.reportFailures = add(newFamily("twinlet_reported_patch_failures_total", "Reported patches refused or failed.", "counter", nil))
	m.methods = add(newFamily("twinlet_direct_methods_total", "Direct methods received.", "counter", nil, "method"))
	m.outbox = add(newFamily("twinlet_reported_patches_queued", "Reported patches waiting for the hub (the outbox).", "gauge", nil))
	// Unlabelled series exist from the start, as with the client library.
	m.connected.with().set(0)
	m.reportLatency.with()
	m.reportFailures.with()
	m.outbox.with().set(0)
	return m
}

// ObserveSection records a section result; use it as
// reconciler.Options.OnSection.
func (m *Metrics) ObserveSection(res *reconciler.SectionResult, took time.Duration) {
	m.reconciles.with(res.ID, res.Status.State, res.Status.Reason).add(1)
	m.duration.with(res.ID).observe(took.Seconds())
	v := 0.0
	if res.Status.State == reconciler.StateFailed {
		v = 1
	}
	m.failed.with(res.ID).set(v)
}

func (m *Metrics) setConnected(up bool) {
	v := 0.0
	if up {
		v = 1
	}
	m.connected.with().set(v)
}

// Handler serves the metrics.
func (m *Metrics) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		bw := bufio.NewWriter(w)
		for _, f := range m.all {
			f.write(bw)
		}
		gauge := func(name, help string, v float64) {
			fmt.Fprintf(bw, "# HELP %s %s\n# TYPE %s gauge\n%s %s\n", name, help, name, name, num(v))
		}
		gauge("twinlet_queue_depth", "Sections waiting to be reconciled.", float64(m.queueLen()))
		gauge("go_goroutines", "Number of goroutines that currently exist.", float64(runtime.NumGoroutine()))
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		gauge("go_memstats_heap_alloc_bytes", "Number of heap bytes allocated and still in use.", float64(ms.HeapAlloc))
		gauge("go_memstats_sys_bytes", "Number of bytes obtained from the system.", float64(ms.Sys))
		if rss, ok := residentBytes(); ok {
			gauge("process_resident_memory_bytes", "Resident memory size in bytes.", rss)
		}
		bw.Flush()
	})
}

// residentBytes reads the resident set size from /proc/self/statm.
func residentBytes() (float64, bool) {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0, false
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0, false
	}
	pages, err := strconv.ParseFloat(f[1], 64)
	if err != nil {
		return 0, false
	}
	return pages * float64(os.Getpagesize()), true
}

// family is one metric name with its labelled series.
type family struct {
	name, help, kind string
	labels           []string
	buckets          []float64 // histograms

	mu     sync.Mutex
	series map[string]*series
}

type series struct {
	labels []string
	value  float64  // counter, gauge
	counts []uint64 // histogram, per bucket (not cumulative)
	sum    float64  // histogram
	count  uint64   // histogram
	f      *family  // for its lock
}

func newFamily(name, help, kind string, buckets []float64, labels ...string) *family {
	return &family{name: name, help: help, kind: kind, labels: labels, buckets: buckets, series: map[string]*series{}}
}

func exponential(start, factor float64, n int) []float64 {
	out := make([]float64, n)
	for i := range out {
		out[i] = start
		start *= factor
	}
	return out
}

// with returns the series of the label values, creating it.
func (f *family) with(values ...string) *series {
	key := strings.Join(values, "\xff")
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.series[key]
	if s == nil {
		s = &series{labels: append([]string(nil), values...), f: f}
		if f.kind == "histogram" {
			s.counts = make([]uint64, len(f.buckets))
		}
		f.series[key] = s
	}
	return s
}

// WithLabelValues is with, under the client library's name.
func (f *family) WithLabelValues(values ...string) *series { return f.with(values...) }

func (s *series) add(v float64) {
	s.f.mu.Lock()
	s.value += v
	s.f.mu.Unlock()
}

// Inc adds one to a counter.
func (s *series) Inc() { s.add(1) }

func (s *series) set(v float64) {
	s.f.mu.Lock()
	s.value = v
	s.f.mu.Unlock()
}

// Set sets a gauge.
func (s *series) Set(v float64) { s.set(v) }

func (s *series) observe(v float64) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	for i, b := range s.f.buckets {
		if v <= b {
			s.counts[i]++
			break
		}
	}
	s.sum += v
	s.count++
}

// Observe adds a value to a histogram.
func (s *series) Observe(v float64) { s.observe(v) }

// Inc, Set and Observe on an unlabelled family act on its one series.
func (f *family) Inc()              { f.with().Inc() }
func (f *family) Set(v float64)     { f.with().Set(v) }
func (f *family) Observe(v float64) { f.with().Observe(v) }

// write writes the family in the text format: series sorted by labels,
// label pairs sorted by name, as the client library writes them.
func (f *family) write(w *bufio.Writer) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.series) == 0 {
		return
	}
	fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s %s\n", f.name, f.help, f.name, f.kind)
	keys := make([]string, 0, len(f.series))
	for k := range f.series {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	order := make([]int, len(f.labels))
	for i := range order {
		order[i] = i
	}
	sort.Slice(order, func(a, b int) bool { return f.labels[order[a]] < f.labels[order[b]] })
	for _, k := range keys {
		s := f.series[k]
		var pairs []string
		for _, i := range order {
			pairs = append(pairs, f.labels[i]+`="`+labelEscaper.Replace(s.labels[i])+`"`)
		}
		if f.kind != "histogram" {
			fmt.Fprintf(w, "%s%s %s\n", f.name, braces(pairs), num(s.value))
			continue
		}
		var cum uint64
		for i, b := range f.buckets {
			cum += s.counts[i]
			fmt.Fprintf(w, "%s_bucket%s %d\n", f.name, braces(append(pairs[:len(pairs):len(pairs)], `le="`+num(b)+`"`)), cum)
		}
		fmt.Fprintf(w, "%s_bucket%s %d\n", f.name, braces(append(pairs[:len(pairs):len(pairs)], `le="+Inf"`)), s.count)
		fmt.Fprintf(w, "%s_sum%s %s\n", f.name, braces(pairs), num(s.sum))
		fmt.Fprintf(w, "%s_count%s %d\n", f.name, braces(pairs), s.count)
	}
}

// labelEscaper escapes a label value as the text format wants.
var labelEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)

func braces(pairs []string) string {
	if len(pairs) == 0 {
		return ""
	}
	return "{" + strings.Join(pairs, ",") + "}"
}

func num(v float64) string {
	switch {
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}
