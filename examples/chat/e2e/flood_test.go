package e2e

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

// TestMessageListBounded: 20 users send Ann 90 direct messages each, as
// fast as the rate limit lets them (1,800 in about a second). Her page
// keeps at most 300 message elements, stays responsive, and works on.
func TestMessageListBounded(t *testing.T) {
	const (
		senders  = 20
		each     = 90 // under RateBurst (100): none refused
		maxShown = 300
	)
	requireChromium(t)
	root := repoRoot(t)
	bin := buildDemo(t, root)
	srv := newDemoServer(t, bin, freeAddr(t))
	srv.start()

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	ann := newPage(t, newBrowser(t, ctx, 1280, 800), "Ann")
	annUID := ann.login(srv.URL(), "Ann")
	// The longest task the page runs from now on.
	ann.eval("watch long tasks", `(() => {
		window.__longest = 0;
		new PerformanceObserver((list) => {
			for (const e of list.getEntries()) window.__longest = Math.max(window.__longest, e.duration);
		}).observe({type: "longtask"});
	})()`, nil)

	clients := make([]*wsClient, senders)
	for i := range clients {
		clients[i] = dial(t, srv.URL(), signInHTTP(t, srv.URL(), fmt.Sprintf("Flood %d", i)))
	}
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, senders)
	for i, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- c.flood(annUID, i, each)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%d direct messages published in %v", senders*each, time.Since(start).Round(time.Millisecond))
	// Ann's connection gets messages in the order they were published:
	// once this one shows, every flood message has reached the page.
	const marker = "the flood is over"
	if err := clients[0].send(annUID, marker); err != nil {
		t.Fatal(err)
	}
	ann.waitLastMessage(marker)
	t.Logf("Ann's page showed them all %v after the first was sent", time.Since(start).Round(time.Millisecond))

	var st struct {
		Shown    int     `json:"shown"`
		Elements int     `json:"elements"`
		Longest  float64 `json:"longest"`
		Stored   int     `json:"stored"`
	}
	ann.eval("measure", `({
		shown: document.querySelectorAll("#messages > li").length,
		elements: document.getElementsByTagName("*").length,
		longest: window.__longest,
		stored: Object.keys(sessionStorage).reduce((n, k) => n + k.length + sessionStorage.getItem(k).length, 0),
	})`, &st)
	t.Logf("Ann's page: %d messages shown, %d elements, longest task %.0f ms, %d characters in sessionStorage",
		st.Shown, st.Elements, st.Longest, st.Stored)
	if st.Shown != maxShown {
		t.Errorf("Ann's page shows %d messages, want %d (the newest)", st.Shown, maxShown)
	}
	if st.Elements > 5000 {
		t.Errorf("Ann's page has %d elements after the flood", st.Elements)
	}
	if st.Longest > 2000 { // generous: other work on the machine lengthens tasks too
		t.Errorf("the page was unresponsive for %.0f ms in one go", st.Longest)
	}
	if st.Stored > 1<<20 {
		t.Errorf("sessionStorage holds %d characters", st.Stored)
	}
	// The newest are the ones shown, each sender's in order, and the page
	// works on.
	msgs := ann.messages()
	next := map[int]int{} // sender -> the least message number it may show next
	for _, m := range msgs[:len(msgs)-1] {
		var i, j int
		if _, err := fmt.Sscanf(m.Content, "flood %d/%d", &i, &j); err != nil || j < next[i] {
			t.Fatalf("Ann's page shows %q out of place (sender %d at %d)", m.Content, i, next[i])
		}
		next[i] = j + 1
	}
	ann.send("Still here.")
	ann.waitLastMessage("Still here.")
}

// flood sends n direct messages to uid and waits for their echoes (a
// direct message reaches its sender's connections too): then all of them
// were published.
func (c *wsClient) flood(uid uint64, i, n int) error {
	for j := range n {
		if err := c.send(uid, fmt.Sprintf("flood %d/%d", i, j)); err != nil {
			return err
		}
	}
	last := fmt.Sprintf("flood %d/%d", i, n-1)
	c.ws.SetReadDeadline(time.Now().Add(30 * time.Second))
	for {
		var f struct {
			Error   string `json:"error"`
			Content string `json:"content"`
			To      uint64 `json:"to_user_id"`
		}
		if err := c.ws.ReadJSON(&f); err != nil {
			return fmt.Errorf("%s: %w", c.m.Name, err)
		}
		if f.Error != "" {
			return errors.New(c.m.Name + ": refused: " + f.Error)
		}
		if f.To == uid && f.Content == last {
			return nil
		}
	}
}
