module github.com/wuyan94zl/chart

go 1.22

require (
	github.com/gorilla/websocket v1.5.3
	golang.org/x/time v0.10.0
)

require go.uber.org/goleak v1.3.0
