package chart

import (
	"bytes"
	"testing"
)

// TestUnmask: the word-at-a-time unmasking matches byte-at-a-time, at
// every alignment, length and position in the frame, across calls.
func TestUnmask(t *testing.T) {
	key := [4]byte{0x37, 0xfa, 0x21, 0x3d}
	src := make([]byte, 200)
	for i := range src {
		src[i] = byte(i * 7)
	}
	for off := 0; off < 9; off++ {
		for n := 0; n < 100; n++ {
			for split := 0; split <= n; split += 1 + n/4 {
				want := bytes.Clone(src[off : off+n])
				for i := range want {
					want[i] ^= key[i&3]
				}
				got := bytes.Clone(src)[off : off+n]
				fr := &frameReader{maskKey: key}
				fr.unmask(got[:split])
				fr.unmask(got[split:])
				if !bytes.Equal(got, want) {
					t.Fatalf("offset %d, length %d, split at %d: got %x, want %x", off, n, split, got, want)
				}
			}
		}
	}
}
