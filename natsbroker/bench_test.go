package natsbroker

import (
	"fmt"
	"sync"
	"testing"

	"github.com/wuyan94zl/chart"
)

// appendBatch appends batch with AppendBatch when s has it, else one entry
// at a time (what the hub does with Streams that take no batches).
func appendBatch(s chart.Streams, batch []chart.StreamAppend) {
	if bs, ok := s.(chart.BatchStreams); ok {
		bs.AppendBatch(batch)
		return
	}
	for i := range batch {
		a := &batch[i]
		a.Offset, a.Epoch, a.Err = s.Append(a.Stream, a.Data)
	}
}

// benchAppends appends batches of n entries of 100 bytes, spread over the
// streams in turn, until b.Loop ends, and reports appends per second.
func benchAppends(b *testing.B, s chart.Streams, streams []string, n int) {
	data := make([]byte, 100)
	batch := make([]chart.StreamAppend, n)
	k, total := 0, 0
	for b.Loop() {
		for i := range batch {
			batch[i] = chart.StreamAppend{Stream: streams[k%len(streams)], Data: data}
			k++
		}
		appendBatch(s, batch)
		for i := range batch {
			if batch[i].Err != nil {
				b.Fatal(batch[i].Err)
			}
		}
		total += n
	}
	b.ReportMetric(float64(total)/b.Elapsed().Seconds(), "appends/s")
}

func streamNames(n int) []string {
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("c:bench%d", i)
	}
	return names
}

// BenchmarkAppendBatch: batches of 1, 16 and 256 entries over 1 and 8
// streams, one batch at a time, on one broker.
func BenchmarkAppendBatch(b *testing.B) {
	srv := startNATS(b)
	for _, n := range []int{1, 16, 256} {
		for _, s := range []int{1, 8} {
			b.Run(fmt.Sprintf("batch=%d/streams=%d", n, s), func(b *testing.B) {
				bucket := fmt.Sprintf("bench_%d_%d", n, s)
				br := connectStreams(b, srv.url(), Options{Prefix: bucket, Bucket: bucket})
				benchAppends(b, br, streamNames(s), n)
			})
		}
	}
}

// BenchmarkAppendBatchFile: BenchmarkAppendBatch with the stream on disk
// (Options.FileStorage).
func BenchmarkAppendBatchFile(b *testing.B) {
	srv := startNATS(b)
	for _, n := range []int{1, 16, 256} {
		for _, s := range []int{1, 8} {
			b.Run(fmt.Sprintf("batch=%d/streams=%d", n, s), func(b *testing.B) {
				bucket := fmt.Sprintf("benchf_%d_%d", n, s)
				br := connectStreams(b, srv.url(), Options{Prefix: bucket, Bucket: bucket, FileStorage: true})
				benchAppends(b, br, streamNames(s), n)
			})
		}
	}
}

// BenchmarkAppend: one Append at a time to one stream.
func BenchmarkAppend(b *testing.B) {
	srv := startNATS(b)
	br := connectStreams(b, srv.url(), Options{Prefix: "bench_seq", Bucket: "bench_seq"})
	data := make([]byte, 100)
	for b.Loop() {
		if _, _, err := br.Append("c:seq", data); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "appends/s")
}

// BenchmarkAppendBatchContended: two brokers (two nodes), each appending
// batches of 16 entries to the same 8 streams at once, as the hubs of a
// cluster do with a busy channel.
func BenchmarkAppendBatchContended(b *testing.B) {
	srv := startNATS(b)
	opt := Options{Prefix: "bench_cont", Bucket: "bench_cont"}
	brokers := []*Broker{connectStreams(b, srv.url(), opt), connectStreams(b, srv.url(), opt)}
	streams := streamNames(8)
	data := make([]byte, 100)
	const n = 16
	total := 0
	for b.Loop() {
		var wg sync.WaitGroup
		errs := make([]error, len(brokers))
		for i, br := range brokers {
			wg.Go(func() {
				batch := make([]chart.StreamAppend, n)
				for j := range batch {
					batch[j] = chart.StreamAppend{Stream: streams[j%len(streams)], Data: data}
				}
				appendBatch(br, batch)
				for j := range batch {
					if batch[j].Err != nil {
						errs[i] = batch[j].Err
					}
				}
			})
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				b.Fatal(err)
			}
		}
		total += n * len(brokers)
	}
	b.ReportMetric(float64(total)/b.Elapsed().Seconds(), "appends/s")
}
