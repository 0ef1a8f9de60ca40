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
	r.Logins <- uid
}

// LogoutServer records uid.
func (r *Recorder) LogoutServer(uid uint64) { r.Logouts <- uid }

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
