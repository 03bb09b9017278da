package fleet

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// PeerHeader carries a request's proof that a host of the fleet sent it:
// "<host name> <unix seconds> <hex HMAC-SHA256>", the MAC taken with the
// fleet secret over the host name, the time, the method and the request
// URI. The body is not covered (it may be a stream of gigabytes); peers
// talk over TLS, and a proof is refused once it is older than PeerProofMaxAge.
const PeerHeader = "Sindri-Fleet-Peer"

// PeerProofMaxAge is how far a proof's time may be from the receiver's
// clock, either way.
const PeerProofMaxAge = 60 * time.Second

// ErrNotPeer is the answer for a request without a valid proof.
var ErrNotPeer = errors.New("fleet: not a request from a host of this fleet")

// PeerAuth signs this host's requests to its peers and checks theirs.
type PeerAuth struct {
	name   string
	secret []byte
	now    func() time.Time
}

// NewPeerAuth returns the signer and checker of host name with the fleet
// secret.
func NewPeerAuth(name string, secret []byte) *PeerAuth {
	return &PeerAuth{name: name, secret: append([]byte(nil), secret...), now: time.Now}
}

// Name is this host's name.
func (p *PeerAuth) Name() string { return p.name }

// Sign sets PeerHeader on req, replacing any proof it carried.
func (p *PeerAuth) Sign(req *http.Request) {
	ts := strconv.FormatInt(p.now().Unix(), 10)
	req.Header.Set(PeerHeader, p.name+" "+ts+" "+hex.EncodeToString(p.mac(p.name, ts, req.Method, req.URL.RequestURI())))
}

// Verify returns the name of the host that signed r, or an error wrapping
// ErrNotPeer that says what is wrong with the proof.
func (p *PeerAuth) Verify(r *http.Request) (string, error) {
	proof := r.Header.Get(PeerHeader)
	if proof == "" {
		return "", fmt.Errorf("%w: no %s header", ErrNotPeer, PeerHeader)
	}
	fields := strings.Fields(proof)
	if len(fields) != 3 {
		return "", fmt.Errorf("%w: malformed %s header", ErrNotPeer, PeerHeader)
	}
	host, ts, sum := fields[0], fields[1], fields[2]
	got, err := hex.DecodeString(sum)
	if err != nil {
		return "", fmt.Errorf("%w: malformed %s header", ErrNotPeer, PeerHeader)
	}
	if !hmac.Equal(got, p.mac(host, ts, r.Method, r.URL.RequestURI())) {
		return "", fmt.Errorf("%w: the proof does not match the fleet secret", ErrNotPeer)
	}
	secs, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return "", fmt.Errorf("%w: malformed time in %s header", ErrNotPeer, PeerHeader)
	}
	if age := p.now().Sub(time.Unix(secs, 0)); age > PeerProofMaxAge || age < -PeerProofMaxAge {
		return "", fmt.Errorf("%w: the proof is %s from this host's clock", ErrNotPeer, age.Round(time.Second))
	}
	return host, nil
}

func (p *PeerAuth) mac(host, ts, method, uri string) []byte {
	m := hmac.New(sha256.New, p.secret)
	for _, s := range []string{host, ts, method, uri} {
		m.Write([]byte(s))
		m.Write([]byte{0})
	}
	return m.Sum(nil)
}
