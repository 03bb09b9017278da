package engine

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/sindri-db/sindri/pkg/postgres"
	"github.com/sindri-db/sindri/pkg/storage"
	"github.com/sindri-db/sindri/pkg/store"
)

// PasswordRole is the role an instance's database_url logs in as.
const PasswordRole = "sindri"

// InstanceRequest is what a caller asks for.
type InstanceRequest struct {
	ImageID   int64
	Owner     string
	ExpiresAt *time.Time
	Protected bool
}

// CreateInstance clones the image and starts Postgres on the clone. It
// returns once the instance accepts connections. On failure it undoes what
// it did; after a crash, Reconcile does.
func (e *Engine) CreateInstance(ctx context.Context, req InstanceRequest) (store.Instance, error) {
	inst, err := e.recordInstance(ctx, req)
	if err != nil {
		return store.Instance{}, err
	}
	if e.placedElsewhere(inst) {
		return e.createElsewhere(ctx, inst)
	}
	if e.inFleet() {
		if err := e.checkPlacedReserve(ctx, inst); err != nil {
			return store.Instance{}, err
		}
	}
	return e.createRecorded(ctx, inst)
}

// createRecorded builds a recorded instance on this host: its volume,
// its postmaster; on failure it undoes what it did.
func (e *Engine) createRecorded(ctx context.Context, inst store.Instance) (store.Instance, error) {
	unlock := e.locks.Lock(inst.ID)
	defer unlock()
	return e.createLocked(ctx, inst)
}

// createLocked is createRecorded under the instance's lock.
func (e *Engine) createLocked(ctx context.Context, inst store.Instance) (store.Instance, error) {
	steps := e.createSteps(inst.ID, true)
	steps.step("recorded")
	started := time.Now()
	if err := e.build(ctx, &inst, steps); err != nil {
		e.log.Error("engine: instance creation failed; undoing", "instance_id", inst.ID, "err", err)
		undo := e.teardown
		if errors.Is(err, errVolumeTaken) {
			undo = e.forget
		}
		if uerr := undo(context.WithoutCancel(ctx), inst.ID); uerr != nil {
			e.log.Error("engine: undoing a failed creation", "instance_id", inst.ID, "err", uerr)
			if errors.Is(uerr, store.ErrUnavailable) {
				e.undoLater(inst.ID, undo)
			}
		}
		e.auditFailure(ctx, "create_instance", "instance", inst.ID, err)
		return store.Instance{}, err
	}
	e.cloneTimes.add(time.Since(started))
	if e.opts.ObserveInstanceReady != nil {
		e.opts.ObserveInstanceReady(time.Since(started))
	}
	e.log.Info("engine: instance ready", "instance_id", inst.ID, "image_id", inst.ImageID,
		"port", inst.Port, "duration_ms", time.Since(started).Milliseconds())
	e.audit(ctx, "create_instance", "instance", inst.ID, "ok", "")
	return inst, nil
}

// undoLater undoes, in the background, a creation whose undo failed
// because the metadata store was out of reach (the store failing is most
// often why the creation failed too: a failover).
func (e *Engine) undoLater(id int64, undo func(context.Context, int64) error) {
	e.untilTheStoreAnswers(func(ctx context.Context) (int64, error) {
		unlock := e.locks.Lock(id)
		defer unlock()
		return id, undo(ctx, id)
	})
}

// undoUncertainCreation deletes, in the background, the row of a creation
// whose insert failed without saying whether it committed (its session
// ended between the commit and the answer, as a failover ends it). The
// row, found by its token, has nothing built for it: this process never
// learnt its id.
func (e *Engine) undoUncertainCreation(token string) {
	e.untilTheStoreAnswers(func(ctx context.Context) (int64, error) {
		inst, err := e.opts.Store.InstanceCreatedAs(ctx, token)
		if errors.Is(err, store.ErrNotFound) {
			return 0, nil // it did not commit
		}
		if err != nil {
			return 0, err
		}
		unlock := e.locks.Lock(inst.ID)
		defer unlock()
		if err := e.opts.Store.DeleteInstance(ctx, inst.ID); err != nil && !errors.Is(err, store.ErrNotFound) {
			return inst.ID, err
		}
		return inst.ID, nil
	})
}

