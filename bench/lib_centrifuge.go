package main

import (
	"net/http"
	"strconv"

	"github.com/wuyan94zl/chart"

	"github.com/centrifugal/centrifuge"
)

// centrifugeLib drives github.com/centrifugal/centrifuge as its README
// tutorial does: centrifuge.New(centrifuge.Config{}), credentials put into
// the request context by an HTTP middleware, OnSubscribe and OnPublish
// accepting everything, NewWebsocketHandler(node, WebsocketConfig{}) and
// node.Publish from business code. Clients speak its JSON protocol: a
// connect command, one subscribe command per channel, publish commands, and
// pong replies to the application-level pings.
type centrifugeLib struct {
	node *centrifuge.Node
	ws   http.Handler
	opts []centrifuge.PublishOption // history workload: WithHistory
}

func init() {
	register(&libSpec{
		name:     "centrifuge",
		settings: "centrifuge.New(Config{}) defaults (memory broker, no history, 1 MiB client queue, 25 s ping / 10 s pong), NewWebsocketHandler(node, WebsocketConfig{}), JSON protocol, client-side subscribe; business publish: node.Publish; rooms: client publish commands (OnPublish accepts); history: node.Publish with WithHistory(100, 10 min), chart's default HistorySize and HistoryTTL, kept by the memory broker (which has no bound on all channels' bytes together, and no inbox of a user's direct messages)",
		server:   newCentrifugeLib,
		client:   centrifugeProto,

		keepsChannels: true,
	})
}

// newCentrifugeLib builds and runs a centrifuge node. For the history
// workload its publishes keep chart's default history: the last 100
// messages of each channel, at most 10 minutes old.
func newCentrifugeLib(workload string) (serverLib, error) {
	node, err := centrifuge.New(centrifuge.Config{})
	if err != nil {
		return nil, err
	}
	node.OnConnect(func(client *centrifuge.Client) {
		client.OnSubscribe(func(_ centrifuge.SubscribeEvent, cb centrifuge.SubscribeCallback) {
			cb(centrifuge.SubscribeReply{}, nil)
		})
		client.OnPublish(func(e centrifuge.PublishEvent, cb centrifuge.PublishCallback) {
			noteRead(string(e.Data))
			cb(centrifuge.PublishReply{}, nil)
		})
	})
	if err := node.Run(); err != nil {
		return nil, err
	}
	l := &centrifugeLib{node: node, ws: centrifuge.NewWebsocketHandler(node, centrifuge.WebsocketConfig{})}
	if workload == wlHistory {
		l.opts = []centrifuge.PublishOption{centrifuge.WithHistory(chart.DefaultHistorySize, chart.DefaultHistoryTTL)}
	}
	return l, nil
}

// keptInChannel returns how many publications channel keeps in its history.
func (l *centrifugeLib) keptInChannel(channel string) (int, error) {
	res, err := l.node.History(channel, centrifuge.WithLimit(centrifuge.NoLimit))
	return len(res.Publications), err
}

// ServeHTTP authenticates the connection as user uid (the README's auth
// middleware) and hands it to the WebSocket handler.
func (l *centrifugeLib) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	uid, _, err := requestUser(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	ctx := centrifuge.SetCredentials(r.Context(), &centrifuge.Credentials{UserID: strconv.FormatUint(uid, 10)})
	l.ws.ServeHTTP(w, r.WithContext(ctx))
}

// publish sends payload as a JSON string to every subscriber of channel.
func (l *centrifugeLib) publish(channel string, payload []byte) error {
	data := make([]byte, 0, len(payload)+2)
	data = append(data, '"')
	data = append(data, payload...)
	data = append(data, '"')
	_, err := l.node.Publish(channel, data, l.opts...)
	return err
}
