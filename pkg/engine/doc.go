// Package engine is the one place that knows the order of things: it records
// each step's intent in the store before it touches volumes or processes,
// holds a lock per instance and per image while it works on one, undoes what
// a failed step left, and reconciles store, volumes and postmasters after a
// crash or on a timer.
//
// Images, instances and backups are best understood by their lifecycles,
// below. Each status is a row's status in the metadata store (pkg/store);
// each arrow is the method that moves it, and each state says what Reconcile
// does to a row it finds in it, which is how a step cut short by a crash is
// finished or undone. A row's record comes first and goes last: a volume
// seen on disk always has its row (or, for an instance, a tombstone) by the
// time the store is read.
//
// # Images
//
// An image is a read-only copy-on-write snapshot of a Postgres data
// directory, frozen from an upload volume:
//
//	CreateImage          ──▶ pending      upload directory and empty volume upload-N made
//	UploadImage / scp        pending, failed: the archive lands in the upload directory
//	FinaliseImage        ──▶ finalising   (from pending or failed)
//	  prepare succeeds   ──▶ ready        volume image-N frozen; the upload removed
//	  prepare fails      ──▶ failed       the reason in Error; the upload removed
//	DestroyImage         ──▶ destroying   (from any status; with instances only if forced)
//	  finishImageDestroy ──▶ (row gone)   its instances, image-N, upload-N, the upload directory
//
// In each status:
//
//   - pending: CreateImage recorded it and made its upload directory (handed
//     to the scp upload account, if any) and an empty upload-N volume. A
//     restore (ImageRequest.BackupID) links the backup's archive in as its
//     upload, and fails the image if it cannot; a pull (SourceURL) keeps the
//     source_url sealed in the store, its password out of every message,
//     until the image is ready. Reconcile, at the first run after a start,
//     hands the upload directory to the upload account.
//   - finalising: FinaliseImage runs prepare (finalise.go) detached from the
//     caller, under the image's lock: the upload directory is taken back
//     from the upload account, the archive is extracted (or the source
//     pulled with pg_basebackup) into a fresh upload-N within the disk
//     reserve, Postgres is started privately on a unix socket, role draupnir
//     gets its grants, the anonymisation script (if any) and the scrub after
//     it run (each a postgres.Cluster method), Postgres shuts down cleanly,
//     and upload-N is frozen into image-N with the image's volume record.
//     A call while one runs waits for it; a ready image returns at once;
//     under the disk reserve the image keeps its status, with the reason
//     in Error. Reconcile, at the first run after a start, finds a
//     finalise no process of its own runs (sindrid died during it): it
//     stops the private postmaster, destroys what the finalise half made
//     and marks the image failed.
//   - ready: instances are cloned from image-N and it can be backed up.
//     Reconcile, at the first run after a start, marks it failed if image-N
//     is gone, and removes an upload left beside it.
//   - failed: Error says why and how to retry; the image takes a new upload
//     (or pulls again) and FinaliseImage again. Reconcile, at the first run
//     after a start, hands the upload directory to the upload account.
//   - destroying: nothing more is cloned from it and no finalise starts.
//     DestroyImage destroys its instances first (force), then image-N and
//     upload-N (each only if its volume record is the image's), then the
//     upload directory, then the row. A backup whose snapshot pins the image
//     (storage.Capabilities.SnapshotPinsSource, as on ZFS) refuses the
//     destroy with ErrBackupRunning, and DestroyImage gives the image its
//     status back.
//     Reconcile, at every run, finishes a destroy that a crash or a failure
//     cut short.
//
// # Instances
//
// An instance is a writable clone of a ready image with its own postmaster,
// port and credentials:
//
//	CreateInstance     ──▶ creating    the row, under the image's lock (image ready, limits counted)
//	  build succeeds   ──▶ running     credentials, port, clone, configure, start, client roles
//	  build fails      ──▶ (row gone)  teardown undoes each step; a tombstone stays
//	supervisor         running ──▶ stopped   its postmaster stopped while the disk was full
//	                   stopped ──▶ running   started again once space is freed
//	                   running ──▶ failed    MaxCrashes deaths within CrashWindow
//	ResetInstance      ──▶ resetting   (not while creating or destroying)
//	  reclone succeeds ──▶ running     a fresh clone, same id, port and credentials
//	  reclone fails    ──▶ failed
//	UpdateInstance         expiry and protection; the status stays
//	DestroyInstance    ──▶ destroying  (from any status; DestroyExpired for expired ones)
//	  teardown         ──▶ (row gone)  postmaster stopped, volume destroyed, a tombstone stays
//
// In each status:
//
//   - creating: CreateInstance records the row, then under the instance's
//     lock walks CreateSteps: the credentials (password and private keys,
//     sealed in the store), a free port, the clone instance-N of image-N
//     (destroyed again if its record names another installation's image),
//     the instance's record in the volume, sindri's settings, the
//     postmaster, the client roles; then running, and the record marked
//     made. A failure undoes what was done (teardown); a clone whose name
//     another volume holds only forgets the row. An undo that the metadata
//     store being out of reach stops (a failover: store.ErrUnavailable,
//     often why the creation failed) is tried again in the background until
//     the store answers (undoLater). An insert that fails may still
//     have committed (a failover ends its session between the commit
//     and the answer): its row, found by the creation's token, is
//     deleted the same way (undoUncertainCreation). Reconcile undoes a
//     creation no process runs: at the first run after a start every one, later only
//     those older than StartTimeout and a minute. A volume whose record says
//     its creation finished is left alone and reported: the store is older
//     than the volume.
//   - running: its postmaster accepts connections; the supervisor
//     (supervise.go) checks it the moment its postmaster ends (a pidfd of
//     it) and, in turn with the others, SuperviseBatch instances every
//     SupervisePeriod; it restarts one that died (at once, then with
//     backoff), kills and restarts one that answers no connection
//     MaxUnanswered times in a row (asking only a postmaster whose
//     scheduler statistics leave a doubt that it is awake, at most
//     ProbesPerTick a tick). Reconcile adopts a live
//     postmaster (same pid, the record written if missing), starts a dead
//     one, and marks the instance failed when its volume is gone or its
//     volume record names something else.
//   - stopped: the postmaster died while the disk was full (its free space
//     under the disk reserve or 1 % of the filesystem, whichever is more),
//     or could not start for want of space. Not counted as a crash: the
//     supervisor retries with backoff up to DiskRetryMax and the instance
//     keeps its port. Reconcile treats it as running; a start that fails for
//     want of space leaves it stopped.
//   - failed: Error says why (after crashes, with the log's last lines).
//     Reconcile, at every run, stops its postmaster (if the volume is its
//     own) and releases its port. ResetInstance brings it back.
//   - resetting: reclone destroys instance-N (a backup whose snapshot pins
//     it refuses: ErrBackupRunning), clones it again from the image, takes a
//     port again if the failed instance gave its up, and starts it as at
//     creation. Reconcile finishes a reset cut short, or marks it failed.
//   - destroying: teardown stops the postmaster, destroys instance-N and its
//     socket directory and deletes the row, which leaves a tombstone. A
//     volume whose record names something else is kept: only the row goes. A
//     volume pinned by a backup's snapshot stays until the backup is
//     written, then goes as an orphan. Reconcile finishes a destroy cut
//     short. DestroyExpired destroys every unprotected instance past its
//     expiry, whatever its status.
//
// # Backups
//
// A backup is a crash-consistent tar.zst of a running instance (or a ready
// image), taken without stopping it:
//
//	CreateBackup      ──▶ running     the row (limits counted), then snapshot backup-N under the source's lock
//	  snapshot fails  ──▶ failed
//	  writeBackup     ──▶ done        archive N.tar.zst in place, its size and SHA-256 recorded
//	  writeBackup     ──▶ failed      the reason in Error
//	DeleteBackup      ──▶ (row gone)  the writer stopped, archive and snapshot removed
//
// In each status:
//
//   - running: CreateBackup checks the source (an instance running, stopped
//     or failed whose volume record is its own; a ready image), flushes a
//     running instance's WAL, checks the disk reserve and counts the limits,
//     and snapshots the volume before it returns; the archive is then
//     written in the background (archive.go), renamed into place once
//     synced, and the snapshot destroyed. Reconcile marks failed a backup no
//     process of its own writes (sindrid stopped during it), unless its
//     whole archive is in place, which makes it done; it removes partial
//     files and the snapshots nothing writes from, at every run.
//   - done: OpenBackup reads it; CreateImage with its id restores it as a
//     new image. DeleteExpiredBackups deletes a done or failed backup older
//     than BackupMaxAge.
//   - failed: Error says why; only deleting is left.
//
// # Sources
//
// A source (sources.go) is a server that images are refreshed from:
//
//	CreateSource        ──▶ idle        next_refresh_at from its schedule
//	refresh             ──▶ refreshing  the image (CreateImage with its url) recorded as refreshing_image_id, then FinaliseImage
//	  image ready       ──▶ idle        last_image_id; retention destroys ready images beyond keep that no instance uses
//	  image failed      ──▶ failed      the image destroyed, the reason in Error, a retry after a doubling backoff
//	DeleteSource        ──▶ (row gone)  refused while refreshing; its images stay, without source_id
//
// In replica mode (replica.go) the source keeps a standby, made and
// looked after by RunSources, and a refresh snapshots the standby instead
// of pulling; the source is streaming (or failed) between refreshes.
//
// A source left refreshing by a crash is repaired by RunSources at start:
// a ready image is the refresh's result; anything else is destroyed and
// the refresh made again at once.
//
// # Volumes, records and tombstones
//
// Each volume holds a record of whose it is (VolumeRecordFile: the
// installation, the instance or image, and when that was created; a clone
// starts with its image's). Reconcile removes an unreferenced instance
// volume only when the store holds a tombstone of its instance and the
// record names that instance, after OrphanGrace; any other volume the store
// does not account for is kept and named in Status. When those outnumber the
// volumes it does account for (a wrong database_url, an empty database,
// another installation's or an older dump), the store does not match the
// volumes: Reconcile only sweeps what a gone sindrid left (sweep.go) and
// returns ErrStoreMismatch, Status is degraded, and neither instances nor
// backups expire until they agree. Destroy, reset and backup never act on a
// volume whose record names another instance (ErrNotItsVolume). Reconcile
// also moves the store's ids past those on disk, and prunes tombstones older
// than a week whose volume is gone.
package engine
