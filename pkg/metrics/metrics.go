// Package metrics exposes sindrid's Prometheus metrics: how long instances
// take to become ready, instances and images by status, disk space, the
// configured limits and their use, HTTP requests, and in a fleet the
// images copied onto this host.
package metrics

import (
	"context"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/sindri-db/sindri/pkg/engine"
)

// Metrics holds the registry and the metrics sindrid observes.
type Metrics struct {
	registry   *prometheus.Registry
	cloneReady prometheus.Histogram
	createStep *prometheus.HistogramVec
	requests   *prometheus.CounterVec

	replications      *prometheus.CounterVec
	replicationBytes  prometheus.Counter
	replicationTime   prometheus.Histogram
	awaitingReplicate prometheus.Gauge
}

// New registers the metrics; status is read at each scrape.
func New(status func(context.Context) (engine.Status, error)) *Metrics {
	m := &Metrics{
		registry: prometheus.NewRegistry(),
		cloneReady: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "sindri_instance_ready_seconds",
			Help:    "Time from POST /instances to an instance that accepts connections.",
			Buckets: []float64{0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2, 5, 10},
		}),
		createStep: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "sindri_instance_create_step_seconds",
			Help:    "Time each step of an instance creation took: recorded (quota check and row), credentials, port, cloned, configured, started, accepting (sindri's own login), ready (client roles set up).",
			Buckets: []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5},
		}, []string{"step"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sindri_http_requests_total",
			Help: "HTTP requests by method and status code.",
		}, []string{"method", "code"}),
		replications: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sindri_image_replications_total",
			Help: "In a fleet, receives of another host's image onto this host by result: ok (a copy received and checked), failed (tried again after a backoff).",
		}, []string{"result"}),
		replicationBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sindri_image_replication_bytes_total",
			Help: "In a fleet, bytes of image streams this host received from other hosts, those of failed receives included.",
		}),
		replicationTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "sindri_image_replication_seconds",
			Help:    "In a fleet, how long each receive of an image onto this host took that ended with a checked copy.",
			Buckets: []float64{0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600},
		}),
		awaitingReplicate: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sindri_images_awaiting_replication",
			Help: "In a fleet, images ready on another host whose copy on this host is not ready yet, as the replicator's last pass (every 5 s) found them.",
		}),
	}
	// Both results from the start, so that a rate of failures is defined
	// before the first one.
	m.replications.WithLabelValues("ok")
	m.replications.WithLabelValues("failed")
	m.registry.MustRegister(m.cloneReady, m.createStep, m.requests,
		m.replications, m.replicationBytes, m.replicationTime, m.awaitingReplicate, &statusCollector{status: status},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Handler serves the metrics in Prometheus's text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{})
}

// ObserveInstanceReady records one instance creation's duration.
func (m *Metrics) ObserveInstanceReady(d time.Duration) { m.cloneReady.Observe(d.Seconds()) }

// ObserveCreateStep records how long one step of a creation took.
func (m *Metrics) ObserveCreateStep(step string, d time.Duration) {
	m.createStep.WithLabelValues(step).Observe(d.Seconds())
}

// ObserveRequest counts one HTTP request.
func (m *Metrics) ObserveRequest(method string, status int) {
	m.requests.WithLabelValues(method, strconv.Itoa(status)).Inc()
}

// ObserveReplication records one receive of an image from another host
// (engine.ReplicationObserver).
func (m *Metrics) ObserveReplication(ok bool, bytes int64, d time.Duration) {
	m.replicationBytes.Add(float64(bytes))
	if !ok {
		m.replications.WithLabelValues("failed").Inc()
		return
	}
	m.replications.WithLabelValues("ok").Inc()
	m.replicationTime.Observe(d.Seconds())
}

// SetImagesAwaitingReplication records how many images wait for their
// copy on this host (engine.ReplicationObserver).
func (m *Metrics) SetImagesAwaitingReplication(n int) { m.awaitingReplicate.Set(float64(n)) }

var _ engine.ReplicationObserver = (*Metrics)(nil)

