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
