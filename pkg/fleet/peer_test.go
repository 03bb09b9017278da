package fleet

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestPeerProof(t *testing.T) {
	secret := []byte(strings.Repeat("s", 64))
	a, b := NewPeerAuth("host-a", secret), NewPeerAuth("host-b", secret)
	req := httptest.NewRequest("GET", "/fleet/images/3/stream?since=2", nil)
	a.Sign(req)
	if host, err := b.Verify(req); err != nil || host != "host-a" {
		t.Fatalf("a signed request: host %q, err %v; want host-a", host, err)
	}

	outsider := NewPeerAuth("host-a", []byte(strings.Repeat("t", 64)))
	forged := httptest.NewRequest("GET", "/fleet/images/3/stream?since=2", nil)
	outsider.Sign(forged)

	otherPath := httptest.NewRequest("GET", "/fleet/images/4/stream?since=2", nil)
	otherPath.Header = req.Header.Clone()

	otherMethod := httptest.NewRequest("DELETE", "/fleet/images/3/stream?since=2", nil)
	otherMethod.Header = req.Header.Clone()

	renamed := httptest.NewRequest("GET", "/fleet/images/3/stream?since=2", nil)
	renamed.Header.Set(PeerHeader, strings.Replace(req.Header.Get(PeerHeader), "host-a", "host-c", 1))

	old := httptest.NewRequest("GET", "/fleet/images/3/stream?since=2", nil)
	stale := NewPeerAuth("host-a", secret)
	stale.now = func() time.Time { return time.Now().Add(-2 * PeerProofMaxAge) }
	stale.Sign(old)

	bare := httptest.NewRequest("GET", "/fleet/images/3/stream?since=2", nil)
	garbled := httptest.NewRequest("GET", "/fleet/images/3/stream?since=2", nil)
	garbled.Header.Set(PeerHeader, "host-a 12 zz")

	for name, r := range map[string]*http.Request{
		"another secret": forged, "another path": otherPath, "another method": otherMethod,
		"another host name": renamed, "too old": old, "no header": bare, "garbled": garbled,
	} {
		if host, err := b.Verify(r); !errors.Is(err, ErrNotPeer) {
			t.Errorf("%s: host %q, err %v; want ErrNotPeer", name, host, err)
		}
	}
}
