package chart

import (
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"net/http"
	"strconv"
	"strings"
)

//go:embed client/chart.js
var clientScript []byte

// ClientScript serves the JavaScript client of the chart.v1 protocol
// (client/chart.js, an ES module with no dependencies): mount it where
// your pages import it from, e.g.
//
//	http.Handle("/chart.js", chart.ClientScript)
//
// and in the page:
//
//	import { Chart } from "/chart.js";
//
// It answers GET and HEAD with Content-Type text/javascript, an ETag (a
// hash of the script) and Cache-Control: no-cache, so that browsers
// revalidate on every load and get 304 Not Modified until a deploy changes
// the script: a new server never leaves them on an old client.
var ClientScript http.Handler = clientScriptHandler{}

var clientScriptETag = func() string {
	sum := sha256.Sum256(clientScript)
	return `"` + hex.EncodeToString(sum[:16]) + `"`
}()

type clientScriptHandler struct{}

func (clientScriptHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	h := w.Header()
	h.Set("ETag", clientScriptETag)
	h.Set("Cache-Control", "no-cache")
	if etagMatch(r.Header.Get("If-None-Match"), clientScriptETag) {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	h.Set("Content-Type", "text/javascript; charset=utf-8")
	h.Set("Content-Length", strconv.Itoa(len(clientScript)))
	if r.Method == http.MethodHead {
		return
	}
	w.Write(clientScript)
}

// etagMatch reports whether an If-None-Match header names etag (weak
// comparison, as RFC 9110 asks for If-None-Match), or is "*".
func etagMatch(header, etag string) bool {
	for _, t := range strings.Split(header, ",") {
		t = strings.TrimPrefix(strings.TrimSpace(t), "W/")
		if t == "*" || t == etag {
			return true
		}
	}
	return false
}
