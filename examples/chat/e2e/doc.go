// Package e2e tests the chat demo (examples/chat) end to end: it builds the
// demo binary, runs it on a loopback port and drives real Chromium browsers
// against it with chromedp. TestChatInBrowsers covers the page's features
// with three users; TestRecoveryThroughCuts puts one browser behind a TCP
// proxy (charttest.Proxy, from this repository's working tree through a
// replace directive) that cuts its connection with a reset and as a
// blackhole, and checks that the page, through chart.js, shows every
// message sent meanwhile exactly once.
//
// It is a module of its own so that the library's module does not depend on
// chromedp. Run it from this directory:
//
//	go test -race -count=1 ./...
//
// The test needs /usr/bin/chromium (Debian: apt-get install -y chromium). It
// skips without it, unless CI is set, in which case it fails. With
// CHART_SCREENSHOT=1 it also writes docs/chat.png at the repository root.
package e2e
