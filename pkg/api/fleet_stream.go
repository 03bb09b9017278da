package api

import (
	"context"
	"fmt"
	"hash"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/sindri-db/sindri/pkg/engine"
	"github.com/sindri-db/sindri/pkg/fleet"
)

// PeerVerifier checks that a request comes from a host of the fleet
// (fleet.PeerAuth): the host's name, or an error.
type PeerVerifier interface {
	Verify(r *http.Request) (host string, err error)
}

// FleetService serves the peers' routes.
type FleetService interface {
	PrepareImageSend(ctx context.Context, id int64, format string) (*engine.ImageSend, error)
}

// peerRoutePrefix is the path under which every route is the peers'
// alone: no user token or Draupnir-Version is asked for, and requirePeer
// guards each.
const peerRoutePrefix = "/fleet/"

// isPeerRoute tells the route key ("METHOD /template") of a peer route.
func isPeerRoute(key string) bool {
	_, tpl, _ := strings.Cut(key, " ")
	return strings.HasPrefix(tpl, peerRoutePrefix)
}

// requirePeer answers 403 not_a_peer to a request without a valid proof
// that a host of the fleet sent it (see fleet.PeerAuth), whatever else it
// carries (a user's token, the shared secret), and lets the others
// through. Every route under /fleet/ is behind it.
func requirePeer(peers PeerVerifier) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			host, err := peers.Verify(r)
			if err != nil {
				WriteError(w, r, fmt.Errorf("%w: %w", engine.ErrNotPeer, err))
				return
			}
			r = r.WithContext(context.WithValue(r.Context(), keyLogger, LoggerFrom(r.Context()).With("peer", host)))
			next.ServeHTTP(w, r)
		})
	}
}

// streamImage answers GET /fleet/images/{id}/stream?format=F with the
// stream of this host's copy of the image in format F (its driver's own,
// or tar.zst), then, as trailers, the count and CRC-32C of the bytes
// sent. The stream goes from the filesystem to the connection as it is
// made; a failure after the first byte aborts the connection, so that the
// receiver, without the trailers, refuses what it got.
func (h *Handlers) streamImage(w http.ResponseWriter, r *http.Request) error {
	id, err := PathID(r, "id")
	if err != nil {
		return err
	}
	format := r.URL.Query().Get("format")
	if format == "" {
		return BadRequest("format is required: the stream format the receiver takes (btrfs-send, zfs-send or tar.zst)")
	}
	send, err := h.Fleet.PrepareImageSend(r.Context(), id, format)
	if err != nil {
		return err
	}
	hdr := w.Header()
	hdr.Set("Content-Type", "application/octet-stream")
	hdr.Set("Cache-Control", "no-store")
	hdr.Set(fleet.StreamFormatHeader, send.Format)
	hdr.Set("Trailer", fleet.StreamBytesTrailer+", "+fleet.StreamCRC32CTrailer)
	w.WriteHeader(http.StatusOK)
	// The headers go now: the first bytes of a filesystem's stream may
	// take a while.
	http.NewResponseController(w).Flush()
	out := &countingHash{w: w, sum: fleet.NewStreamCRC()}
	if err := send.Send(r.Context(), out); err != nil {
		LoggerFrom(r.Context()).Error("fleet: sending an image's stream failed; aborting the response",
			"image_id", id, "format", send.Format, "sent_bytes", out.n, "err", err)
		panic(http.ErrAbortHandler)
	}
	hdr.Set(fleet.StreamBytesTrailer, strconv.FormatInt(out.n, 10))
	hdr.Set(fleet.StreamCRC32CTrailer, fleet.StreamCRCText(out.sum))
	return nil
}

// countingHash writes to w and counts and hashes what it writes.
type countingHash struct {
	w   io.Writer
	sum hash.Hash32
	n   int64
}

func (c *countingHash) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.sum.Write(p[:n])
	c.n += int64(n)
	return n, err
}
