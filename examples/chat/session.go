package main

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Sessions. Signing in gives the browser a cookie that says who it is: a
// uid the server chose, the display name given at sign-in, and when the
// session ends, signed with HMAC-SHA256. The server keeps no session state:
// whoever holds a cookie with a valid signature is that user until it
// expires. The socket (Config.Authenticate) and every API call read the uid
// from it and from nowhere else.
//
// The cookie is HttpOnly (page scripts cannot read it, so an injected
// script cannot steal it), SameSite=Lax (other sites' pages do not send it
// with their requests; same-site pages on another port or subdomain do,
// which is why the API checks Origin as well) and Secure when the page is
// served over TLS.
//
// What this does not do: a cookie cannot be revoked before it expires.
// Signing out clears it in the browser and closes the user's connections,
// but a copy taken earlier stays valid until sessionTTL has passed (as does
// a connection whose handshake was under way at that moment). A real
// application keeps its sessions in a store so that it can end them.

const (
	// sessionCookie is the cookie's name.
	sessionCookie = "chat_session"
	// sessionTTL is how long a session lasts. The user's connections are
	// closed with 4002 when it ends (Conn.SetExpiry), and the page asks
	// them to sign in again.
	sessionTTL = 12 * time.Hour
	// sessionKeyEnv names the environment variable that holds the signing
	// key, base64-encoded, at least 32 bytes. Without it the key is random
	// per process, and a restart signs everybody out.
	sessionKeyEnv = "CHAT_SESSION_KEY"
	// minKeyLen is the shortest key accepted: HMAC-SHA256's block of
	// security.
	minKeyLen = 32
	// maxNameRunes bounds a display name.
	maxNameRunes = 32
	// maxUID is the largest uid issued: the page handles uids as
	// JavaScript numbers, exact up to 2^53 - 1.
	maxUID = 1<<53 - 1
)

// session is what a signed cookie carries.
type session struct {
	UID     uint64    `json:"u"`
	Name    string    `json:"n"`
	Expires time.Time `json:"-"`
	Exp     int64     `json:"e"` // Expires in Unix seconds, as signed
}

// sessions signs and checks session cookies with one key.
type sessions struct {
	key    []byte
	secure bool             // Secure on every cookie, also over plain HTTP (behind a TLS proxy)
	now    func() time.Time // time.Now; tests move it
}

// sessionKey returns the key from the environment value env (base64, at
// least minKeyLen bytes), or a random one when env is empty.
func sessionKey(env string) ([]byte, error) {
	if env == "" {
		key := make([]byte, minKeyLen)
		if _, err := rand.Read(key); err != nil {
			return nil, err
		}
		return key, nil
	}
	key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(env))
	if err != nil {
		return nil, fmt.Errorf("%s is not base64: %w (make one with: openssl rand -base64 32)", sessionKeyEnv, err)
	}
	if len(key) < minKeyLen {
		return nil, fmt.Errorf("%s has %d bytes, want at least %d (openssl rand -base64 32)", sessionKeyEnv, len(key), minKeyLen)
	}
	return key, nil
}

// sessionDomain keeps these signatures apart from any other use of the key.
var sessionDomain = []byte("chart-demo session v1\x00")

func (s *sessions) mac(payload []byte) []byte {
	m := hmac.New(sha256.New, s.key)
	m.Write(sessionDomain)
	m.Write(payload)
	return m.Sum(nil)
}

// encode returns the cookie value of a session: payload.signature, both
// base64url.
func (s *sessions) encode(sess session) string {
	sess.Exp = sess.Expires.Unix()
	payload, _ := json.Marshal(sess) // plain fields: cannot fail
	b64 := base64.RawURLEncoding
	return b64.EncodeToString(payload) + "." + b64.EncodeToString(s.mac(payload))
}

// errNoSession is any reason a request carries no valid session.
var errNoSession = errors.New("not signed in")

