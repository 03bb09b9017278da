package api

import (
	"context"
	"hash"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/sindri-db/sindri/pkg/engine"
	"github.com/sindri-db/sindri/pkg/fleet"
)

// FleetService serves the peers' routes.
type FleetService interface {
	PrepareImageSend(ctx context.Context, id int64, format string) (*engine.ImageSend, error)
}

// peerRoutePrefix is the path under which every route is the peers'
// alone: no user token or Draupnir-Version is asked for, and requirePeer
// (peer.go) guards each.
const peerRoutePrefix = "/fleet/"

// isPeerRoute tells the route key ("METHOD /template") of a peer route.
func isPeerRoute(key string) bool {
	_, tpl, _ := strings.Cut(key, " ")
	return strings.HasPrefix(tpl, peerRoutePrefix)
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
	send, err := h.ImageSender.PrepareImageSend(r.Context(), id, format)
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
