package chart

import (
	"context"
	"io"
	"log/slog"
	"testing"
)

// TestReceiveMalformed: envelopes that are cut short or unknown are
// ignored without a panic.
func TestReceiveMalformed(t *testing.T) {
	bus := NewMemoryBus()
	h := New(Config{Broker: bus.Broker(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	defer h.Shutdown(context.Background())
	other := []byte{envChannel, 1, 'x'}
	for _, data := range [][]byte{
		nil, {envChannel}, {envChannel, 200}, {envChannel, 5, 'x'},
		append(other, 9, 'a'), append([]byte{envUser, 1, 'x'}, 0xff),
		{envJoin, 1, 'x', 7, 3, 'a'}, {envLeave, 1, 'x'}, {'?', 1, 'x', 1, 2, 3},
	} {
		h.receive(data)
	}
}