var (
	instancesDesc      = prometheus.NewDesc("sindri_instances", "Instances by status (in a fleet, this host's).", []string{"status"}, nil)
	fleetInstancesDesc = prometheus.NewDesc("sindri_fleet_instances",
		"In a fleet, the instances of every host by status, those of a host that is down as unavailable.", []string{"status"}, nil)
	imagesDesc = prometheus.NewDesc("sindri_images", "Images by status.", []string{"status"}, nil)
	freeDesc   = prometheus.NewDesc("sindri_disk_free_bytes", "Free bytes on the storage filesystem.", nil, nil)
	totalDesc  = prometheus.NewDesc("sindri_disk_total_bytes", "Size of the storage filesystem.", nil, nil)
	limitDesc  = prometheus.NewDesc("sindri_limit",
		"Each limit of [limits] that is set, by its key (bytes for backups_total_bytes and disk_reserve).", []string{"name"}, nil)
	lagBytesDesc = prometheus.NewDesc("sindri_source_lag_bytes",
		"How far a replica-mode source's standby is behind the source, in bytes of WAL: from the end the source last reported to what the standby has replayed.", []string{"source"}, nil)
	lagSecondsDesc = prometheus.NewDesc("sindri_source_lag_seconds",
		"How far a replica-mode source's standby is behind the source, in seconds since the last transaction it replayed (0 when it has replayed all it received).", []string{"source"}, nil)
	limitUsedDesc = prometheus.NewDesc("sindri_limit_used",
		"What each limit of [limits] holds, by its key: for a per-user limit, the most any one user has. The disk reserve's is sindri_disk_free_bytes.", []string{"name"}, nil)
)

// statusCollector reads the engine's figures at scrape time.
type statusCollector struct {
	status func(context.Context) (engine.Status, error)
}

func (c *statusCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- instancesDesc
	ch <- fleetInstancesDesc
	ch <- imagesDesc
	ch <- freeDesc
	ch <- totalDesc
	ch <- limitDesc
	ch <- limitUsedDesc
	ch <- lagBytesDesc
	ch <- lagSecondsDesc
}

func (c *statusCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := c.status(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(instancesDesc, err)
		return
	}
	for _, s := range []string{"creating", "running", "stopped", "failed", "destroying", "resetting"} {
		ch <- prometheus.MustNewConstMetric(instancesDesc, prometheus.GaugeValue, float64(st.InstancesByStatus[s]), s)
	}
	if st.FleetInstancesByStatus != nil {
		for _, s := range []string{"creating", "running", "stopped", "failed", "destroying", "resetting", "unavailable"} {
			ch <- prometheus.MustNewConstMetric(fleetInstancesDesc, prometheus.GaugeValue, float64(st.FleetInstancesByStatus[s]), s)
		}
	}
	for _, s := range []string{"pending", "finalising", "ready", "failed", "destroying"} {
		ch <- prometheus.MustNewConstMetric(imagesDesc, prometheus.GaugeValue, float64(st.ImagesByStatus[s]), s)
	}
	ch <- prometheus.MustNewConstMetric(freeDesc, prometheus.GaugeValue, float64(st.FreeBytes))
	ch <- prometheus.MustNewConstMetric(totalDesc, prometheus.GaugeValue, float64(st.TotalBytes))
	if st.DiskReserveBytes > 0 {
		ch <- prometheus.MustNewConstMetric(limitDesc, prometheus.GaugeValue, float64(st.DiskReserveBytes), "disk_reserve")
	}
	for _, l := range st.Limits {
		if l.Limit > 0 {
			ch <- prometheus.MustNewConstMetric(limitDesc, prometheus.GaugeValue, float64(l.Limit), l.Name)
		}
		ch <- prometheus.MustNewConstMetric(limitUsedDesc, prometheus.GaugeValue, float64(l.Used), l.Name)
	}
	for _, s := range st.Standbys {
		if s.LagBytes != nil {
			ch <- prometheus.MustNewConstMetric(lagBytesDesc, prometheus.GaugeValue, float64(*s.LagBytes), s.Source)
		}
		if s.LagSeconds != nil {
			ch <- prometheus.MustNewConstMetric(lagSecondsDesc, prometheus.GaugeValue, *s.LagSeconds, s.Source)
		}
	}
}
