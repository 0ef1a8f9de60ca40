// Package e2e tests the chat demo (examples/chat) end to end: it builds the
// demo binary, runs it on a loopback port and drives real Chromium browsers
// against it with chromedp.
//
//   - TestChatInBrowsers covers the page's features with three users:
//     sign-in, messages, direct messages, presence, HTML injection,
//     sign-out, a server restart, a phone-sized layout.
//   - TestRecoveryThroughCuts puts one browser behind a TCP proxy
//     (charttest.Proxy, from this repository's working tree through a
//     replace directive) that cuts its connection with a reset and as a
//     blackhole, and checks that the page, through chart.js, shows every
//     message sent meanwhile exactly once.
//   - TestSignInFlow checks the session cookie, reloads, and sign-out and
//     sign-in followed by the browser's other tabs.
//   - TestForeignPagesChangeNothing, TestPresenceIsReadOnly and
//     TestMessageListBounded attack the demo as issue 14's review did:
//     pages of other origins in the user's browser, a client posting to the
//     presence channel, a flood of direct messages.
//
// The demo runs with a fixed CHAT_SESSION_KEY per test, so that its users
// stay signed in across a restart.
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
