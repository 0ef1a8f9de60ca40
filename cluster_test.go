package chart_test

import (
	"errors"
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

// TestCloseIsAbrupt: Close drops every connection at once and runs no
// LogoutServer, as a crash would; afterwards calls fail with ErrHubClosed.
func TestCloseIsAbrupt(t *testing.T) {
	rec := charttest.NewRecorder()
	s := charttest.Start(t, chart.Config{}, rec)
	c := s.Login(t, rec, 1)
	s.Kill()
	c.WaitClosed()
	select {
	case uid := <-rec.Logouts:
		t.Fatalf("LogoutServer(%d) after Close", uid)
	default:
	}
	if err := s.Hub.JoinChannelIds(1, "x"); !errors.Is(err, chart.ErrHubClosed) {
		t.Fatalf("JoinChannelIds after Close = %v", err)
	}
}
