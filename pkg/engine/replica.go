package engine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/sindri-db/sindri/pkg/postgres"
	"github.com/sindri-db/sindri/pkg/storage"
	"github.com/sindri-db/sindri/pkg/store"
)

// Replica mode: sindri keeps a streaming standby of the source in a
// volume of its own (StandbyVolume), made once with pg_basebackup (the
// same pull as a basebackup refresh) and then fed by WAL. Every pass of
// RunSources looks after it (keepStandby): it makes it when it is
// missing, starts its postmaster when it is not running (after a crash of
// the standby or of sindrid), records its lag, and makes it again from a
// new base backup when it has not streamed for StandbyResyncAfter (it
// fell off the source's WAL, or the source was replaced). A refresh
// snapshots the standby's volume (copy-on-write, at once) and makes the
// image of the snapshot as a branch is made: copied, started privately
// (which ends the recovery: the copy is promoted), the script and the
// scrub, frozen. The standby's password is never on disk: its passfile is
// in RunDir, written at each start.

// StandbyVolume names a replica-mode source's standby.
func StandbyVolume(sourceID int64) string { return standbyPrefix + strconv.FormatInt(sourceID, 10) }

const standbyPrefix = "standby-"

// StandbyCatchUpTimeout bounds how long a refresh waits for the standby
// to replay what the source had written when the refresh began.
const StandbyCatchUpTimeout = time.Minute

// DefaultStandbyResyncAfter is how long a standby may go without
// streaming before it is made again from a new base backup.
const DefaultStandbyResyncAfter = 10 * time.Minute

// standbyState is what this process knows of a standby between passes.
type standbyState struct {
	wg    sync.WaitGroup // keepStandby runs
	mu    sync.Mutex
	busy  map[int64]bool      // a pass is looking after it
	since map[int64]time.Time // not streaming since
}

func (s *standbyState) claim(id int64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.busy == nil {
		s.busy, s.since = map[int64]bool{}, map[int64]time.Time{}
	}
	if s.busy[id] {
		return false
	}
	s.busy[id] = true
	return true
}

func (s *standbyState) release(id int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.busy, id)
}

// notStreaming records that standby id does not stream, and returns since
// when; streaming clears it.
func (s *standbyState) notStreaming(id int64, now time.Time, streaming bool) time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	if streaming {
		delete(s.since, id)
		return time.Time{}
	}
	if t, ok := s.since[id]; ok {
		return t
	}
	s.since[id] = now
	return now
}

func (e *Engine) standbySocketDir(sourceID int64) string {
	return filepath.Join(e.opts.RunDir, StandbyVolume(sourceID))
}

const standbyPort = 5432 // only names the socket file

// keepStandby makes, starts and measures source src's standby (see
// above); it runs in the background, one at a time per source.
func (e *Engine) keepStandby(ctx context.Context, src store.Source) {
	if !e.standbys.claim(src.ID) {
		return
	}
	defer e.standbys.release(src.ID)
	status, why, lagBytes, lagSeconds := e.standbyOnce(ctx, src)
	since := e.standbys.notStreaming(src.ID, e.now(), status == store.SourceStreaming)
	resync := e.opts.StandbyResyncAfter
	if resync <= 0 {
		resync = DefaultStandbyResyncAfter
	}
	if status != store.SourceStreaming && e.now().Sub(since) > resync {
		e.log.Warn("engine: a standby has not streamed for too long; making it again from a new base backup",
			"source_id", src.ID, "since", since, "why", why)
		e.dropStandby(ctx, src.ID)
		e.standbys.notStreaming(src.ID, e.now(), true)
	}
	if err := e.opts.Store.SetSourceStream(ctx, src.ID, status, why, lagBytes, lagSeconds); err != nil && !errors.Is(err, store.ErrNotFound) {
		e.log.Error("engine: recording a standby's stream", "source_id", src.ID, "err", err)
	}
}

