module github.com/wuyan94zl/chart/examples/chat/e2e

go 1.24

require (
	github.com/chromedp/cdproto v0.0.0-20250724212937-08a3db8b4327
	github.com/chromedp/chromedp v0.14.2
	github.com/gorilla/websocket v1.5.3
	github.com/wuyan94zl/chart v0.0.0
)

require (
	github.com/chromedp/sysutil v1.1.0 // indirect
	github.com/go-json-experiment/json v0.0.0-20250725192818-e39067aee2d2 // indirect
	github.com/gobwas/httphead v0.1.0 // indirect
	github.com/gobwas/pool v0.2.1 // indirect
	github.com/gobwas/ws v1.4.0 // indirect
	golang.org/x/sys v0.34.0 // indirect
	golang.org/x/time v0.10.0 // indirect
)

// charttest (the TCP proxy that cuts connections) from this repository's
// working tree: this module is not meant to be imported.
replace github.com/wuyan94zl/chart => ../../..