// untilTheStoreAnswers runs undo in the background, again with backoff
// while it fails with store.ErrUnavailable, so that what a creation cut
// short left goes within seconds of the store's return rather than at the
// reconcile that finds the row abandoned (StartTimeout and a minute after
// its creation); it gives up at that point, leaving it to reconcile. undo
// returns the instance's id, once known (0 before).
func (e *Engine) untilTheStoreAnswers(undo func(context.Context) (int64, error)) {
	giveUp := time.Now().Add(e.opts.StartTimeout + time.Minute)
	go func() {
		wait := 500 * time.Millisecond
		for {
			time.Sleep(wait)
			wait = min(wait*2, 5*time.Second)
			id, err := undo(context.Background())
			switch {
			case err == nil:
				if id != 0 {
					e.log.Info("engine: undid a failed creation once the metadata store answered again", "instance_id", id)
				}
				return
			case !errors.Is(err, store.ErrUnavailable) || time.Now().After(giveUp):
				e.log.Error("engine: undoing a failed creation; reconcile will", "instance_id", id, "err", err)
				return
			}
		}
	}()
}

// recordInstance checks the image and records the instance under the
// image's lock, so that a destroy of the image either sees the instance or
// has already made the image unusable.
func (e *Engine) recordInstance(ctx context.Context, req InstanceRequest) (store.Instance, error) {
	unlock := e.imageLocks.Lock(req.ImageID)
	defer unlock()
	img, err := e.getImage(ctx, req.ImageID)
	if err != nil {
		return store.Instance{}, err
	}
	if img.Status != store.ImageReady {
		return store.Instance{}, fmt.Errorf("%w: image %d is %s", ErrImageNotReady, img.ID, img.Status)
	}
	input := store.InstanceInput{
		ImageID: req.ImageID, Owner: req.Owner, ExpiresAt: req.ExpiresAt, Protected: req.Protected,
		Quota: e.instanceQuota(req.Owner), CreationToken: rand.Text(),
	}
	if e.inFleet() {
		// The placement weighs every host's disk; the chosen host checks
		// its own reserve as it builds.
		e.creationBegun.Store(true)
		inst, err := e.placeInstance(ctx, input)
		e.undoIfUncertain(input.CreationToken, err)
		return inst, err
	}
	if err := e.CheckDiskReserve(ctx, 0, "a new instance"); err != nil {
		e.auditFailure(ctx, "create_instance", "image", req.ImageID, err)
		return store.Instance{}, err
	}
	// The owner's instances are counted in the insert's transaction: a
	// refusal leaves nothing behind, and concurrent creations cannot pass
	// the limit together.
	e.creationBegun.Store(true)
	inst, err := e.opts.Store.CreateInstance(ctx, input)
	if err != nil {
		err = e.quotaRefusal(ctx, err)
		if errors.Is(err, ErrQuotaExceeded) {
			e.auditFailure(ctx, "create_instance", "image", req.ImageID, err)
		}
	}
	e.undoIfUncertain(input.CreationToken, err)
	return inst, err
}

// undoIfUncertain undoes the insert of a creation that failed with err:
// it may have committed all the same. A refusal (a quota, no host for it)
// or a missing image commits nothing.
func (e *Engine) undoIfUncertain(token string, err error) {
	var refused *refusal
	if err == nil || errors.As(err, &refused) || errors.Is(err, store.ErrNotFound) {
		return
	}
	e.undoUncertainCreation(token)
}

