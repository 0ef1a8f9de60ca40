package chart

import (
	"encoding/binary"
	"time"
)

// Delivery latency (Stats.Delivery) is measured from the moment the hub
// accepted a message to the moment a connection's writer wrote it. The
// accepted time travels with the frame, which all recipients share: a
// message frame is allocated with stampLen bytes of capacity beyond its
// length, holding the time. Nothing writes or reads past a frame's length
// but stampedFrame and frameStamp (writev sends len bytes), so the stamp
// costs no copy and no field anywhere. A frame without that capacity, or
// with a zero there (every other frame: control frames, error frames,
// replays), has no stamp and is not observed.

const stampLen = 8

// monoBase anchors monotime on the monotonic clock.
var monoBase = time.Now()

// monotime is a monotonic time in nanoseconds, never 0 (which means "no
// stamp").
func monotime() int64 { return stampOf(time.Now()) }

// stampOf is monotime at t (from time.Now): one clock read for a message's
// SendTime and its stamp.
func stampOf(t time.Time) int64 { return int64(t.Sub(monoBase)) + 1 }

// stampedFrame frames a message's JSON prefix at a position (none when
// offset is 0) as a text frame. A non-zero at (monotime) stamps it as
// accepted then.
func stampedFrame(prefix []byte, offset uint64, epoch string, at int64) []byte {
	var tail [64]byte
	t := appendPosition(tail[:0], offset, epoch)
	n := len(prefix) + len(t)
	hl := frameHeaderLen(n)
	extra := 0
	if at != 0 {
		extra = stampLen
	}
	f := make([]byte, hl+n, hl+n+extra)
	putFrameHeader(f, opText, n)
	copy(f[hl+copy(f[hl:], prefix):], t)
	if at != 0 {
		binary.LittleEndian.PutUint64(f[len(f):cap(f)], uint64(at))
	}
	return f
}

// frameStamp is the time f's message was accepted (monotime), or 0.
func frameStamp(f []byte) int64 {
	if cap(f)-len(f) != stampLen {
		return 0
	}
	return int64(binary.LittleEndian.Uint64(f[len(f):cap(f)]))
}

// wallMillis is the wall-clock time, in Unix nanoseconds truncated to the
// millisecond (as brokers time stream entries), of mono (monotime).
func wallMillis(mono int64) int64 {
	return monoBase.Add(time.Duration(mono-1)).UnixMilli() * int64(time.Millisecond)
}
