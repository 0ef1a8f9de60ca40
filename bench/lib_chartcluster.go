package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/wuyan94zl/chart"
	"github.com/wuyan94zl/chart/natsbroker"
	"github.com/wuyan94zl/chart/redisbroker"
)

// The chart-cluster peer is chart as a node of a cluster: the same adapter
// as chart (lib_chart.go), on a DefaultHub made with the broker named by
// BENCH_BROKER (a redis:// or nats:// URL) with default broker options.
// Only the -cluster workloads use it.
func init() {
	register(&libSpec{
		name:     "chart-cluster",
		settings: "as chart, on chart.DefaultHub = chart.New(chart.Config{Broker: b}) with b from redisbroker.Dial(url, redisbroker.Options{}) or natsbroker.Connect(url, natsbroker.Options{})",
		server:   newChartClusterLib,
		client:   chartProto,
	})
}

// newChartClusterLib connects to the broker, makes DefaultHub a node of
// the cluster and returns the chart adapter.
func newChartClusterLib(workload string) (serverLib, error) {
	url := os.Getenv("BENCH_BROKER")
	var b chart.Broker
	var err error
	switch {
	case strings.HasPrefix(url, "redis://"):
		b, err = redisbroker.Dial(url, redisbroker.Options{})
	case strings.HasPrefix(url, "nats://"):
		b, err = natsbroker.Connect(url, natsbroker.Options{})
	default:
		return nil, fmt.Errorf("BENCH_BROKER=%q: want a redis:// or nats:// URL", url)
	}
	if err != nil {
		return nil, err
	}
	chart.DefaultHub = chart.New(chart.Config{Broker: b})
	return newChartLib(workload)
}

// sendDirect sends payload from c to user to as a chart direct message:
// {"to_user_id":to,"content":payload,"type":3}.
func sendDirect(c *client, to int64, payload []byte) error {
	b := append(c.wbuf[:0], `{"to_user_id":`...)
	b = strconv.AppendInt(b, to, 10)
	b = append(b, `,"content":"`...)
	b = append(b, payload...)
	c.wbuf = append(b, `","type":3}`...)
	return c.ws.writeText(c.wbuf)
}
