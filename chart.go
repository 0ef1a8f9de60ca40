package chart

import (
	"context"
	"net/http"
)

// DefaultHub is the Hub behind the package-level functions, with the
// default Config. Replace it before the first connection to change its
// configuration, e.g. chart.DefaultHub = chart.New(chart.Config{...}).
var DefaultHub = New(Config{})

// The package-level functions below are wrappers over DefaultHub, as
// http.HandleFunc is over http.DefaultServeMux.

// NewServer calls DefaultHub.NewServer.
func NewServer(w http.ResponseWriter, r *http.Request, uid uint64, h Handler) {
	DefaultHub.NewServer(w, r, uid, h)
}

// JoinChannelIds calls DefaultHub.JoinChannelIds.
func JoinChannelIds(uid uint64, channelIds ...string) error {
	return DefaultHub.JoinChannelIds(uid, channelIds...)
}

// UnJoinChannelIds calls DefaultHub.UnJoinChannelIds.
func UnJoinChannelIds(uid uint64, channelIds ...string) error {
	return DefaultHub.UnJoinChannelIds(uid, channelIds...)
}

// SendMessageToChannelIds calls DefaultHub.SendMessageToChannelIds.
func SendMessageToChannelIds(uid uint64, msg string, channelIds ...string) map[string]bool {
	return DefaultHub.SendMessageToChannelIds(uid, msg, channelIds...)
}

// SendMessageToUid calls DefaultHub.SendMessageToUid.
func SendMessageToUid(uid, toUid uint64, msg string) error {
	return DefaultHub.SendMessageToUid(uid, toUid, msg)
}

// Disconnect calls DefaultHub.Disconnect.
func Disconnect(uid uint64, reason string) error { return DefaultHub.Disconnect(uid, reason) }

// Broadcast calls DefaultHub.Broadcast.
func Broadcast(m Message) error { return DefaultHub.Broadcast(m) }

// Publish calls DefaultHub.Publish.
func Publish(channelId string, m Message) error { return DefaultHub.Publish(channelId, m) }

// IsOnline calls DefaultHub.IsOnline.
func IsOnline(uid uint64) bool { return DefaultHub.IsOnline(uid) }

// OnlineUserIds calls DefaultHub.OnlineUserIds.
func OnlineUserIds() []uint64 { return DefaultHub.OnlineUserIds() }

// ChannelUserIds calls DefaultHub.ChannelUserIds.
func ChannelUserIds(channelId string) []uint64 { return DefaultHub.ChannelUserIds(channelId) }

// UserChannelIds calls DefaultHub.UserChannelIds.
func UserChannelIds(uid uint64) []string { return DefaultHub.UserChannelIds(uid) }

// GetStats calls DefaultHub.Stats.
func GetStats() Stats { return DefaultHub.Stats() }

// Shutdown calls DefaultHub.Shutdown.
func Shutdown(ctx context.Context) error { return DefaultHub.Shutdown(ctx) }
