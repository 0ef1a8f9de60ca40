package charttest

import (
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestPaired(t *testing.T) {
	r := NewRecorder()
	r.LoginServer(1)
	r.LogoutServer(1)
	r.LoginServer(1) // 1: in
	r.LoginServer(2)
	r.LogoutServer(2) // 2: out
	if err := r.Paired(1); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		online []uint64
		want   string
	}{
		{nil, "uid 1: login, logout, login (want it logged out)"},
		{[]uint64{1, 2}, "uid 2: login, logout (want it logged in)"},
		{[]uint64{1, 3}, "uid 3: no callback (want it logged in)"},
	} {
		if err := r.Paired(c.online...); err == nil || err.Error() != c.want {
			t.Errorf("Paired(%v) = %v, want %q", c.online, err, c.want)
		}
	}
	r.LoginServer(2) // 2: in
	r.LoginServer(2) // twice
	r.LogoutServer(4)
	err := r.Paired(1, 2)
	if err == nil || !strings.Contains(err.Error(), "uid 2: login, logout, login, login") ||
		!strings.Contains(err.Error(), "uid 4: logout (want it logged out)") {
		t.Fatalf("Paired = %v", err)
	}
	if got := r.Calls(2); len(got) != 4 || !got[0] || got[1] || !got[2] || !got[3] {
		t.Fatalf("Calls(2) = %v", got)
	}
}