// standbyOnce is one look after the standby: its status and, when it
// answers, its lag.
func (e *Engine) standbyOnce(ctx context.Context, src store.Source) (store.SourceStatus, string, *int64, *float64) {
	vol, err := e.opts.Storage.Get(ctx, StandbyVolume(src.ID))
	if errors.Is(err, storage.ErrNotFound) {
		if vol, err = e.makeStandby(ctx, src); err != nil {
			return store.SourceFailed, "making the standby: " + err.Error(), nil, nil
		}
	} else if err != nil {
		return store.SourceFailed, err.Error(), nil, nil
	}
	if st, err := postgres.Status(vol.Path); err != nil || !st.Alive {
		if err := e.startStandby(ctx, src, vol.Path); err != nil {
			return store.SourceFailed, "starting the standby: " + err.Error(), nil, nil
		}
	}
	return e.measureStandby(ctx, src)
}

// makeStandby pulls a base backup of the source into a new standby volume.
func (e *Engine) makeStandby(ctx context.Context, src store.Source) (storage.Entry, error) {
	if err := e.CheckDiskReserve(ctx, 0, "a source's standby"); err != nil {
		return storage.Entry{}, err
	}
	url, err := e.opts.Store.SourceURL(ctx, src.ID)
	if err != nil {
		return storage.Entry{}, err
	}
	name := StandbyVolume(src.ID)
	vol, err := e.opts.Storage.Create(ctx, name)
	if err != nil {
		return storage.Entry{}, err
	}
	e.log.Info("engine: making a source's standby", "source_id", src.ID, "source", src.Name)
	if err := e.pullInto(ctx, name, url, vol.Path); err != nil {
		e.dropStandby(ctx, src.ID)
		return storage.Entry{}, err
	}
	for _, leftover := range []string{"postmaster.pid", "postmaster.opts", "recovery.signal"} {
		os.Remove(filepath.Join(vol.Path, leftover))
	}
	if err := os.WriteFile(filepath.Join(vol.Path, "standby.signal"), nil, 0o600); err != nil {
		e.dropStandby(ctx, src.ID)
		return storage.Entry{}, err
	}
	if err := e.opts.Owner.Chown(vol.Path, true); err != nil {
		e.dropStandby(ctx, src.ID)
		return storage.Entry{}, err
	}
	return vol, os.Chmod(vol.Path, 0o700)
}

// standbyCluster is source id's standby as a cluster: on a private
// socket, streaming from primary (set when it starts).
func (e *Engine) standbyCluster(id int64, dataDir, primary string) (*postgres.Cluster, error) {
	binDir, err := postgres.BinDirFor(e.opts.BinPattern, dataDir)
	if err != nil {
		return nil, err
	}
	return &postgres.Cluster{
		BinDir: binDir, DataDir: dataDir, SocketDir: e.standbySocketDir(id), Port: standbyPort, Owner: e.opts.Owner,
		Settings: postgres.Settings{ListenAddresses: "", SharedBuffers: e.opts.SharedBuffers,
			ClusterName: StandbyVolume(id), PrimaryConnInfo: primary},
	}, nil
}

// startStandby starts the standby's postmaster on a private socket, with
// the source's url (its password in a passfile in RunDir) as
// primary_conninfo.
func (e *Engine) startStandby(ctx context.Context, src store.Source, dataDir string) error {
	rawURL, err := e.opts.Store.SourceURL(ctx, src.ID)
	if err != nil {
		return err
	}
	parsed, err := parseSource(rawURL)
	if err != nil {
		return err
	}
	sock := e.standbySocketDir(src.ID)
	if err := os.MkdirAll(sock, 0o700); err != nil {
		return err
	}
	if err := e.opts.Owner.Chown(sock, false); err != nil {
		return err
	}
	primary, err := parsed.StandbyConnInfo(filepath.Join(sock, "pgpass"), "sindri-"+StandbyVolume(src.ID), e.opts.Owner)
	if err != nil {
		return err
	}
	c, err := e.standbyCluster(src.ID, dataDir, primary)
	if err != nil {
		return err
	}
	if err := c.Configure(); err != nil {
		return err
	}
	p, err := c.Start()
	if err != nil {
		return err
	}
	ready, cancel := context.WithTimeout(ctx, e.opts.StartTimeout)
	defer cancel()
	if err := c.WaitReady(ready, p); err != nil {
		return err
	}
	e.log.Info("engine: standby started", "source_id", src.ID, "pid", p.PID)
	return nil
}

