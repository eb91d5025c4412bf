package agent

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/twinlet/twinlet/reconciler"
)

// Metrics are the agent's Prometheus metrics, in a registry of their own.
type Metrics struct {
	reg            *prometheus.Registry
	reconciles     *prometheus.CounterVec
	duration       *prometheus.HistogramVec
	failed         *prometheus.GaugeVec
	connected      prometheus.Gauge
	reportLatency  prometheus.Histogram
	reportFailures prometheus.Counter
	methods        *prometheus.CounterVec
	outbox         prometheus.Gauge
}

// NewMetrics creates the metrics; queueLen is read at every scrape.
func NewMetrics(queueLen func() int) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	m.reconciles = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "twinlet_reconciles_total", Help: "Section reconciles by section, state and reason."},
		[]string{"section", "state", "reason"})
	m.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "twinlet_reconcile_duration_seconds", Help: "How long a section reconcile took.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 4, 10)}, []string{"section"})
	m.failed = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "twinlet_section_failed", Help: "1 when the section's last reconcile failed."}, []string{"section"})
	m.connected = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "twinlet_hub_connected", Help: "1 while connected to IoT Hub."})
	m.reportLatency = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "twinlet_reported_patch_seconds", Help: "Round trip of a reported-properties patch.",
		Buckets: prometheus.ExponentialBuckets(0.001, 4, 8)})
	m.reportFailures = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "twinlet_reported_patch_failures_total", Help: "Reported patches refused or failed."})
	m.methods = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "twinlet_direct_methods_total", Help: "Direct methods received."}, []string{"method"})
	m.outbox = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "twinlet_reported_patches_queued", Help: "Reported patches waiting for the hub (the outbox)."})
	queue := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "twinlet_queue_depth", Help: "Sections waiting to be reconciled."}, func() float64 { return float64(queueLen()) })
	m.reg.MustRegister(m.reconciles, m.duration, m.failed, m.connected, m.reportLatency, m.reportFailures, m.methods, m.outbox, queue,
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return m
}

// ObserveSection records a section result; use it as
// reconciler.Options.OnSection.
func (m *Metrics) ObserveSection(res *reconciler.SectionResult, took time.Duration) {
	m.reconciles.WithLabelValues(res.ID, res.Status.State, res.Status.Reason).Inc()
	m.duration.WithLabelValues(res.ID).Observe(took.Seconds())
	v := 0.0
	if res.Status.State == reconciler.StateFailed {
		v = 1
	}
	m.failed.WithLabelValues(res.ID).Set(v)
}

func (m *Metrics) setConnected(up bool) {
	if up {
		m.connected.Set(1)
	} else {
		m.connected.Set(0)
	}
}

// Handler serves the metrics.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}
