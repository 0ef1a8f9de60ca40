package chartprom_test

import (
	"fmt"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/wuyan94zl/chart"
	"github.com/wuyan94zl/chart/chartprom"
)

// The hub's metrics on /metrics, beside the WebSocket endpoint.
func Example() {
	hub := chart.New(chart.Config{})
	defer hub.Close()

	reg := prometheus.NewRegistry()
	reg.MustRegister(chartprom.NewCollector(hub))
	mux := http.NewServeMux()
	mux.Handle("/ws", hub) // with Config.Authenticate set
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	// http.ListenAndServe(":8888", mux)

	mfs, _ := reg.Gather() // what a scrape of /metrics reads
	for _, mf := range mfs {
		if mf.GetName() == "chart_connections" || mf.GetName() == "chart_messages_received_total" {
			m := mf.GetMetric()[0]
			fmt.Println(mf.GetName(), m.GetGauge().GetValue()+m.GetCounter().GetValue())
		}
	}
	// Output:
	// chart_connections 0
	// chart_messages_received_total 0
}