func (e *Engine) build(ctx context.Context, inst *store.Instance, steps *createSteps) error {
	creds, err := newCredentials(e.opts.PublicHostname)
	if err != nil {
		return err
	}
	if err := e.opts.Store.SetInstanceCredentials(ctx, inst.ID, creds); err != nil {
		return err
	}
	inst.Credentials = creds
	steps.step("credentials")

	if inst.Port, err = e.allocatePort(ctx, inst.ID); err != nil {
		return err
	}
	steps.step("port")

	vol, err := e.opts.Storage.Clone(ctx, ImageVolume(inst.ImageID), InstanceVolume(inst.ID))
	switch {
	case errors.Is(err, storage.ErrNotFound):
		return fmt.Errorf("%w: image %d is gone", ErrImageNotReady, inst.ImageID)
	case errors.Is(err, storage.ErrExists):
		// Not this creation's: the store handed out an id that a volume
		// already has (a database that does not match the volumes).
		return fmt.Errorf("%w: %w: instance %d's volume name is taken: %w", ErrStoreMismatch, errVolumeTaken, inst.ID, err)
	case err != nil:
		return fmt.Errorf("cloning image %d: %w", inst.ImageID, err)
	}
	// The clone starts with its image's record: an image of another
	// installation (whose store lists one of the same id) is not cloned.
	if why, err := e.notThisImage(ctx, vol.Path, inst.ImageID); err != nil || why != "" {
		if derr := e.opts.Storage.Destroy(context.WithoutCancel(ctx), vol.Name); derr != nil {
			err = errors.Join(err, derr)
		}
		if err == nil {
			err = fmt.Errorf("%w: image %d's volume records %s", ErrNotItsVolume, inst.ImageID, why)
		}
		return err
	}
	if err := e.takeFreshClone(ctx, vol.Path, *inst); err != nil {
		return err
	}
	steps.step("cloned")

	if err := e.start(ctx, *inst, steps); err != nil {
		return err
	}
	if err := e.opts.Store.SetInstanceStatus(ctx, inst.ID, store.InstanceRunning, ""); err != nil {
		return err
	}
	inst.Status = store.InstanceRunning
	e.watch(inst.ID)
	if err := e.recordInstanceVolume(ctx, vol.Path, *inst, true); err != nil {
		// Not fatal: the instance runs; reconcile marks it made.
		e.log.Error("engine: recording an instance made in its volume", "instance_id", inst.ID, "err", err)
	}
	return nil
}

// takeFreshClone makes the new clone at dir, not started yet, the
// instance's: its record, and none of the statistics an image made before
// finalise forgot them holds (postgres.ForgetStatistics).
func (e *Engine) takeFreshClone(ctx context.Context, dir string, inst store.Instance) error {
	if err := e.recordInstanceVolume(ctx, dir, inst, false); err != nil {
		return err
	}
	return postgres.ForgetStatistics(dir)
}

// start configures and starts the instance's postmaster and waits until it
// accepts connections with the client roles set up. A first start (a
// creation or a reset) names its steps.
func (e *Engine) start(ctx context.Context, inst store.Instance, first *createSteps) error {
	vol, err := e.opts.Storage.Get(ctx, InstanceVolume(inst.ID))
	if err != nil {
		return err
	}
	if err := e.claimInstanceVolume(ctx, vol.Path, inst); err != nil {
		return err
	}
	c := e.cluster(inst, vol.Path)
	if c.BinDir, err = postgres.BinDirFor(e.opts.BinPattern, vol.Path); err != nil {
		return err
	}
	if err := os.MkdirAll(c.SocketDir, 0o700); err != nil {
		return err
	}
	if err := e.opts.Owner.Chown(c.SocketDir, false); err != nil {
		return err
	}
	// The clone's root came from the image; Postgres wants its data
	// directory private to its owner.
	if err := e.opts.Owner.Chown(vol.Path, false); err != nil {
		return err
	}
	if err := os.Chmod(vol.Path, 0o700); err != nil {
		return err
	}
	if err := c.Configure(); err != nil {
		return err
	}
	first.step("configured")
	// Hashed while the postmaster starts, on the other CPU.
	verifier := make(chan error, 1)
	var passwordVerifier string
	go func() {
		var err error
		passwordVerifier, err = postgres.PasswordVerifier(inst.Password)
		verifier <- err
	}()
	p, err := c.Start()
	if err != nil {
		return err
	}
	if err := e.opts.Store.SetInstancePID(ctx, inst.ID, p.PID); err != nil {
		return err
	}
	first.step("started")
	ready, cancel := context.WithTimeout(ctx, e.opts.StartTimeout)
	defer cancel()
	session, err := c.Ready(ready, p)
	if err != nil {
		return err
	}
	defer session.Close(context.WithoutCancel(ctx))
	first.step("accepting")
	if err := <-verifier; err != nil {
		return err
	}
	// At every start, not only the first: the roles are written with an
	// asynchronous commit (no WAL flush to wait for on a create), which a
	// crash in the next moments may lose; the start after it writes them
	// again.
	if err := session.SetUpClientRoles(ctx, PasswordRole, passwordVerifier, e.opts.AllowSuperuser); err != nil {
		return err
	}
	first.step("ready")
	return nil
}

