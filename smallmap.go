package chart

// smallMap is a map that stays a slice while it has at most smallMapMax
// entries. Most users join a few channels and many channels have a few
// members; a Go map costs a few hundred bytes even with one entry, a slice
// of one entry a few dozen, which matters for 10,000 idle connections. The
// zero value is an empty map. It is not safe for concurrent use.
type smallMap[K comparable, V any] struct {
	list []smallEntry[K, V]
	m    map[K]V
}

type smallEntry[K comparable, V any] struct {
	k K
	v V
}

const smallMapMax = 8

func (s *smallMap[K, V]) get(k K) (V, bool) {
	if s.m != nil {
		v, ok := s.m[k]
		return v, ok
	}
	for _, e := range s.list {
		if e.k == k {
			return e.v, true
		}
	}
	var zero V
	return zero, false
}

func (s *smallMap[K, V]) has(k K) bool {
	_, ok := s.get(k)
	return ok
}

// set adds or replaces the entry for k.
func (s *smallMap[K, V]) set(k K, v V) {
	if s.m != nil {
		s.m[k] = v
		return
	}
	for i := range s.list {
		if s.list[i].k == k {
			s.list[i].v = v
			return
		}
	}
	if len(s.list) < smallMapMax {
		s.list = append(s.list, smallEntry[K, V]{k, v})
		return
	}
	s.m = make(map[K]V, 2*smallMapMax)
	for _, e := range s.list {
		s.m[e.k] = e.v
	}
	s.m[k] = v
	s.list = nil
}

func (s *smallMap[K, V]) del(k K) {
	if s.m != nil {
		delete(s.m, k)
		return
	}
	for i := range s.list {
		if s.list[i].k == k {
			last := len(s.list) - 1
			s.list[i] = s.list[last]
			s.list[last] = smallEntry[K, V]{}
			s.list = s.list[:last]
			return
		}
	}
}

func (s *smallMap[K, V]) len() int {
	if s.m != nil {
		return len(s.m)
	}
	return len(s.list)
}

// each calls fn for every entry, in no particular order. fn must not
// change the map.
func (s *smallMap[K, V]) each(fn func(K, V)) {
	if s.m != nil {
		for k, v := range s.m {
			fn(k, v)
		}
		return
	}
	for _, e := range s.list {
		fn(e.k, e.v)
	}
}

// keys returns the keys, in no particular order.
func (s *smallMap[K, V]) keys() []K {
	ks := make([]K, 0, s.len())
	s.each(func(k K, _ V) { ks = append(ks, k) })
	return ks
}
