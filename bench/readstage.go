package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// Read stage (rooms): how long a client's message takes from the sending
// client's send call to the moment the server's code has it in hand (the
// peer's message callback, or the gorilla hub's ReadMessage return): the
// client's write, the kernel, and the server's read path (for chart, its
// poller and reader goroutine; for the others, a reader goroutine per
// connection). Every peer's server process records it the same way, from
// the payload's timestamp, and serves it on /ctl/read; the driver takes it
// before and after a rooms measurement. Set beside the whole latency, it
// tells the read path from the fan-out and write path.

// readHist holds the server process's read-stage observations.
var readHist histogram

// noteRead records the read stage of the first rooms payload in s.
func noteRead(s string) {
	i := strings.Index(s, "@@R")
	if i < 0 {
		return
	}
	h, _, ok := nextPayload([]byte(s[i:min(len(s), i+64)]))
	if !ok || h.kind != kindRoom {
		return
	}
	readHist.record(int(h.sender), time.Now().UnixNano()-h.ts)
}

// handleReadCtl serves the read-stage histogram's bucket counts.
func handleReadCtl(mux *http.ServeMux) {
	mux.HandleFunc("/ctl/read", func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(readHist.snapshot())
	})
}

// readCounts adds up the read-stage bucket counts of every process of the
// set; nil when one could not be asked.
func (set serverSet) readCounts() []uint64 {
	var sum []uint64
	for _, p := range set.procs {
		b, err := p.ctl("/ctl/read")
		if err != nil {
			return nil
		}
		var c []uint64
		if json.Unmarshal(b, &c) != nil || len(c) != histBuckets {
			return nil
		}
		if sum == nil {
			sum = c
			continue
		}
		for i := range sum {
			sum[i] += c[i]
		}
	}
	return sum
}

// readStage is the read stage over one measurement.
type readStage struct {
	Count  uint64  `json:"count"`
	P50us  float64 `json:"p50_us"`
	P99us  float64 `json:"p99_us"`
	MeanUs float64 `json:"mean_us"` // of the buckets' middles
}

// readDiff returns the read stage between two snapshots; nil when either
// is missing or nothing was recorded.
func readDiff(before, after []uint64) *readStage {
	if before == nil || after == nil {
		return nil
	}
	d := make([]uint64, len(after))
	var sum float64
	for i := range after {
		d[i] = after[i] - before[i]
		sum += float64(d[i]) * float64(bucketValue(i))
	}
	n, q := countQuantiles(d, 0.5, 0.99)
	if n == 0 {
		return nil
	}
	us := func(d time.Duration) float64 { return float64(d) / 1e3 }
	return &readStage{Count: n, P50us: us(q[0]), P99us: us(q[1]), MeanUs: sum / float64(n) / 1e3}
}

// readLog formats the read stage for the progress log.
func readLog(r *readStage) string {
	if r == nil {
		return ""
	}
	return fmt.Sprintf("  read p50=%.0fus p99=%.0fus mean=%.0fus", r.P50us, r.P99us, r.MeanUs)
}

// readMarkdown renders the rooms read stage of every peer beside its
// whole latency.
func readMarkdown(r *report) string {
	var rows strings.Builder
	for _, f := range r.Rooms {
		if f.Read == nil || f.Kind != "" {
			continue
		}
		fmt.Fprintf(&rows, "| %s | %g | %s | %s | %s | %s | %s | %s | %s |\n", f.Lib, f.PerUserRate, groupDigits(int64(f.Read.Count)),
			fmtUs(f.Read.P50us), fmtUs(f.Read.P99us), fmtUs(f.Read.MeanUs), fmtUs(f.P50us), fmtUs(f.P99us), fmtUs(f.MeanUs))
	}
	if rows.Len() == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString("### Rooms: the read path\n\n")
	b.WriteString("Every peer's server records, for each client message, the time from the sending client's send call (the payload's timestamp) to the moment the server's code has the message in hand: chart's `SendMessage` callback (after it queued the message on the room's connections), melody's `HandleMessage`, centrifuge's `OnPublish`, the gorilla hub's `ReadMessage` return. This is the client's write, the kernel and the server's read path (chart: its poller and a reader goroutine per readable connection; the others: a reader goroutine parked per connection), set beside the whole send → received latency of the same run. Buckets within about 3%; the mean is of the buckets' middles.\n\n")
	b.WriteString("| peer | msg/s/user | messages | send → read p50 | p99 | mean | send → received p50 | p99 | mean |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	b.WriteString(rows.String())
	b.WriteString("\n")
	return b.String()
}
