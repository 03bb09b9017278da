package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sindri-db/sindri/pkg/ingest"
	"github.com/sindri-db/sindri/pkg/storage"
	"github.com/sindri-db/sindri/pkg/storage/portable"
	"github.com/sindri-db/sindri/pkg/store"
)

// Images on every host of a fleet.
//
// The host that makes an image holds its first copy (the store records it
// ready with the image). Every other active host's Replicator then finds
// the ready image without a ready copy of its own, records its copy
// receiving, asks a live host that holds a ready copy for the image's
// stream (PeerImages: a request signed with the fleet's peer proof), and
// receives it into its storage, read-only. The stream is the
// filesystem's own between hosts of one driver (btrfs send, zfs send) and
// tar.zst between drivers of different kinds (package storage/portable).
// The copy is marked ready only once checked: the received entry is an
// image (read-only, and refusing a write on a driver with immutable
// images), its volume record, if any, names the image, and the stream was
// whole: as many bytes, with the same CRC-32C, as the sender announced
// after the last byte (ImageStream.Check). A receive that fails is
// recorded failed, with the reason, and tried again after a backoff.
//
// Destroying an image destroys it everywhere: the host that destroys it
// removes its own copy and then the image's row, which takes the copies'
// rows with it; every other host's Replicator then removes its copy, a
// volume named after an image the store no longer lists whose record
// names that image of this installation (ids are never handed out twice,
// so the record is proof). A copy that instances of this host were cloned
// from stays until they are gone.

// PeerImages fetches images from the other hosts of the fleet.
type PeerImages interface {
	// OpenImage asks the host at peerURL for the stream of its copy of
	// image id, in format (a storage.Stream* format).
	OpenImage(ctx context.Context, peerURL string, id int64, format string) (ImageStream, error)
}

// ImageStream is an image's stream from a peer.
type ImageStream interface {
	io.ReadCloser
	// Check, once the stream is read to its end, tells whether it came
	// whole: the bytes and their CRC-32C that the sender announced after
	// the last byte match those read.
	Check() error
}

// ImageSend is a ready image's copy on this host, to be sent to a peer.
type ImageSend struct {
	ImageID int64
	// Format is the stream's format (a storage.Stream* format).
	Format string
	e      *Engine
}

// PrepareImageSend checks that this host can send image id in format
// (its driver's StreamFormat, or tar.zst whatever the driver): the image
// is ready and has its copy here. ErrNotFound for an unknown image or one
// without a copy here, ErrImageNotReady, ErrInvalid for another format.
func (e *Engine) PrepareImageSend(ctx context.Context, id int64, format string) (*ImageSend, error) {
	own := e.opts.Storage.Capabilities().StreamFormat
	if format != own && format != storage.StreamTarZstd {
		return nil, fmt.Errorf("%w: this host sends %s or %s streams, not %q", ErrInvalid, own, storage.StreamTarZstd, format)
	}
	img, err := e.getImage(ctx, id)
	if err != nil {
		return nil, classify(err)
	}
	if img.Status != store.ImageReady {
		return nil, fmt.Errorf("%w: image %d is %s", ErrImageNotReady, id, img.Status)
	}
	entry, err := e.opts.Storage.Get(ctx, ImageVolume(id))
	if errors.Is(err, storage.ErrNotFound) || (err == nil && entry.Kind != storage.KindImage) {
		return nil, fmt.Errorf("%w: this host holds no copy of image %d", ErrNotFound, id)
	}
	if err != nil {
		return nil, err
	}
	return &ImageSend{ImageID: id, Format: format, e: e}, nil
}

// Send writes the stream to w. A destroy of the image waits until it
// returns (see storage.Driver.Send).
func (s *ImageSend) Send(ctx context.Context, w io.Writer) error {
	d := s.e.opts.Storage
	name := ImageVolume(s.ImageID)
	if s.Format == d.Capabilities().StreamFormat {
		return d.Send(ctx, name, w)
	}
	return portable.Send(ctx, d, name, w)
}

