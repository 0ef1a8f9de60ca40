package main

import (
	"math/bits"
	"sync/atomic"
	"time"
)

// Latency histogram: log-linear buckets with 32 sub-buckets per power of
// two, so a reported quantile is within about 3% of the true value. Values
// are nanoseconds; negative values are recorded as zero.
const (
	histSubBits = 5
	histSub     = 1 << histSubBits
	histBuckets = (63-histSubBits+1)*histSub + histSub
	histShards  = 32
)

// histogram is a lock-free histogram sharded to keep thousands of client
// goroutines from contending on the same cache lines.
type histogram struct {
	shards [histShards]struct {
		b [histBuckets]atomic.Uint64
	}
}

// bucketOf returns the bucket index of v.
func bucketOf(v int64) int {
	if v < histSub {
		if v < 0 {
			return 0
		}
		return int(v)
	}
	msb := bits.Len64(uint64(v)) - 1
	return (msb-histSubBits+1)*histSub + int((uint64(v)>>(msb-histSubBits))&(histSub-1))
}

// bucketValue returns a representative value (the middle) of bucket i.
func bucketValue(i int) int64 {
	if i < histSub {
		return int64(i)
	}
	msb := i/histSub + histSubBits - 1
	m := int64(i % histSub)
	width := int64(1) << (msb - histSubBits)
	return (histSub+m)<<(msb-histSubBits) + width/2
}

// record adds one observation; shard is any small integer (e.g. the client
// index) used to spread writers.
func (h *histogram) record(shard int, v int64) {
	h.shards[shard%histShards].b[bucketOf(v)].Add(1)
}

// snapshot merges the shards into plain counts.
func (h *histogram) snapshot() []uint64 {
	out := make([]uint64, histBuckets)
	for s := range h.shards {
		for i := range out {
			out[i] += h.shards[s].b[i].Load()
		}
	}
	return out
}

// quantiles returns the total count and the requested quantiles (0..1).
func (h *histogram) quantiles(qs ...float64) (uint64, []time.Duration) {
	return countQuantiles(h.snapshot(), qs...)
}

// countQuantiles returns the total count and the requested quantiles of
// the bucket counts of a snapshot.
func countQuantiles(counts []uint64, qs ...float64) (uint64, []time.Duration) {
	var total uint64
	for _, c := range counts {
		total += c
	}
	res := make([]time.Duration, len(qs))
	if total == 0 {
		return 0, res
	}
	for qi, q := range qs {
		target := uint64(q * float64(total))
		if target >= total {
			target = total - 1
		}
		var seen uint64
		for i, c := range counts {
			seen += c
			if seen > target {
				res[qi] = time.Duration(bucketValue(i))
				break
			}
		}
	}
	return total, res
}

// summary returns the total count, the mean (of the buckets' middles) and
// the requested quantiles (0..1; 1 is the largest value's bucket).
func (h *histogram) summary(qs ...float64) (uint64, time.Duration, []time.Duration) {
	counts := h.snapshot()
	total, q := countQuantiles(counts, qs...)
	if total == 0 {
		return 0, 0, q
	}
	var sum float64
	for i, c := range counts {
		if c != 0 {
			sum += float64(c) * float64(bucketValue(i))
		}
	}
	return total, time.Duration(sum / float64(total)), q
}