// measureStandby asks the standby how it streams and how far behind the
// source it is (postgres.StandbyLag).
func (e *Engine) measureStandby(ctx context.Context, src store.Source) (store.SourceStatus, string, *int64, *float64) {
	c, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	vol, err := e.opts.Storage.Get(ctx, StandbyVolume(src.ID))
	if err != nil {
		return store.SourceFailed, "the standby is gone: " + err.Error(), nil, nil
	}
	cl, err := e.standbyCluster(src.ID, vol.Path, "")
	if err != nil {
		return store.SourceFailed, err.Error(), nil, nil
	}
	lag, err := cl.StandbyLag(c)
	if err != nil {
		return store.SourceFailed, "the standby does not answer: " + err.Error(), nil, nil
	}
	if lag.Receiver != "streaming" {
		return store.SourceFailed, fmt.Sprintf("the standby does not stream from the source (its WAL receiver is %s); it retries, and is made again if it cannot catch up", lag.Receiver), lag.LagBytes, lag.LagSeconds
	}
	return store.SourceStreaming, "", lag.LagBytes, lag.LagSeconds
}

// dropStandby stops and destroys source id's standby.
func (e *Engine) dropStandby(ctx context.Context, id int64) {
	ctx = context.WithoutCancel(ctx)
	if err := e.stopVolume(ctx, StandbyVolume(id)); err != nil {
		e.log.Error("engine: stopping a standby", "source_id", id, "err", err)
	}
	if err := e.opts.Storage.Destroy(ctx, StandbyVolume(id)); err != nil && !errors.Is(err, storage.ErrNotFound) {
		e.log.Error("engine: destroying a standby", "source_id", id, "err", err)
	}
	os.RemoveAll(e.standbySocketDir(id))
}

// snapshotStandby records the image of a replica-mode refresh and
// snapshots the standby into its BranchVolume; the caller finalises it.
func (e *Engine) snapshotStandby(ctx context.Context, src store.Source, name string, at time.Time) (store.Image, error) {
	vol, err := e.opts.Storage.Get(ctx, StandbyVolume(src.ID))
	if err != nil {
		return store.Image{}, fmt.Errorf("the source's standby is not made yet (%v); it is being made", err)
	}
	if st, err := postgres.Status(vol.Path); err != nil || !st.Alive {
		return store.Image{}, errors.New("the source's standby is not running; it is being started")
	}
	// An image of a standby that has lost its source would be old data
	// under a new date: refused, the refresh retried.
	if status, why, _, _ := e.measureStandby(ctx, src); status != store.SourceStreaming {
		return store.Image{}, errors.New(why)
	}
	if err := e.CheckDiskReserve(ctx, 0, "a refresh"); err != nil {
		return store.Image{}, err
	}
	// What the source had written when the refresh began is in the
	// image: the standby replays it first (within StandbyCatchUpTimeout;
	// beyond, the image holds what it replayed by then). Then a
	// restartpoint: the copy replays only the WAL since.
	if cl, err := e.standbyCluster(src.ID, vol.Path, ""); err == nil {
		c, cancel := context.WithTimeout(ctx, StandbyCatchUpTimeout)
		caught, err := cl.CatchUp(c)
		cancel()
		if !caught {
			e.log.Warn("engine: the standby did not catch up before its snapshot; the image holds what it replayed", "source_id", src.ID, "err", err)
		}
		if err := cl.Checkpoint(ctx); err != nil {
			e.log.Warn("engine: a restartpoint of the standby before its snapshot", "source_id", src.ID, "err", err)
		}
	}
	img, err := e.opts.Store.CreateImage(ctx, store.ImageInput{
		Name: name, BackedUpAt: at, AnonymisationScript: src.AnonymisationScript, SourceID: src.ID, FromSnapshot: true,
	})
	if err != nil {
		return store.Image{}, err
	}
	unlock := e.imageLocks.Lock(img.ID)
	defer unlock()
	if _, err := e.opts.Storage.Snapshot(ctx, StandbyVolume(src.ID), BranchVolume(img.ID)); err != nil {
		return img, fmt.Errorf("snapshotting the standby: %w", err)
	}
	if err := os.MkdirAll(e.uploadDir(img.ID), 0o750); err != nil {
		return img, err
	}
	return img, nil
}