// ReplicationOptions configure a Replicator.
type ReplicationOptions struct {
	// Host is this host's name in the fleet.
	Host string
	// Peers fetches streams from the other hosts.
	Peers PeerImages
	// DownTimeout: a host whose heartbeat is older is not asked.
	DownTimeout time.Duration
	// Concurrency is how many images are received at a time (default 1).
	Concurrency int
	// A failed receive is tried again after RetryMin, doubled with each
	// failure in a row up to RetryMax (defaults 10 s and 10 min).
	RetryMin, RetryMax time.Duration
	// Every is the time between passes of Run (default 5 s).
	Every time.Duration
	// Observer, if set, is told each receive's outcome and, at each pass,
	// how many images wait for their copy on this host (metrics).
	Observer ReplicationObserver
}

// ReplicationObserver is told what a Replicator does (package metrics
// implements it).
type ReplicationObserver interface {
	// ObserveReplication gets each receive of an image: whether it ended
	// with a checked copy, the bytes of the stream read (a failed receive
	// counts what it read before failing) and, for a copy, how long the
	// receive took.
	ObserveReplication(ok bool, bytes int64, d time.Duration)
	// SetImagesAwaitingReplication gets, at each pass, the number of
	// images ready in the fleet whose copy on this host is not ready.
	SetImagesAwaitingReplication(n int)
}

// Replicator copies the fleet's images onto this host and removes the
// copies of destroyed ones (see the comment at the top of this file).
type Replicator struct {
	e    *Engine
	opts ReplicationOptions

	mu      sync.Mutex
	running map[int64]bool
	retries map[int64]retry
	wg      sync.WaitGroup
}

type retry struct {
	failures int
	next     time.Time
}

// NewReplicator returns the replicator of this host; nothing runs until
// Pass or Run.
func (e *Engine) NewReplicator(opts ReplicationOptions) *Replicator {
	if opts.Concurrency <= 0 {
		opts.Concurrency = 1
	}
	if opts.RetryMin <= 0 {
		opts.RetryMin = 10 * time.Second
	}
	if opts.RetryMax < opts.RetryMin {
		opts.RetryMax = max(10*time.Minute, opts.RetryMin)
	}
	if opts.Every <= 0 {
		opts.Every = 5 * time.Second
	}
	return &Replicator{e: e, opts: opts, running: map[int64]bool{}, retries: map[int64]retry{}}
}

