package engine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/sindri-db/sindri/pkg/operation"
	"github.com/sindri-db/sindri/pkg/postgres"
	"github.com/sindri-db/sindri/pkg/storage"
	"github.com/sindri-db/sindri/pkg/store"
)

// StrayGrace is how old a socket directory or an upload's temporary file
// that nothing of this process uses must be before the sweep removes it:
// one made a moment ago may not be registered yet.
const StrayGrace = time.Minute

// strayScanEvery is how often, after the first reconcile, the sweep looks
// for the operation processes of a sindrid that is gone: it reads every
// process's environment, 5,000 of them beside 1,000 instances, most of a
// reconcile's time. Those of the sindrid this one replaced are found by
// the first; an operation on a subject still ends any stray on it first
// (endStrayOperations with the subject).
const strayScanEvery = 10 * time.Minute

// sweep ends and removes what a sindrid that is gone left behind, which
// needs nothing of the store: its operation processes (pg_basebackup,
// psql), the private postmasters of its finalises, their socket
// directories, and the temporary files of its uploads.
func (e *Engine) sweep(ctx context.Context, entries []storage.Entry) error {
	var strays error
	if last := e.strayScan.Load(); last == 0 || time.Since(time.Unix(0, last)) >= strayScanEvery {
		e.strayScan.Store(time.Now().UnixNano())
		strays = e.endStrayOperations(ctx, "")
	}
	return errors.Join(
		strays,
		e.stopStrayFinalises(ctx, entries),
		e.sweepImageSocketDirs(),
		e.sweepUploadTemps(),
	)
}

// endStrayOperations kills the operation processes (pkg/operation) of
// this installation (and fleet host) whose sindrid is gone, for subject only ("image-4") or all when subject is "",
// and waits until they are gone. An operation on subject that another
// live sindrid runs is ErrOperationRunning: it is never run twice at once.
func (e *Engine) endStrayOperations(ctx context.Context, subject string) error {
	scope, err := e.operationScope(ctx)
	if err != nil {
		return err
	}
	busy, err := operation.EndStrays(ctx, scope, subject, func(p operation.Process) {
		e.log.Warn("engine: ending a process whose sindrid is gone", "pid", p.PID, "operation", p.Operation, "owner", p.Owner)
	})
	if busy != nil {
		return fmt.Errorf("%w: %q (pid %d, started by the sindrid %s)", ErrOperationRunning, busy.Operation, busy.PID, busy.Owner)
	}
	return err
}

// operationName names an operation of this installation on subject, for
// its processes' marks (operation.Name).
func (e *Engine) operationName(ctx context.Context, verb, subject string) (string, error) {
	scope, err := e.operationScope(ctx)
	if err != nil {
		return "", err
	}
	return operation.Name(scope, verb, subject), nil
}

// operationScope is the scope of this sindrid's operations: the
// installation, and in a fleet this host of it, so that two hosts of a
// fleet on one machine never end or wait for each other's.
func (e *Engine) operationScope(ctx context.Context) (string, error) {
	installation, err := e.installationID(ctx)
	if host := e.opts.Store.FleetHost(); err == nil && host != "" {
		installation += "@" + host
	}
	return installation, err
}

// lockIdleImage takes the lock of an image that this process is not
// finalising; ok is false when it is, or something else holds the lock.
func (e *Engine) lockIdleImage(id int64) (unlock func(), ok bool) {
	unlock, ok = e.imageLocks.TryLock(id)
	if !ok {
		return nil, false
	}
	e.mu.Lock()
	run := e.finalising[id]
	e.mu.Unlock()
	if run != nil {
		unlock()
		return nil, false
	}
	return unlock, true
}

// stopStrayFinalises stops the postmasters on upload volumes of images
// that no finalise of this process works on: a finalise's private
// postmaster outlives a sindrid that died during it.
func (e *Engine) stopStrayFinalises(ctx context.Context, entries []storage.Entry) error {
	var errs []error
	for _, v := range entries {
		rest, ok := strings.CutPrefix(v.Name, "upload-")
		id, err := strconv.ParseInt(rest, 10, 64)
		if !ok || err != nil || v.Kind != storage.KindVolume {
			continue
		}
		unlock, ok := e.lockIdleImage(id)
		if !ok {
			continue
		}
		if pids := postgres.Postmasters(v.Path); len(pids) > 0 {
			e.log.Warn("engine: stopping the private postmaster of a finalise that no sindrid runs", "image_id", id, "pids", pids)
			errs = append(errs, postgres.StopAll(ctx, v.Path, 10*time.Second))
		}
		unlock()
	}
	return errors.Join(errs...)
}

