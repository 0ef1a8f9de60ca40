package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"

	"github.com/wuyan94zl/chart"
)

// metrics serves the hub's statistics in the Prometheus text format, to
// loopback clients only (a scraper on the same host; put the real one
// behind your own network rules). An application with a Prometheus
// registry registers chartprom.NewCollector(hub) instead (the
// github.com/wuyan94zl/chart/chartprom module, README "Metrics"): the demo
// lives in the library's own module, which takes no dependency, so it
// writes the same metrics by hand.
func (a *app) metrics(w http.ResponseWriter, r *http.Request) {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
		http.Error(w, "metrics are served to loopback clients only", http.StatusForbidden)
		return
	}
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	writeMetrics(w, a.hub.Stats())
}

// writeMetrics writes st as chartprom names its metrics.
func writeMetrics(w io.Writer, st chart.Stats) {
	metric := func(name, kind, help string) {
		fmt.Fprintf(w, "# HELP chart_%s %s\n# TYPE chart_%s %s\n", name, help, name, kind)
	}
	gauge := func(name, help string, v float64) {
		metric(name, "gauge", help)
		fmt.Fprintf(w, "chart_%s %s\n", name, strconv.FormatFloat(v, 'g', -1, 64))
	}
	counter := func(name, help string, v uint64) {
		metric(name, "counter", help)
		fmt.Fprintf(w, "chart_%s %d\n", name, v)
	}
	gauge("connections", "Open WebSocket connections.", float64(st.Connections))
	gauge("users_online", "Online uids.", float64(st.Users))
	gauge("channels", "Channels with at least one member.", float64(st.Channels))
	counter("messages_received_total", "Client messages accepted.", st.MessagesIn)
	counter("messages_delivered_total", "Messages queued to connections, one per recipient connection.", st.MessagesOut)
	metric("messages_refused_total", "counter", "Client messages refused, by error code.")
	st.Refusals.Each(func(code string, n uint64) {
		fmt.Fprintf(w, "chart_messages_refused_total{code=%q} %d\n", code, n)
	})
	metric("disconnects_total", "counter", "Connections ended, by reason.")
	st.DisconnectReasons.Each(func(reason string, n uint64) {
		fmt.Fprintf(w, "chart_disconnects_total{reason=%q} %d\n", reason, n)
	})
	gauge("send_queue_bytes", "Bytes waiting in send queues.", float64(st.QueuedBytes))
	metric("delivery_seconds", "histogram", "From a message accepted by the hub to written to a socket.")
	for _, b := range st.Delivery.Buckets {
		fmt.Fprintf(w, "chart_delivery_seconds_bucket{le=%q} %d\n", strconv.FormatFloat(b.Le.Seconds(), 'g', -1, 64), b.Count)
	}
	fmt.Fprintf(w, "chart_delivery_seconds_bucket{le=\"+Inf\"} %d\n", st.Delivery.Count)
	fmt.Fprintf(w, "chart_delivery_seconds_sum %s\nchart_delivery_seconds_count %d\n",
		strconv.FormatFloat(st.Delivery.Sum, 'g', -1, 64), st.Delivery.Count)
	counter("broker_errors_total", "Failed broker calls.", st.BrokerErrors)
}