// cluster is how the instance's postmaster runs on its volume at dataDir
// ("" for work over its socket alone: Answers, FlushWAL); start finds its
// binaries.
func (e *Engine) cluster(inst store.Instance, dataDir string) *postgres.Cluster {
	certs := postgres.Certificates{
		CA: inst.CACertificate, ServerCert: inst.ServerCertificate, ServerKey: inst.ServerKey,
		ClientCert: inst.ClientCertificate, ClientKey: inst.ClientKey,
	}
	return &postgres.Cluster{
		DataDir: dataDir, SocketDir: e.socketDir(inst.ID), Port: inst.Port, Owner: e.opts.Owner,
		Settings: postgres.Settings{
			ListenAddresses: "*", SharedBuffers: e.opts.SharedBuffers, TLS: &certs,
			PasswordRole: PasswordRole, ClusterName: InstanceVolume(inst.ID), Clone: true,
		},
	}
}

func newCredentials(hostname string) (store.Credentials, error) {
	hosts := []string{hostname}
	for _, h := range []string{"localhost", "127.0.0.1"} {
		if h != hostname {
			hosts = append(hosts, h)
		}
	}
	certs, err := postgres.NewCertificates(hosts)
	if err != nil {
		return store.Credentials{}, err
	}
	secret := make([]byte, 24)
	if _, err := rand.Read(secret); err != nil {
		return store.Credentials{}, err
	}
	return store.Credentials{
		Username:          PasswordRole,
		Password:          base64.RawURLEncoding.EncodeToString(secret),
		CACertificate:     certs.CA,
		ServerCertificate: certs.ServerCert,
		ServerKey:         certs.ServerKey,
		ClientCertificate: certs.ClientCert,
		ClientKey:         certs.ClientKey,
	}, nil
}

// allocatePort gives the instance a free port of the configured range.
func (e *Engine) allocatePort(ctx context.Context, id int64) (int, error) {
	port, err := e.opts.Store.AllocatePort(ctx, id, e.opts.MinPort, e.opts.MaxPort, portIsFree)
	if errors.Is(err, store.ErrPortsExhausted) {
		return 0, fmt.Errorf("%w in [%d, %d)", ErrNoPort, e.opts.MinPort, e.opts.MaxPort)
	}
	return port, err
}

// portIsFree checks by binding that nothing listens on the port, on every
// address (instances listen on all of them).
func portIsFree(port int) bool {
	ln, err := net.Listen("tcp", fmt.Sprintf(":%d", port))
	if err != nil {
		return false
	}
	ln.Close()
	return true
}

// GetInstance reads one instance; ErrNotFound when there is none.
func (e *Engine) GetInstance(ctx context.Context, id int64) (store.Instance, error) {
	inst, err := e.opts.Store.GetInstance(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return inst, fmt.Errorf("%w: instance %d", ErrNotFound, id)
	}
	return inst, err
}