// sweepImageSocketDirs removes the socket directories of finalises
// (RunDir/image-N) that this process does not run.
func (e *Engine) sweepImageSocketDirs() error {
	dirs, err := e.staleRunDirs()
	if err != nil {
		return err
	}
	var errs []error
	for _, de := range dirs {
		rest, ok := strings.CutPrefix(de.Name(), "image-")
		id, err := strconv.ParseInt(rest, 10, 64)
		if !ok || err != nil || id <= 0 {
			continue
		}
		unlock, ok := e.lockIdleImage(id)
		if !ok {
			continue
		}
		e.log.Info("engine: removing the socket directory of a finalise that no sindrid runs", "image_id", id)
		errs = append(errs, os.RemoveAll(filepath.Join(e.opts.RunDir, de.Name())))
		unlock()
	}
	return errors.Join(errs...)
}

// sweepInstanceSocketDirs removes the socket directories (RunDir/N) of
// instances that have neither a record nor a volume. It needs a store
// that matches the volumes: reconcile calls it only then.
func (e *Engine) sweepInstanceSocketDirs(ctx context.Context, volumes map[string]storage.Entry) error {
	dirs, err := e.staleRunDirs()
	if err != nil {
		return err
	}
	var errs []error
	for _, de := range dirs {
		id, err := strconv.ParseInt(de.Name(), 10, 64)
		if err != nil || id <= 0 || strconv.FormatInt(id, 10) != de.Name() {
			continue
		}
		if _, ok := volumes[InstanceVolume(id)]; ok {
			continue
		}
		unlock, ok := e.locks.TryLock(id)
		if !ok {
			continue
		}
		_, err = e.opts.Store.GetInstance(ctx, id)
		if errors.Is(err, store.ErrNotFound) && e.gone(ctx, InstanceVolume(id)) {
			e.log.Info("engine: removing the socket directory of an instance that is gone", "instance_id", id)
			err = os.RemoveAll(e.socketDir(id))
		} else if errors.Is(err, store.ErrNotFound) {
			err = nil
		}
		errs = append(errs, err)
		unlock()
	}
	return errors.Join(errs...)
}

// staleRunDirs lists the directories in RunDir (not links) last changed
// more than StrayGrace ago.
func (e *Engine) staleRunDirs() ([]os.DirEntry, error) {
	if e.opts.RunDir == "" {
		return nil, nil
	}
	entries, err := os.ReadDir(e.opts.RunDir)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []os.DirEntry
	for _, de := range entries {
		if !de.IsDir() {
			continue
		}
		if fi, err := de.Info(); err == nil && time.Since(fi.ModTime()) > StrayGrace {
			out = append(out, de)
		}
	}
	return out, nil
}

// sweepUploadTemps removes, from each image's upload directory, the
// temporary files of HTTP uploads that no upload of this process is
// receiving (an upload cut short by a crash) and that are older than
// StrayGrace. The upload account may write those directories: only
// files and links of that name go, a link itself and never its target.
func (e *Engine) sweepUploadTemps() error {
	if e.opts.UploadsDir == "" {
		return nil
	}
	images, err := os.ReadDir(e.opts.UploadsDir)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, img := range images {
		if _, err := strconv.ParseInt(img.Name(), 10, 64); err != nil || !img.IsDir() {
			continue
		}
		dir := filepath.Join(e.opts.UploadsDir, img.Name())
		files, err := os.ReadDir(dir)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, f := range files {
			path := filepath.Join(dir, f.Name())
			if !strings.HasPrefix(f.Name(), UploadTempPrefix) || !(f.Type().IsRegular() || f.Type()&os.ModeSymlink != 0) {
				continue
			}
			e.mu.Lock()
			receiving := e.uploading[path]
			e.mu.Unlock()
			if receiving {
				continue
			}
			if fi, err := os.Lstat(path); err != nil || time.Since(fi.ModTime()) <= StrayGrace {
				continue
			}
			e.log.Info("engine: removing the file of an upload cut short", "image_id", img.Name(), "file", f.Name())
			if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}
