// Package charttest is a test kit for chart: real hubs behind httptest
// servers, real WebSocket clients, a recording Handler, and the behaviour
// suite every Broker must pass (Suite), which runs the same scenarios on
// two and three nodes sharing one broker backend.
//
// It depends only on what chart itself depends on, so that broker modules
// can run the suite without pulling anything into the root module.
package charttest

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/wuyan94zl/chart"
)

// Wait is the longest a test waits for one expected event.
var Wait = 15 * time.Second

// Recorder is a Handler that records every callback on buffered channels,
// so tests wait for events instead of sleeping.
type Recorder struct {
	Logins  chan uint64
	Logouts chan uint64
	Msgs    chan chart.Message
	Errs    chan error
	// OnLogin, when set, runs inside LoginServer before it is recorded.
	OnLogin func(uid uint64)

	mu    sync.Mutex
	calls map[uint64][]bool // per uid, each callback in order: true for a login
}

// NewRecorder returns an empty Recorder.
func NewRecorder() *Recorder {
	return &Recorder{
		Logins:  make(chan uint64, 1000),
		Logouts: make(chan uint64, 1000),
		Msgs:    make(chan chart.Message, 20000),
		Errs:    make(chan error, 20000),
	}
}

// SendMessage records m.
func (r *Recorder) SendMessage(m chart.Message) {
	select {
	case r.Msgs <- m:
	default:
	}
}

// LoginServer records uid after running OnLogin.
func (r *Recorder) LoginServer(uid uint64) {
	if r.OnLogin != nil {
		r.OnLogin(uid)
	}
	r.log(uid, true)
	r.Logins <- uid
}

// LogoutServer records uid.
func (r *Recorder) LogoutServer(uid uint64) {
	r.log(uid, false)
	r.Logouts <- uid
}

func (r *Recorder) log(uid uint64, login bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.calls == nil {
		r.calls = make(map[uint64][]bool)
	}
	r.calls[uid] = append(r.calls[uid], login)
}

// Calls returns uid's LoginServer (true) and LogoutServer (false) calls
// so far, in the order they ran, on every hub sharing r.
func (r *Recorder) Calls(uid uint64) []bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.calls[uid])
}

// Paired checks the callbacks of every uid recorded so far, on every hub
// sharing r: they alternate, login first (login, logout, login, ...), and
// a uid in online ends logged in, any other logged out (or never seen).
// It returns nil or an error naming each uid that breaks the rule with its
// calls. Callbacks are recorded as they start, so a uid's logout on one
// node and its next login on another started within a broker round trip
// of each other may be recorded in either order: tests leave a round trip
// between such changes.
func (r *Recorder) Paired(online ...uint64) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	var errs []error
	uids := make([]uint64, 0, len(r.calls))
	for uid := range r.calls {
		uids = append(uids, uid)
	}
	for _, uid := range online {
		if _, ok := r.calls[uid]; !ok {
			uids = append(uids, uid)
		}
	}
	slices.Sort(uids)
	for _, uid := range uids {
		calls := r.calls[uid]
		ok := true
		for i, login := range calls {
			if login != (i%2 == 0) {
				ok = false
			}
		}
		want := slices.Contains(online, uid)
		if in := len(calls)%2 == 1; in != want {
			ok = false
		}
		if !ok {
			errs = append(errs, fmt.Errorf("uid %d: %s (want it logged %s)", uid, callString(calls), map[bool]string{true: "in", false: "out"}[want]))
		}
	}
	return errors.Join(errs...)
}

func callString(calls []bool) string {
	if len(calls) == 0 {
		return "no callback"
	}
	b := make([]byte, 0, 8*len(calls))
	for i, login := range calls {
		if i > 0 {
			b = append(b, ", "...)
		}
		if login {
			b = append(b, "login"...)
		} else {
			b = append(b, "logout"...)
		}
	}
	return string(b)
}

// ErrorLogServer records err, dropping it when the buffer is full.
func (r *Recorder) ErrorLogServer(err error) {
	select {
	case r.Errs <- err:
	default:
	}
}

// WantErr waits for an error matching target, skipping others.
func (r *Recorder) WantErr(t testing.TB, target error) error {
	t.Helper()
	deadline := time.After(Wait)
	for {
		select {
		case err := <-r.Errs:
			if errors.Is(err, target) {
				return err
			}
		case <-deadline:
			t.Fatalf("timed out waiting for an error matching %v", target)
			return nil
		}
	}
}

// WantLogin waits for the next LoginServer and requires it to be uid's.
func (r *Recorder) WantLogin(t testing.TB, uid uint64) {
	t.Helper()
	if got := Recv(t, r.Logins, "login"); got != uid {
		t.Fatalf("login of uid %d, want %d", got, uid)
	}
}

// NoErr fails the test if an error was recorded and not yet taken.
func (r *Recorder) NoErr(t testing.TB) {
	t.Helper()
	select {
	case err := <-r.Errs:
		t.Fatalf("unexpected error: %v", err)
	default:
	}
}

// Recv waits for one value from ch.
func Recv[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(Wait):
		t.Fatalf("timed out waiting for %s", what)
	}
	var zero T
	return zero
}

// Eventually polls cond until it holds, for state that has no event (such
// as presence expiring with a TTL).
func Eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(Wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
