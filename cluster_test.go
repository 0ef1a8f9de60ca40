package chart_test

import (
	"testing"
	"time"

	"github.com/wuyan94zl/chart"
	"github.com/wuyan94zl/chart/charttest"
)

func TestMemoryBroker(t *testing.T) {
	var bus *chart.MemoryBus
	charttest.Suite{
		NewCluster: func(t *testing.T) func() chart.Broker {
			bus = chart.NewMemoryBus()
			bus.TTL = 600 * time.Millisecond
			return bus.Broker
		},
		Outage: func(t *testing.T) func() {
			bus.SetDown(true)
			return func() { bus.SetDown(false) }
		},
	}.Run(t)
}
