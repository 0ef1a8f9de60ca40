package chart

import (
	"slices"
	"strconv"
	"testing"
)

// TestSmallMap checks smallMap against a Go map through the switch from
// slice to map and back to empty.
func TestSmallMap(t *testing.T) {
	var s smallMap[string, int]
	ref := map[string]int{}
	check := func(step string) {
		t.Helper()
		if s.len() != len(ref) {
			t.Fatalf("%s: len %d, want %d", step, s.len(), len(ref))
		}
		for k, v := range ref {
			if got, ok := s.get(k); !ok || got != v {
				t.Fatalf("%s: get(%q) = %d, %v; want %d", step, k, got, ok, v)
			}
		}
		keys := s.keys()
		slices.Sort(keys)
		want := make([]string, 0, len(ref))
		for k := range ref {
			want = append(want, k)
		}
		slices.Sort(want)
		if !slices.Equal(keys, want) {
			t.Fatalf("%s: keys %v, want %v", step, keys, want)
		}
		if s.has("absent") {
			t.Fatalf("%s: has an absent key", step)
		}
	}
	for i := 0; i < 3*smallMapMax; i++ {
		k := strconv.Itoa(i)
		s.set(k, i)
		ref[k] = i
		check("set " + k)
	}
	s.set("3", 33)
	ref["3"] = 33
	check("replace")
	for i := 0; i < 3*smallMapMax; i += 2 {
		s.del(strconv.Itoa(i))
		delete(ref, strconv.Itoa(i))
		check("del " + strconv.Itoa(i))
	}
	var small smallMap[int, bool]
	for i := 0; i < smallMapMax; i++ {
		small.set(i, true)
	}
	small.del(0)
	small.del(smallMapMax - 1)
	small.del(42)
	if small.m != nil || small.len() != smallMapMax-2 || small.has(0) || !small.has(1) {
		t.Fatalf("small map after deletes: %+v", small)
	}
}

// TestShrink: a map that grew past 1024 entries is copied once it is down
// to a quarter of its peak, and keeps every entry.
func TestShrink(t *testing.T) {
	m, peak := map[int]int{}, 0
	for i := 0; i < 4000; i++ {
		m[i] = i
		m = shrink(m, &peak)
	}
	if peak != 4000 {
		t.Fatalf("peak %d, want 4000", peak)
	}
	orig := m
	for i := 0; i < 2999; i++ {
		delete(m, i)
		if m = shrink(m, &peak); i < 2999 && !sameMap(m, orig) {
			t.Fatalf("copied after %d deletes, with %d of 4000 left", i+1, len(m))
		}
	}
	delete(m, 2999)
	if m = shrink(m, &peak); sameMap(m, orig) || peak != 1000 || len(m) != 1000 {
		t.Fatalf("not copied at a quarter: same=%v peak=%d len=%d", sameMap(m, orig), peak, len(m))
	}
	for i := 3000; i < 4000; i++ {
		if m[i] != i {
			t.Fatalf("entry %d lost", i)
		}
	}
}

// sameMap reports whether a and b are the same map (not just equal).
func sameMap(a, b map[int]int) bool {
	a[-1] = 1
	_, same := b[-1]
	delete(a, -1)
	return same
}
