package main

import (
	"net/http"
	"strconv"

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
}

func init() {
	register(&libSpec{
		name:     "centrifuge",
		settings: "centrifuge.New(Config{}) defaults (memory broker, no history, 1 MiB client queue, 25 s ping / 10 s pong), NewWebsocketHandler(node, WebsocketConfig{}), JSON protocol, client-side subscribe; business publish: node.Publish; rooms: client publish commands (OnPublish accepts)",
		server:   newCentrifugeLib,
		client:   centrifugeProto,
	})
}

// newCentrifugeLib builds and runs a centrifuge node.
func newCentrifugeLib(string) (serverLib, error) {
	node, err := centrifuge.New(centrifuge.Config{})
	if err != nil {
		return nil, err
	}
	node.OnConnect(func(client *centrifuge.Client) {
		client.OnSubscribe(func(_ centrifuge.SubscribeEvent, cb centrifuge.SubscribeCallback) {
			cb(centrifuge.SubscribeReply{}, nil)
		})
		client.OnPublish(func(_ centrifuge.PublishEvent, cb centrifuge.PublishCallback) {
			cb(centrifuge.PublishReply{}, nil)
		})
	})
	if err := node.Run(); err != nil {
		return nil, err
	}
	return &centrifugeLib{node: node, ws: centrifuge.NewWebsocketHandler(node, centrifuge.WebsocketConfig{})}, nil
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
	_, err := l.node.Publish(channel, data)
	return err
}
