package fleet

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/sindri-db/sindri/pkg/engine"
)

// The peer route of an image's stream, and what its answer carries
// besides the stream: the format in a header, and after the last byte,
// as HTTP trailers, the count of bytes sent and their CRC-32C (Castagnoli,
// 8 hex digits), which the receiver compares with what it read before it
// marks its copy ready. The CRC shows a stream cut, padded or garbled on
// its way (each format also carries checksums of its own); the peer proof
// and TLS say who sent it. CRC-32C, computed by the CPU's instruction,
// costs a fraction of SHA-256's time on a stream of gigabytes.
const (
	StreamFormatHeader  = "Sindri-Stream-Format"
	StreamBytesTrailer  = "Sindri-Stream-Bytes"
	StreamCRC32CTrailer = "Sindri-Stream-Crc32c"
)

// ImageStreamPath is the path of the peer route that streams image id,
// with the format asked for (a storage.Stream* format) as the query.
func ImageStreamPath(id int64, format string) string {
	return "/fleet/images/" + strconv.FormatInt(id, 10) + "/stream?format=" + url.QueryEscape(format)
}

// Client makes this host's requests to its peers, each signed with the
// fleet's peer proof (PeerAuth). Peers' TLS certificates are verified
// against roots (the system's, and fleet.peer_ca_file's); a peer_url is
// plain http only where the configuration allows it (loopback, or outside
// production).
type Client struct {
	auth *PeerAuth
	http *http.Client
}

// NewClient returns the client of the host whose proofs auth makes,
// trusting roots (nil: the system's) in its peers' certificates.
func NewClient(auth *PeerAuth, roots *x509.CertPool) *Client {
	t := &http.Transport{
		Proxy:                 nil, // peers talk directly
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:       &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 30 * time.Second,
		IdleConnTimeout:       90 * time.Second,
		MaxIdleConnsPerHost:   4,
		// The streams are compressed already, or are filesystems' streams.
		DisableCompression: true,
		ForceAttemptHTTP2:  true,
	}
	// No overall timeout: a stream of an image takes as long as its size
	// needs; the receiver gives up on a stream that stalls.
	return &Client{auth: auth, http: &http.Client{Transport: t}}
}

// NewStreamCRC returns the checksum of a stream (see StreamCRC32CTrailer).
func NewStreamCRC() hash.Hash32 { return crc32.New(crc32.MakeTable(crc32.Castagnoli)) }

// StreamCRCText is the checksum as its trailer carries it.
func StreamCRCText(h hash.Hash32) string { return fmt.Sprintf("%08x", h.Sum32()) }

// OpenImage asks the host at peerURL for the stream of its copy of image
// id in format. The stream is checked as it is read (see imageStream).
func (c *Client) OpenImage(ctx context.Context, peerURL string, id int64, format string) (engine.ImageStream, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(peerURL, "/")+ImageStreamPath(id, format), nil)
	if err != nil {
		return nil, err
	}
	c.auth.Sign(req)
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return nil, fmt.Errorf("%s answered %s: %s", peerURL, resp.Status, oneLine(string(body)))
	}
	if got := resp.Header.Get(StreamFormatHeader); got != format {
		resp.Body.Close()
		return nil, fmt.Errorf("%s sent a %q stream, not the %q asked for", peerURL, got, format)
	}
	return &imageStream{resp: resp, sum: NewStreamCRC()}, nil
}

// imageStream counts and hashes what it reads of a peer's answer.
type imageStream struct {
	resp  *http.Response
	sum   hash.Hash32
	n     int64
	ended bool
}

func (s *imageStream) Read(p []byte) (int, error) {
	n, err := s.resp.Body.Read(p)
	s.sum.Write(p[:n])
	s.n += int64(n)
	if errors.Is(err, io.EOF) {
		s.ended = true
	}
	return n, err
}

func (s *imageStream) Close() error { return s.resp.Body.Close() }

// Check tells whether the whole stream was read and is what the sender
// announced after it.
func (s *imageStream) Check() error {
	if !s.ended {
		return errors.New("the stream was not read to its end")
	}
	announced := s.resp.Trailer.Get(StreamBytesTrailer)
	sum := s.resp.Trailer.Get(StreamCRC32CTrailer)
	if announced == "" || sum == "" {
		return errors.New("the sender did not announce the stream's size and checksum after it: it did not finish sending")
	}
	if announced != strconv.FormatInt(s.n, 10) {
		return fmt.Errorf("the sender sent %s bytes, and %d were received", announced, s.n)
	}
	if got := StreamCRCText(s.sum); got != strings.ToLower(sum) {
		return fmt.Errorf("the stream's CRC-32C is %s as received and %s as sent", got, sum)
	}
	return nil
}

func oneLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexAny(s, "\r\n"); i >= 0 {
		s = s[:i]
	}
	return s
}