// Run makes a pass every opts.Every until ctx ends, then waits for the
// receives under way, which ctx's end cancels.
func (r *Replicator) Run(ctx context.Context) {
	defer r.Wait()
	t := time.NewTicker(r.opts.Every)
	defer t.Stop()
	for {
		if err := r.Pass(ctx); err != nil && ctx.Err() == nil {
			r.e.log.Warn("engine: replication pass", "host", r.opts.Host, "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Wait waits for the receives that passes started.
func (r *Replicator) Wait() { r.wg.Wait() }

// Pass removes the copies of destroyed images and what cut-short receives
// left, then starts the receives that are due, up to Concurrency at a
// time, in the background under ctx (Wait waits for them). Nothing is
// done while the last reconcile found that the store does not describe
// the volumes.
func (r *Replicator) Pass(ctx context.Context) error {
	e := r.e
	if e.storeMismatch.Load() {
		return fmt.Errorf("%w: no image is received or removed until they agree", ErrStoreMismatch)
	}
	// Volumes first: an image's row is made before its volume, so a volume
	// listed here whose image is not in the list read after was destroyed.
	entries, err := e.opts.Storage.List(ctx)
	if err != nil {
		return err
	}
	images, err := e.opts.Store.ListImages(ctx)
	if err != nil {
		return err
	}
	copies, err := e.opts.Store.ListImageCopies(ctx)
	if err != nil {
		return err
	}
	hosts, err := e.opts.Store.ListHosts(ctx, r.opts.DownTimeout)
	if err != nil {
		return err
	}
	errs := []error{r.sweep(ctx, entries, images)}

	byName := map[string]store.Host{}
	for _, h := range hosts {
		byName[h.Name] = h
	}
	local := map[string]bool{}
	for _, v := range entries {
		if v.Kind == storage.KindImage {
			local[v.Name] = true
		}
	}
	mine := map[int64]store.ImageCopy{}
	holders := map[int64][]store.Host{}
	for _, c := range copies {
		switch {
		case c.Host == r.opts.Host:
			mine[c.ImageID] = c
		case c.Status == store.CopyReady && byName[c.Host].State != store.HostDown && byName[c.Host].Name != "":
			holders[c.ImageID] = append(holders[c.ImageID], byName[c.Host])
		}
	}
	if r.opts.Observer != nil {
		awaiting := 0
		for _, img := range images {
			if img.Status == store.ImageReady && mine[img.ID].Status != store.CopyReady {
				awaiting++
			}
		}
		r.opts.Observer.SetImagesAwaitingReplication(awaiting)
	}
	me, ok := byName[r.opts.Host]
	if !ok || me.State != store.HostActive {
		return errors.Join(errs...) // not registered yet, or draining: nothing to receive
	}
	// Oldest first: the images most likely to be asked for.
	sort.Slice(images, func(i, j int) bool { return images[i].ID < images[j].ID })
	now := e.now()
	for _, img := range images {
		if img.Status != store.ImageReady {
			continue
		}
		c, has := mine[img.ID]
		if has && c.Status == store.CopyReady {
			if local[ImageVolume(img.ID)] || r.isRunning(img.ID) {
				continue
			}
			// Frozen since the list was made (a finalise), or gone?
			if _, err := e.opts.Storage.Get(ctx, ImageVolume(img.ID)); !errors.Is(err, storage.ErrNotFound) {
				continue
			}
			// The copy the store calls ready is not on disk (removed by
			// hand?): receive it again.
			e.log.Error("engine: this host's ready copy of an image has no volume; receiving it again", "image_id", img.ID, "host", r.opts.Host)
			errs = append(errs, e.opts.Store.SetImageCopy(ctx, img.ID, r.opts.Host, store.CopyFailed, "the copy's volume is gone from this host"))
			continue
		}
		if len(holders[img.ID]) == 0 || !r.due(img.ID, now) {
			continue
		}
		if !r.start(ctx, img, holders[img.ID]) {
			break // as many receives as allowed run
		}
	}
	return errors.Join(errs...)
}

func (r *Replicator) isRunning(id int64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.running[id]
}

// due tells whether image id may be received now: no receive of it runs
// and its backoff, after failures, has passed. A copy recorded receiving
// that no receive of this process runs was cut short by a crash: it is
// due at once.
func (r *Replicator) due(id int64, now time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return !r.running[id] && !now.Before(r.retries[id].next)
}

// start begins the receive of img in the background, unless Concurrency
// receives run already (false).
func (r *Replicator) start(ctx context.Context, img store.Image, holders []store.Host) bool {
	r.mu.Lock()
	if len(r.running) >= r.opts.Concurrency {
		r.mu.Unlock()
		return false
	}
	r.running[img.ID] = true
	r.mu.Unlock()
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		start := time.Now()
		var read atomic.Int64
		err := r.receive(ctx, img, holders, &read)
		if r.opts.Observer != nil {
			r.opts.Observer.ObserveReplication(err == nil, read.Load(), time.Since(start))
		}
		r.mu.Lock()
		delete(r.running, img.ID)
		if err == nil {
			delete(r.retries, img.ID)
		} else {
			rt := r.retries[img.ID]
			rt.failures++
			wait := r.opts.RetryMin << min(rt.failures-1, 20)
			rt.next = r.e.now().Add(min(wait, r.opts.RetryMax))
			r.retries[img.ID] = rt
		}
		r.mu.Unlock()
		if err != nil {
			r.e.log.Error("engine: receiving an image failed; it is tried again later", "image_id", img.ID, "host", r.opts.Host, "err", err)
			if rerr := r.e.opts.Store.SetImageCopy(context.WithoutCancel(ctx), img.ID, r.opts.Host, store.CopyFailed, err.Error()); rerr != nil && !errors.Is(rerr, store.ErrNotFound) {
				r.e.log.Error("engine: recording a failed receive", "image_id", img.ID, "err", rerr)
			}
			return
		}
		r.e.log.Info("engine: image received", "image_id", img.ID, "host", r.opts.Host, "took", time.Since(start).Round(time.Millisecond).String())
	}()
	return true
}

// holder chooses the host to receive from: one of this host's driver if
// any (its stream is the filesystem's own), the first by name otherwise.
func (r *Replicator) holder(holders []store.Host) store.Host {
	for _, h := range holders {
		if h.StorageDriver == r.e.opts.Storage.Name() {
			return h
		}
	}
	return holders[0]
}

// receive copies img from one of holders and marks this host's copy
// ready once checked, adding the bytes of the stream it reads to read.
// On failure it leaves no image behind.
func (r *Replicator) receive(ctx context.Context, img store.Image, holders []store.Host, read *atomic.Int64) error {
	e := r.e
	d := e.opts.Storage
	name := ImageVolume(img.ID)
	if err := e.opts.Store.SetImageCopy(ctx, img.ID, r.opts.Host, store.CopyReceiving, ""); err != nil {
		return err
	}
	// An image of that name that is not a ready copy was received by a
	// process that stopped before checking it: it goes, and is received
	// again.
	if v, err := d.Get(ctx, name); err == nil {
		if err := e.checkImageVolume(ctx, v.Path, img); err != nil {
			return err
		}
		e.log.Warn("engine: removing an unchecked copy of an image before receiving it again", "image_id", img.ID)
		if err := d.Destroy(ctx, name); err != nil && !errors.Is(err, storage.ErrNotFound) {
			return fmt.Errorf("removing an unchecked copy of image %d: %w", img.ID, err)
		}
	} else if !errors.Is(err, storage.ErrNotFound) {
		return err
	}
	what := fmt.Sprintf("receiving image %d", img.ID)
	if err := e.CheckDiskReserve(ctx, img.SizeBytes, what); err != nil {
		return err
	}
	from := r.holder(holders)
	format := d.Capabilities().StreamFormat
	if from.StorageDriver != d.Name() {
		format = storage.StreamTarZstd
	}
	e.log.Info("engine: receiving an image", "image_id", img.ID, "host", r.opts.Host, "from", from.Name, "format", format)
	guarded, stop := e.guardReserve(ctx, what)
	defer stop()
	opened, err := r.opts.Peers.OpenImage(guarded, from.PeerURL, img.ID, format)
	if err != nil {
		return fmt.Errorf("asking host %q for image %d: %w", from.Name, img.ID, err)
	}
	defer opened.Close()
	stream := &countedStream{ImageStream: opened, read: read}
	var entry storage.Entry
	if format == d.Capabilities().StreamFormat {
		entry, err = d.Receive(guarded, name, stream)
	} else {
		var limits ingest.Limits
		limits, err = r.receiveLimits(ctx)
		if err == nil {
			entry, err = portable.Receive(guarded, d, name, stream, limits)
		}
	}
	if cause := reserveCause(guarded); cause != nil {
		err = cause
	}
	if err != nil {
		return fmt.Errorf("receiving image %d from host %q as a %s stream: %w", img.ID, from.Name, format, err)
	}
	if err := r.check(ctx, img, entry, stream); err != nil {
		if derr := d.Destroy(context.WithoutCancel(ctx), name); derr != nil && !errors.Is(derr, storage.ErrNotFound) {
			err = errors.Join(err, fmt.Errorf("removing the refused copy: %w", derr))
		}
		return fmt.Errorf("image %d received from host %q refused: %w", img.ID, from.Name, err)
	}
	err = e.opts.Store.SetImageCopy(ctx, img.ID, r.opts.Host, store.CopyReady, "")
	if errors.Is(err, store.ErrNotFound) {
		// Destroyed meanwhile: the copy goes too.
		if derr := d.Destroy(context.WithoutCancel(ctx), name); derr != nil && !errors.Is(derr, storage.ErrNotFound) {
			return derr
		}
		return nil
	}
	return err
}

// countedStream adds the bytes read from a stream to read.
type countedStream struct {
	ImageStream
	read *atomic.Int64
}

func (s *countedStream) Read(p []byte) (int, error) {
	n, err := s.ImageStream.Read(p)
	s.read.Add(int64(n))
	return n, err
}

// receiveLimits bound what a tar.zst stream may expand to: the free space
// less what an extraction leaves (see extractReserve).
func (r *Replicator) receiveLimits(ctx context.Context) (ingest.Limits, error) {
	c, err := r.e.opts.Storage.Capacity(ctx)
	if err != nil {
		return ingest.Limits{}, err
	}
	limits := ingest.Limits{MaxBytes: c.FreeBytes - extractReserve(c.TotalBytes), MaxEntries: ingest.DefaultMaxEntries}
	if limits.MaxBytes <= 0 {
		return limits, fmt.Errorf("%w: the filesystem has %s free, no more than the %s kept for the instances",
			ErrNoDiskSpace, size(c.FreeBytes), size(extractReserve(c.TotalBytes)))
	}
	return limits, nil
}

// maxTrailingBytes is what a stream may carry after the image's end, that
// the receiver did not read (none is expected).
const maxTrailingBytes = 64 << 10

// check refuses a received copy that is not what the sender sent: see the
// comment at the top of this file.
func (r *Replicator) check(ctx context.Context, img store.Image, entry storage.Entry, stream ImageStream) error {
	n, err := io.Copy(io.Discard, io.LimitReader(stream, maxTrailingBytes+1))
	if err != nil {
		return fmt.Errorf("reading the end of the stream: %w", err)
	}
	if n > maxTrailingBytes {
		return errors.New("the stream goes on past the image's end")
	}
	if err := stream.Check(); err != nil {
		return err
	}
	d := r.e.opts.Storage
	got, err := d.Get(ctx, entry.Name)
	if err != nil {
		return fmt.Errorf("the received copy: %w", err)
	}
	if got.Kind != storage.KindImage {
		return fmt.Errorf("the received copy %q is a %s, not a read-only image", got.Name, got.Kind)
	}
	if err := r.e.checkImageVolume(ctx, got.Path, img); err != nil {
		return err
	}
	if d.Capabilities().ImmutableImages {
		probe := filepath.Join(got.Path, ".sindri-write-probe")
		if err := os.WriteFile(probe, nil, 0o600); err == nil {
			os.Remove(probe)
			return fmt.Errorf("the received copy %q takes writes: it is not frozen", got.Name)
		}
	}
	return nil
}

// sweep removes this host's copies of destroyed images (see the comment
// at the top of this file) and the volumes that tar.zst receives cut
// short by a crash left (portable.StageVolume) when no receive of theirs
// runs.
func (r *Replicator) sweep(ctx context.Context, entries []storage.Entry, images []store.Image) error {
	e := r.e
	listed := map[int64]bool{}
	for _, img := range images {
		listed[img.ID] = true
	}
	installation, err := e.installationID(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, v := range entries {
		if base, ok := strings.CutSuffix(v.Name, portable.StageVolume("")); ok && v.Kind == storage.KindVolume {
			if id, kind := sindriVolume(storage.Entry{Name: base}); kind == recordImage && strings.HasPrefix(base, "image-") && !r.isRunning(id) {
				e.log.Warn("engine: removing what a cut-short receive of an image left", "image_id", id, "volume", v.Name)
				if err := e.opts.Storage.Destroy(ctx, v.Name); err != nil && !errors.Is(err, storage.ErrNotFound) {
					errs = append(errs, err)
				}
			}
			continue
		}
		id, kind := sindriVolume(v)
		if kind != recordImage || v.Kind != storage.KindImage || v.Name != ImageVolume(id) || listed[id] {
			continue
		}
		rec, recorded, err := readVolumeRecord(v.Path)
		if err != nil || !recorded || rec.Installation != installation || rec.Kind != recordImage || rec.ID != id {
			continue // not proven a copy of the destroyed image: kept, and reconcile reports it
		}
		err = e.opts.Storage.Destroy(ctx, v.Name)
		switch {
		case err == nil:
			e.log.Info("engine: removed this host's copy of a destroyed image", "image_id", id, "host", r.opts.Host)
		case errors.Is(err, storage.ErrHasClones):
			e.log.Warn("engine: a destroyed image's copy is kept while this host's instances of it remain", "image_id", id)
		case !errors.Is(err, storage.ErrNotFound):
			errs = append(errs, fmt.Errorf("removing the copy of destroyed image %d: %w", id, err))
		}
	}
	return errors.Join(errs...)
}
