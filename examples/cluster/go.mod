module github.com/wuyan94zl/chart/examples/cluster

go 1.26.0

require (
	github.com/gorilla/websocket v1.5.3
	github.com/wuyan94zl/chart v0.0.0
	github.com/wuyan94zl/chart/natsbroker v0.0.0
	github.com/wuyan94zl/chart/redisbroker v0.0.0
	go.uber.org/goleak v1.3.0
)

require (
	github.com/cespare/xxhash/v2 v2.3.0 // indirect
	github.com/klauspost/compress v1.20.3 // indirect
	github.com/nats-io/nats.go v1.55.0 // indirect
	github.com/nats-io/nkeys v0.4.16 // indirect
	github.com/nats-io/nuid v1.0.1 // indirect
	github.com/redis/go-redis/v9 v9.23.0 // indirect
	go.uber.org/atomic v1.12.0 // indirect
	golang.org/x/crypto v0.58.0 // indirect
	golang.org/x/sys v0.49.0 // indirect
	golang.org/x/time v0.16.0 // indirect
)

replace (
	github.com/wuyan94zl/chart => ../../
	github.com/wuyan94zl/chart/natsbroker => ../../natsbroker
	github.com/wuyan94zl/chart/redisbroker => ../../redisbroker
)
