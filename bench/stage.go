package main

import (
	"encoding/json"
	"errors"
	"strings"
	"time"

	"github.com/wuyan94zl/chart"
)

// Stage timing. chart measures, per recipient connection, the time from
// the moment the hub accepted a message to the moment the connection's
// writer wrote it (Hub.Stats().Delivery, a cumulative histogram with
// Prometheus-style buckets). The server process serves it on
// /ctl/delivery for peers that have it (deliveryReporter); the driver
// takes it before and after a measurement and keeps the difference, to
// set beside the clients' publish-to-receive latency of the same
// deliveries: what the hub holds a message back, and what is left to the
// kernel and the client.

// deliveryReporter is a serverLib that measures its own accepted-to-written
// latency (chart).
type deliveryReporter interface {
	delivery() chart.Latency
}

// errNoDelivery is returned by delivery for a server without
// /ctl/delivery (every peer but chart).
var errNoDelivery = errors.New("no delivery histogram")

// delivery fetches the server's accepted-to-written histogram.
func (s *serverProc) delivery() (chart.Latency, error) {
	var l chart.Latency
	b, err := s.ctl("/ctl/delivery")
	if err != nil {
		if strings.Contains(err.Error(), "404") {
			return l, errNoDelivery
		}
		return l, err
	}
	err = json.Unmarshal(b, &l)
	return l, err
}

// delivery adds up the histograms of every process of the set; ok is false
// when a process has none (not chart) or could not be asked.
func (set serverSet) delivery() (l chart.Latency, ok bool) {
	for i, p := range set.procs {
		d, err := p.delivery()
		if err != nil {
			return l, false
		}
		if i == 0 {
			l = d
			continue
		}
		l.Count += d.Count
		l.Sum += d.Sum
		for k := range l.Buckets {
			l.Buckets[k].Count += d.Buckets[k].Count
		}
	}
	return l, true
}

// latencyDiff is what a histogram gained from before to after.
func latencyDiff(after, before chart.Latency) chart.Latency {
	d := after
	d.Count -= before.Count
	d.Sum -= before.Sum
	for k := range d.Buckets {
		d.Buckets[k].Count -= before.Buckets[k].Count
	}
	return d
}

// latencyQuantile estimates quantile q (0..1) of l by linear interpolation
// inside the bucket that holds it (buckets go 100 µs, 250 µs, 500 µs,
// 1 ms ... 10 s, so the estimate is only as good as the bucket is
// narrow); past the last bucket it returns the last bound.
func latencyQuantile(l chart.Latency, q float64) time.Duration {
	if l.Count == 0 {
		return 0
	}
	target := q * float64(l.Count)
	var lo time.Duration
	var below uint64
	for _, b := range l.Buckets {
		if float64(b.Count) >= target && b.Count > below {
			frac := (target - float64(below)) / float64(b.Count-below)
			return lo + time.Duration(frac*float64(b.Le-lo))
		}
		lo, below = b.Le, b.Count
	}
	return lo
}

// hubStage is chart's accepted-to-written latency over one measurement.
type hubStage struct {
	Count  uint64  `json:"count"` // deliveries observed (one per recipient connection)
	P50us  float64 `json:"p50_us"`
	P99us  float64 `json:"p99_us"`
	MeanUs float64 `json:"mean_us"` // exact: the histogram's sum ÷ count
}

// stageMeter takes the hub's histogram at the start of a measurement.
type stageMeter struct {
	set    serverSet
	before chart.Latency
	ok     bool
}

// startStage begins measuring the hub stage of set's servers; it does
// nothing for peers without a delivery histogram.
func startStage(set serverSet) *stageMeter {
	m := &stageMeter{set: set}
	m.before, m.ok = set.delivery()
	return m
}

// stop returns the hub stage since startStage, or nil for peers without
// a delivery histogram.
func (m *stageMeter) stop() *hubStage {
	if !m.ok {
		return nil
	}
	after, ok := m.set.delivery()
	if !ok {
		return nil
	}
	d := latencyDiff(after, m.before)
	st := &hubStage{Count: d.Count}
	if d.Count > 0 {
		st.P50us, st.P99us = us(latencyQuantile(d, 0.5)), us(latencyQuantile(d, 0.99))
		st.MeanUs = d.Sum / float64(d.Count) * 1e6
	}
	return st
}
