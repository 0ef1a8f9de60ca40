package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/wuyan94zl/chart/charttest"
)

// fastHeartbeat are the demo's flags for chart.js's timing in the page
// (served by /api/config; see examples/chat/main.go): a ping every 500 ms,
// a connection silent for 1.5 s more counts as dead, so a blackhole is seen
// within 2 to 2.5 s; and reconnect attempts at most 1 s apart.
var fastHeartbeat = []string{"-heartbeat", "500ms", "-heartbeat-timeout", "1500ms", "-max-backoff", "1s"}

// TestRecoveryThroughCuts cuts Ann's connection while Bob writes to her,
// and checks that her page shows all of it once she is back, each message
// once and in order, with no gap.
//
// Ann's browser reaches the demo through a TCP proxy (charttest.Proxy), Bob's
// directly. The proxy cuts Ann twice: first with a reset (an RST on every
// connection, as a crashed router sends; new connections are then refused
// until the end of the cut), then as a blackhole (every byte dropped, no FIN
// or RST, new connections refused), which only chart.js's heartbeat can
// notice. During each cut Bob sends channel messages and a direct message to
// Ann through his page; the first of them right after the cut, before Ann's
// page can have noticed it. Ann's connection element is watched throughout:
// it must go from "open" to "connecting" and back to "open", never "closed".
// Last, Ann reloads her page: the tab's sessionStorage keeps the
// conversation and chart.js's positions, so it shows the same messages,
// none twice, then what comes next.
func TestRecoveryThroughCuts(t *testing.T) {
	requireChromium(t)
	root := repoRoot(t)
	bin := buildDemo(t, root)
	srv := newDemoServer(t, bin, freeAddr(t), fastHeartbeat...)
	srv.start()
	px := charttest.NewProxy(t, srv.addr)

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	t.Cleanup(cancel)
	ann := newPage(t, newBrowser(t, ctx, 1280, 800), "Ann")
	bob := newPage(t, newBrowser(t, ctx, 1280, 800), "Bob")
	t.Cleanup(func() {
		for _, p := range []*page{ann, bob} {
			if errs := p.jsErrors(); len(errs) > 0 {
				t.Errorf("%s: uncaught JavaScript exceptions: %q", p.name, errs)
			}
		}
	})

	annUID := ann.login("http://"+px.Addr(), "Ann")
	bobUID := bob.login(srv.URL(), "Bob")
	ann.waitOnline(annUID, bobUID)
	bob.waitOnline(annUID, bobUID)
	ann.join(channel)
	bob.join(channel)

	// What Ann's page must show: the channel's messages and the direct
	// messages, each list in the order sent. (Her view shows both; after a
	// recovery the direct messages come first, so only the order within
	// each list is promised.)
	var wantChannel, wantDirect []string
	say := func(from *page, text string) {
		t.Helper()
		from.send(text)
		from.waitLastMessage(text) // the server took it
		wantChannel = append(wantChannel, text)
	}
	whisper := func(text string) {
		t.Helper()
		bob.fill("dm-uid", fmt.Sprint(annUID))
		bob.send(text)
		bob.waitLastMessage(text)
		bob.clearDirect()
		wantDirect = append(wantDirect, text)
	}
	// checkAnn waits until Ann's page shows a last live message, then
	// checks everything it shows.
	checkAnn := func(when string) {
		t.Helper()
		last := "Bob checking the line " + when
		say(bob, last)
		ann.waitLastMessage(last)
		var gotChannel, gotDirect []string
		for _, m := range ann.messages() {
			if m.Direct {
				gotDirect = append(gotDirect, m.Content)
			} else {
				gotChannel = append(gotChannel, m.Content)
			}
		}
		if !slices.Equal(gotChannel, wantChannel) {
			t.Errorf("%s: Ann's page shows the channel messages\n%q\nwant\n%q", when, gotChannel, wantChannel)
		}
		if !slices.Equal(gotDirect, wantDirect) {
			t.Errorf("%s: Ann's page shows the direct messages %q, want %q", when, gotDirect, wantDirect)
		}
		var gaps int
		ann.eval("count gaps", `document.querySelectorAll('[data-testid="gap"]').length`, &gaps)
		if gaps != 0 {
			t.Errorf("%s: Ann's page shows %d gap markers: recovery was not complete", when, gaps)
		}
		if t.Failed() {
			t.FailNow()
		}
	}

	// A conversation first: Ann's page learns its position in the channel
	// from the messages it receives.
	say(ann, "Ann here, on a flaky line.")
	say(bob, "Bob here, on a good one.")
	whisper("Bob to Ann, before any cut.")
	checkAnn("before the cuts")

	for _, cut := range []struct {
		name string
		cut  func()
	}{
		// Blackhole first only so that new connections are refused: the
		// reset then closes the existing ones with an RST at once.
		{"reset", func() { px.Blackhole(); px.Reset() }},
		{"blackhole", px.Blackhole},
	} {
		t.Log(cut.name + ": cut Ann off while Bob writes to her")
		ann.watchConnection()
		if got := ann.connectionStates(); !slices.Equal(got, []string{"open"}) {
			t.Fatalf("%s: Ann's connection shows %q before the cut, want open", cut.name, got)
		}
		cut.cut()
		say(bob, cut.name+": Bob's first line, as the cut happens.")
		ann.waitFor("the cut noticed", `window.__connectionStates.some(s => s !== "open")`)
		say(bob, cut.name+": Bob's second line, Ann's page knows she is away.")
		whisper(cut.name + ": Bob to Ann, while she is away.")
		say(bob, cut.name+": Bob's third line.")
		if got := ann.connection(); got == "open" {
			t.Fatalf("%s: Ann's page shows open while the proxy refuses her", cut.name)
		}
		px.Restore()
		ann.waitReady()
		states := ann.connectionStates()
		if len(states) < 3 || states[0] != "open" || states[len(states)-1] != "open" ||
			slices.Contains(states, "closed") {
			t.Errorf("%s: Ann's connection went through %q, want open, connecting (once or more), open", cut.name, states)
		}
		t.Logf("%s: Ann's connection went through %s", cut.name, strings.Join(states, " → "))
		checkAnn("after the " + cut.name)
	}

	t.Log("reload: the tab keeps the conversation and its positions")
	ann.run("reload", chromedp.Reload())
	ann.waitReady()
	checkAnn("after a reload")
}
