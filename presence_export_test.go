package chart

// RosterIdle reports whether h's roster of channelId has its member list
// and nothing left to read or scheduled: only a new change, or a resync,
// makes it read presence again. For tests of package chart_test.
func RosterIdle(h *Hub, channelId string) bool {
	ch := h.lookupChannel(channelId)
	if ch == nil || ch.roster == nil {
		return false
	}
	r := ch.roster
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ready && !r.armed && !r.reading && !r.dirty && !r.force
}
