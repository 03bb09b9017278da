package fleet_test

import (
	"context"
	"crypto/x509"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/sindri-db/sindri/pkg/fleet"
)

const imagesTestSecret = "a-fleet-secret-of-at-least-32-characters-0002"

// peerServer is a TLS host that streams payload to peers, announcing
// announce (the bytes' count and CRC-32C when nil) after it; abort cuts
// the answer after half the payload.
func peerServer(t *testing.T, payload []byte, announce func(n int, sum string) (string, string), abort bool) *httptest.Server {
	t.Helper()
	auth := fleet.NewPeerAuth("a", []byte(imagesTestSecret))
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := auth.Verify(r); err != nil {
			http.Error(w, err.Error(), http.StatusForbidden)
			return
		}
		w.Header().Set(fleet.StreamFormatHeader, r.URL.Query().Get("format"))
		w.Header().Set("Trailer", fleet.StreamBytesTrailer+", "+fleet.StreamCRC32CTrailer)
		if abort {
			w.Write(payload[:len(payload)/2])
			panic(http.ErrAbortHandler)
		}
		w.Write(payload)
		sum := fleet.NewStreamCRC()
		sum.Write(payload)
		n, s := strconv.Itoa(len(payload)), fleet.StreamCRCText(sum)
		if announce != nil {
			n, s = announce(len(payload), s)
		}
		w.Header().Set(fleet.StreamBytesTrailer, n)
		w.Header().Set(fleet.StreamCRC32CTrailer, s)
	}))
	t.Cleanup(srv.Close)
	return srv
}

func roots(srv *httptest.Server) *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	return pool
}

// readStream opens image 7's stream and reads it whole; the error of the
// open, the read, or the check.
func readStream(t *testing.T, c *fleet.Client, srv *httptest.Server) (string, error) {
	t.Helper()
	s, err := c.OpenImage(context.Background(), srv.URL, 7, "btrfs-send")
	if err != nil {
		return "", err
	}
	defer s.Close()
	data, err := io.ReadAll(s)
	if err != nil {
		return string(data), err
	}
	return string(data), s.Check()
}

// The client trusts a peer's certificate only when its roots sign it,
// and takes a stream as whole only when it matches what the sender
// announced after it.
func TestPeerClientVerifiesTLSAndTheAnnouncedStream(t *testing.T) {
	payload := []byte(strings.Repeat("btrfs-stream\x00 and then the image's bytes ", 20000))
	auth := fleet.NewPeerAuth("b", []byte(imagesTestSecret))

	good := peerServer(t, payload, nil, false)
	if data, err := readStream(t, fleet.NewClient(auth, roots(good)), good); err != nil || data != string(payload) {
		t.Fatalf("a whole stream from a trusted peer: %d bytes, %v", len(data), err)
	}
	if _, err := readStream(t, fleet.NewClient(auth, nil), good); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("a peer whose certificate the system's roots do not sign: %v; want a certificate error", err)
	}
	other := fleet.NewPeerAuth("b", []byte("another-secret-of-at-least-32-characters-000"))
	if _, err := readStream(t, fleet.NewClient(other, roots(good)), good); err == nil || !strings.Contains(err.Error(), "403") {
		t.Errorf("a request signed under another secret: %v; want the peer's 403", err)
	}

	for name, srv := range map[string]*httptest.Server{
		"another size":     peerServer(t, payload, func(n int, sum string) (string, string) { return strconv.Itoa(n + 1), sum }, false),
		"another checksum": peerServer(t, payload, func(n int, sum string) (string, string) { return strconv.Itoa(n), "00000000" }, false),
		"no announcement":  peerServer(t, payload, func(int, string) (string, string) { return "", "" }, false),
		"cut short":        peerServer(t, payload, nil, true),
	} {
		if _, err := readStream(t, fleet.NewClient(auth, roots(srv)), srv); err == nil {
			t.Errorf("%s: the stream was taken as whole", name)
		}
	}
}
