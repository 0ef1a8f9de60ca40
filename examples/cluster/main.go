// Command cluster is one node of a chat cluster: run several behind a load
// balancer, sharing a Redis or NATS server, and users on different nodes
// chat as if they shared one.
//
//	cd examples/cluster
//	go run . -addr :8081 -redis redis://127.0.0.1:6379
//	go run . -addr :8082 -redis redis://127.0.0.1:6379
//
// or -nats nats://127.0.0.1:4222 (a nats-server started with -js); with
// neither flag the node runs alone, in memory. It serves /ws?id=UID (the
// uid joins channel "lobby" on login) and GET /online, the online uids of
// the whole cluster as JSON. Browsers may open /ws from a page of this
// node only, unless -allow-origin lists other origins (for instance
// -allow-origin http://localhost:8081 lets a page of the first node open a
// socket to the second).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"log"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/wuyan94zl/chart"
	"github.com/wuyan94zl/chart/natsbroker"
	"github.com/wuyan94zl/chart/redisbroker"
)

// handler puts every user in the lobby and logs what happens.
type handler struct{ hub *chart.Hub }

func (h handler) SendMessage(m chart.Message) {
	slog.Info("message", "from", m.UserId, "channel", m.ChannelId, "to", m.ToUserId, "content", m.Content)
}

func (h handler) LoginServer(uid uint64) {
	slog.Info("login", "uid", uid)
	h.hub.JoinChannelIds(uid, "lobby")
}

func (h handler) LogoutServer(uid uint64) { slog.Info("logout", "uid", uid) }

func (h handler) ErrorLogServer(err error) { slog.Warn("chat", "err", err) }

// newBroker returns the broker the flags ask for, or nil for in-memory.
func newBroker(redisURL, natsURL string, replicas int) (chart.Broker, error) {
	switch {
	case redisURL != "" && natsURL != "":
		return nil, errors.New("give -redis or -nats, not both")
	case redisURL != "":
		return redisbroker.Dial(redisURL, redisbroker.Options{})
	case natsURL != "":
		return natsbroker.Connect(natsURL, natsbroker.Options{Replicas: replicas})
	}
	return nil, nil
}

// origins splits the -allow-origin list.
func origins(list string) []string {
	var out []string
	for _, o := range strings.Split(list, ",") {
		if o = strings.TrimSpace(o); o != "" {
			out = append(out, o)
		}
	}
	return out
}

// newMux serves /ws and /online for hub.
func newMux(hub *chart.Hub) *http.ServeMux {
	h := handler{hub}
	mux := http.NewServeMux()
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		uid, _ := strconv.ParseUint(r.FormValue("id"), 10, 64) // authenticate for real here
		hub.NewServer(w, r, uid, h)
	})
	mux.HandleFunc("GET /online", func(w http.ResponseWriter, r *http.Request) {
		ids := hub.OnlineUserIds()
		if ids == nil {
			ids = []uint64{}
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(ids)
	})
	return mux
}

func main() {
	addr := flag.String("addr", ":8081", "listen address")
	redisURL := flag.String("redis", "", "Redis URL, e.g. redis://127.0.0.1:6379")
	natsURL := flag.String("nats", "", "NATS URL, or several comma-separated (the servers of a cluster), e.g. nats://127.0.0.1:4222 (servers run with -js)")
	replicas := flag.Int("replicas", 0, "with -nats: replicas of the buckets and stream (default: the cluster's servers, at most 3)")
	allow := flag.String("allow-origin", "", "comma-separated browser origins allowed besides this node's own, e.g. http://localhost:8081 (chart.Config.AllowedOrigins)")
	flag.Parse()

	b, err := newBroker(*redisURL, *natsURL, *replicas)
	if err != nil {
		log.Fatal(err)
	}
	// Config.Handler: a node runs the LogoutServer of the users of a dead
	// node it reaps with it, even before its own first connection (a node
	// without one leaves the reaping to the others).
	h := &handler{}
	cfg := chart.Config{AllowedOrigins: origins(*allow), Handler: h}
	if b != nil {
		cfg.Broker = b
		slog.Info("node", "id", b.NodeID())
	}
	chart.DefaultHub = chart.New(cfg)
	h.hub = chart.DefaultHub

	// A header timeout, so that slow clients cannot hold half-sent requests
	// open; upgraded connections follow chart's own deadlines.
	srv := &http.Server{Addr: *addr, Handler: newMux(chart.DefaultHub), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
		<-sig
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		chart.Shutdown(ctx) // logs users out, closes the broker
		srv.Shutdown(ctx)
	}()
	slog.Info("listening", "addr", *addr)
	if err := srv.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
		log.Fatal(err)
	}
}