// DestroyInstance stops the instance's postmaster, destroys its volume and
// deletes its record, which frees its port.
func (e *Engine) DestroyInstance(ctx context.Context, id int64) error {
	unlock := e.locks.Lock(id)
	defer unlock()
	if inst, err := e.opts.Store.GetInstance(ctx, id); errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("%w: instance %d", ErrNotFound, id)
	} else if err != nil {
		return err
	} else if err := e.onThisHost(inst); err != nil {
		return err
	}
	if err := e.opts.Store.SetInstanceStatus(ctx, id, store.InstanceDestroying, ""); err != nil {
		return err
	}
	if err := e.teardown(ctx, id); err != nil {
		e.auditFailure(ctx, "destroy_instance", "instance", id, err)
		return err
	}
	e.audit(ctx, "destroy_instance", "instance", id, "ok", "")
	return nil
}

// teardown removes whatever an instance has, in the reverse order of
// creation; each step tolerates what is already gone. A volume whose
// record says it is not this instance's is left alone (reconcile reports
// it): only the record goes.
func (e *Engine) teardown(ctx context.Context, id int64) error {
	e.unwatch(id)
	name := InstanceVolume(id)
	if why, err := e.notItsVolume(ctx, id); err != nil {
		return err
	} else if why != "" {
		e.log.Error("engine: keeping a volume that is not this instance's; only its record goes", "instance_id", id, "volume", name, "why", why)
		return e.forget(ctx, id)
	}
	if err := e.stopVolume(ctx, name); err != nil {
		return err
	}
	if err := e.opts.Storage.Destroy(ctx, name); errors.Is(err, storage.ErrHasClones) {
		// Where snapshots pin their source (ZFS), a backup's snapshot pins
		// the volume while the backup is written; the volume, stopped and
		// unreferenced, is then an orphan that reconcile removes.
		e.log.Info("engine: volume kept until its backup is written", "volume", name)
	} else if err != nil && !errors.Is(err, storage.ErrNotFound) {
		return fmt.Errorf("destroying volume %s: %w", name, err)
	}
	if err := os.RemoveAll(e.socketDir(id)); err != nil {
		return err
	}
	if err := e.opts.Store.DeleteInstance(ctx, id); err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	e.log.Info("engine: instance destroyed", "instance_id", id)
	return nil
}

// forget deletes an instance's record (which frees its port) and nothing
// else: its volume, if any, is another's.
func (e *Engine) forget(ctx context.Context, id int64) error {
	e.unwatch(id)
	if err := e.opts.Store.DeleteInstance(ctx, id); err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	e.log.Info("engine: instance record deleted; its volume name belongs to another", "instance_id", id)
	return nil
}

// notItsVolume tells why the instance's volume is not its own, by the
// volume's record; "" when it is, has no record, or is gone.
func (e *Engine) notItsVolume(ctx context.Context, id int64) (why string, err error) {
	vol, err := e.opts.Storage.Get(ctx, InstanceVolume(id))
	if errors.Is(err, storage.ErrNotFound) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	inst, err := e.opts.Store.GetInstance(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	return e.volumeNotIts(ctx, vol, inst)
}

// volumeNotIts is notItsVolume of a volume and an instance read already.
func (e *Engine) volumeNotIts(ctx context.Context, vol storage.Entry, inst store.Instance) (why string, err error) {
	id := inst.ID
	installation, err := e.installationID(ctx)
	if err != nil {
		return "", err
	}
	rec, ok, err := readVolumeRecord(vol.Path)
	switch {
	case err != nil:
		return err.Error(), nil
	case !ok, rec.is(installation, recordInstance, id, inst.CreatedAt),
		rec.Installation == installation && rec.Kind == recordImage && rec.ID == inst.ImageID:
		return "", nil
	}
	return fmt.Sprintf("%s records %s", vol.Name, rec), nil
}

// stopVolume stops a postmaster running on the volume, if any.
func (e *Engine) stopVolume(ctx context.Context, name string) error {
	vol, err := e.opts.Storage.Get(ctx, name)
	if errors.Is(err, storage.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := postgres.StopAll(ctx, vol.Path, 10*time.Second); err != nil {
		return fmt.Errorf("stopping the postmaster of %s: %w", name, err)
	}
	return nil
}
