// Package chartprom exposes a chart Hub's statistics (chart.Hub.Stats) as
// Prometheus metrics.
//
//	reg := prometheus.NewRegistry()
//	reg.MustRegister(chartprom.NewCollector(hub))
//	http.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
//
// The Collector reads Stats once per scrape and reports it as constant
// metrics: the hub keeps its counters whether or not anyone scrapes, and
// pays nothing more for metrics. Every metric and label is listed in the
// README's "Metrics" section; the label values are those of
// chart.Refusals.Each (code) and chart.DisconnectReasons.Each (reason).
package chartprom

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/wuyan94zl/chart"
)

// Options adjust the metrics' names and labels.
type Options struct {
	// Namespace is the metrics' prefix: "chart" (chart_connections, ...)
	// when empty.
	Namespace string
	// ConstLabels are added to every metric: {"node": "a"} tells the
	// nodes of a cluster apart when they share a registry.
	ConstLabels prometheus.Labels
}

// Collector is a prometheus.Collector of one hub.
type Collector struct {
	hub *chart.Hub

	connections, users, channels                   *prometheus.Desc
	received, delivered, dropped, refused          *prometheus.Desc
	disconnects                                    *prometheus.Desc
	queueMessages, queueBytes, queueDepth, pending *prometheus.Desc
	delivery                                       *prometheus.Desc
	brokerErrors, holes                            *prometheus.Desc

	mu        sync.Mutex
	received0 uint64 // the most MessagesIn reported: see Collect
}

// NewCollector returns a Collector of h with the default names (chart_...).
func NewCollector(h *chart.Hub) *Collector { return New(h, Options{}) }

// New returns a Collector of h with the names and labels of o.
func New(h *chart.Hub, o Options) *Collector {
	ns := o.Namespace
	if ns == "" {
		ns = "chart"
	}
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(ns, "", name), help, labels, o.ConstLabels)
	}
	return &Collector{
		hub:           h,
		connections:   d("connections", "Open WebSocket connections."),
		users:         d("users_online", "Users (uids) with at least one connection to this node."),
		channels:      d("channels", "Channels with at least one member on this node."),
		received:      d("messages_received_total", "Client messages accepted."),
		delivered:     d("messages_delivered_total", "Messages queued to connections, one per recipient connection."),
		dropped:       d("messages_dropped_total", "Messages discarded for a full send queue (SlowConsumerDropOldest) or a closing connection."),
		refused:       d("messages_refused_total", "Client messages refused, by the code of the error frame the client got.", "code"),
		disconnects:   d("disconnects_total", "Connections ended, by reason.", "reason"),
		queueMessages: d("send_queue_messages", "Frames waiting in send queues."),
		queueBytes:    d("send_queue_bytes", "Bytes of the frames waiting in send queues."),
		queueDepth:    d("send_queue_max_depth", "The longest send queue, rounded down to a power of two."),
		pending:       d("pending_bytes", "Memory held by inbound messages being read (MaxPendingBytes)."),
		delivery:      d("delivery_seconds", "Delivery latency: from the hub accepting a message to a connection's writer writing it to the socket, per recipient connection."),
		brokerErrors:  d("broker_errors_total", "Failed broker calls."),
		holes:         d("stream_holes_total", "Times this node stopped waiting for a missing offset of a stream the broker keeps."),
	}
}

// Describe sends the descriptions of every metric.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.connections, c.users, c.channels, c.received, c.delivered,
		c.dropped, c.refused, c.disconnects, c.queueMessages, c.queueBytes, c.queueDepth, c.pending,
		c.delivery, c.brokerErrors, c.holes} {
		ch <- d
	}
}

// Collect reads the hub's Stats and sends them as metrics.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	st := c.hub.Stats()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	// The hub counts a client message before delivering it and takes it
	// back when it is refused on its way (not joined, say): a scrape in
	// between must not make the counter go down at the next one, which
	// Prometheus would take for a restart.
	c.mu.Lock()
	c.received0 = max(c.received0, st.MessagesIn)
	received := c.received0
	c.mu.Unlock()

	gauge(c.connections, float64(st.Connections))
	gauge(c.users, float64(st.Users))
	gauge(c.channels, float64(st.Channels))
	counter(c.received, received)
	counter(c.delivered, st.MessagesOut)
	counter(c.dropped, st.Dropped)
	st.Refusals.Each(func(code string, n uint64) { counter(c.refused, n, code) })
	st.DisconnectReasons.Each(func(reason string, n uint64) { counter(c.disconnects, n, reason) })
	gauge(c.queueMessages, float64(st.QueuedMessages))
	gauge(c.queueBytes, float64(st.QueuedBytes))
	gauge(c.queueDepth, float64(st.MaxQueueDepth))
	gauge(c.pending, float64(st.PendingBytes))
	buckets := make(map[float64]uint64, len(st.Delivery.Buckets))
	for _, b := range st.Delivery.Buckets {
		buckets[b.Le.Seconds()] = b.Count
	}
	ch <- prometheus.MustNewConstHistogram(c.delivery, st.Delivery.Count, st.Delivery.Sum, buckets)
	counter(c.brokerErrors, st.BrokerErrors)
	counter(c.holes, st.Holes)
}