// decode checks a cookie value's signature, expiry and content.
func (s *sessions) decode(value string) (session, error) {
	b64 := base64.RawURLEncoding
	p, sig, ok := strings.Cut(value, ".")
	if !ok || len(value) > 512 {
		return session{}, errNoSession
	}
	payload, err1 := b64.DecodeString(p)
	mac, err2 := b64.DecodeString(sig)
	if err1 != nil || err2 != nil || !hmac.Equal(mac, s.mac(payload)) {
		return session{}, errNoSession
	}
	var sess session
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&sess); err != nil {
		return session{}, errNoSession
	}
	sess.Expires = time.Unix(sess.Exp, 0)
	if sess.UID == 0 || sess.UID > maxUID || !s.now().Before(sess.Expires) || validName(sess.Name) != nil {
		return session{}, errNoSession
	}
	return sess, nil
}

// read returns the request's session, if its cookie is valid.
func (s *sessions) read(r *http.Request) (session, error) {
	c, err := r.Cookie(sessionCookie)
	if err != nil {
		return session{}, errNoSession
	}
	return s.decode(c.Value)
}

// start issues a new session for name: a fresh uid, the cookie set on w.
func (s *sessions) start(w http.ResponseWriter, r *http.Request, name string) (session, error) {
	uid, err := newUID()
	if err != nil {
		return session{}, err
	}
	sess := session{UID: uid, Name: name, Expires: s.now().Add(sessionTTL).Truncate(time.Second)}
	http.SetCookie(w, s.cookie(r, s.encode(sess), int(sessionTTL/time.Second)))
	return sess, nil
}

// end clears the session cookie.
func (s *sessions) end(w http.ResponseWriter, r *http.Request) {
	http.SetCookie(w, s.cookie(r, "", -1))
}

func (s *sessions) cookie(r *http.Request, value string, maxAge int) *http.Cookie {
	return &http.Cookie{
		Name:     sessionCookie,
		Value:    value,
		Path:     "/",
		MaxAge:   maxAge,
		HttpOnly: true,
		SameSite: http.SameSiteLaxMode,
		Secure:   s.secure || r.TLS != nil,
	}
}

// newUID returns a random uid from 1 to maxUID. Uids are random rather
// than counted so that they are not reused across restarts (sessions
// survive a restart when the key does) and cannot be guessed: a user's
// direct messages wait for their uid, so a uid given twice would hand one
// user's inbox to another.
func newUID() (uint64, error) {
	var b [8]byte
	for {
		if _, err := rand.Read(b[:]); err != nil {
			return 0, err
		}
		if uid := binary.BigEndian.Uint64(b[:]) & maxUID; uid != 0 {
			return uid, nil
		}
	}
}

// cleanName tidies a display name typed at sign-in: surrounding space
// trimmed, runs of spaces made one.
func cleanName(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// validName accepts 1 to maxNameRunes letters, marks, digits, single
// spaces and - _ . ' characters. Names are rendered as text, never HTML, so
// this is not escaping: it keeps out what could make one user look like
// another or garble the page (control and formatting characters such as
// bidirectional overrides, zero-width joiners, look-alike punctuation).
func validName(s string) error {
	if s == "" {
		return errors.New("a display name is required")
	}
	if !utf8.ValidString(s) || utf8.RuneCountInString(s) > maxNameRunes {
		return fmt.Errorf("a display name has at most %d characters", maxNameRunes)
	}
	if s != cleanName(s) {
		return errors.New("a display name has no leading, trailing or double spaces")
	}
	marks := 0 // combining marks in a row: accents, not a tower of them
	for _, r := range s {
		switch {
		case unicode.IsMark(r):
			if marks++; marks > 2 {
				return errors.New("a display name has at most two accents on a letter")
			}
			continue
		case unicode.IsLetter(r), unicode.IsDigit(r), r == ' ', strings.ContainsRune("-_.'", r):
		default:
			return fmt.Errorf("a display name has letters, digits, spaces and - _ . ' only, not %q", r)
		}
		marks = 0
	}
	return nil
}
