package engine

import "errors"

// The engine's classified errors, for errors.Is; the API maps each to a
// status and a code. Each is returned wrapped, with a message that names
// the image, instance or backup and says what to do.
var (
	// ErrNotFound: no image, instance or backup of that id.
	ErrNotFound = errors.New("not found")
	// ErrInvalid: a request that makes no sense, or that the state of its
	// subject refuses (a negative TTL, a past expiry, a source_url that is
	// no connection string, a script on a restore of user-written data, a
	// reset of an instance being created).
	ErrInvalid = errors.New("invalid request")
	// ErrTTLTooLong: a requested lifetime above the configured maximum.
	ErrTTLTooLong = errors.New("requested lifetime is longer than the maximum")

	// ErrImageNotReady: an instance or a backup of an image that is not
	// ready (or whose volume is gone).
	ErrImageNotReady = errors.New("image is not ready")
	// ErrImageNotPending: an upload into, or a finalise of, an image that
	// no longer takes one (finalising, ready, destroying).
	ErrImageNotPending = errors.New("image no longer accepts uploads")
	// ErrImageHasInstances: a destroy of an image with instances, not
	// forced.
	ErrImageHasInstances = errors.New("image has instances")
	// ErrFinaliseFailed: finalising failed; the image is failed, with the
	// reason.
	ErrFinaliseFailed = errors.New("finalising the image failed")
	// ErrUploadInterrupted: the client's side of an upload broke off.
	ErrUploadInterrupted = errors.New("the upload was interrupted")

	// ErrNoPort: every port of the configured range is taken.
	ErrNoPort = errors.New("no free port")

	// ErrBackupNotDone: a download or restore of a backup that is not
	// done, or whose archive is missing.
	ErrBackupNotDone = errors.New("backup is not done")
	// ErrBackupRunning: a destroy or reset that a backup being written
	// holds up (its snapshot pins the volume).
	ErrBackupRunning = errors.New("a backup is reading it")
	// ErrNotBackupReady: a backup of an instance being created, reset or
	// destroyed.
	ErrNotBackupReady = errors.New("cannot be backed up now")

	// ErrQuotaExceeded: a per-user or global count or size is at its
	// limit. Always a *LimitError.
	ErrQuotaExceeded = errors.New("quota exceeded")
	// ErrNoDiskSpace: the free space is under the disk reserve, or would
	// be. Always a *LimitError.
	ErrNoDiskSpace = errors.New("not enough disk space")

	// ErrNotItsVolume: a volume whose record names another installation,
	// instance or image than the store's row; it is left alone.
	ErrNotItsVolume = errors.New("the volume belongs to something else")
	// ErrStoreMismatch: the metadata store does not account for most
	// volumes (a wrong database_url, an empty database, another
	// installation's or an older dump); nothing is destroyed meanwhile.
	ErrStoreMismatch = errors.New("the metadata store does not match the volumes")

	// ErrOperationRunning: another live sindrid runs the same operation
	// (a pull, a script) on the same image.
	ErrOperationRunning = errors.New("another sindrid is running this operation")

	// ErrNotPeer: a request to a peer-only route (under /fleet/) without
	// a valid proof that a host of this fleet sent it.
	ErrNotPeer = errors.New("not a host of this fleet")

	// ErrHostUnavailable: in a fleet, the host an instance or backup
	// lives on, or was placed on, is down, cannot be reached or failed to
	// answer; the request did not complete there and may be sent again.
	ErrHostUnavailable = errors.New("host unavailable")
	// ErrNoHost: in a fleet, no host can take a new instance of the image
	// now (store.ErrNoHost).
	ErrNoHost = errors.New("no host can take the instance")
)

// The classes that errors of the store, the storage and Postgres are given
// when they reach a service's caller (see classify).
var (
	// ErrForbidden: the actor may not do this at all (not the upload user
	// changing an image or backing one up).
	ErrForbidden = errors.New("forbidden")
	// ErrConflict: the store refused a write that conflicts with an
	// existing row (a duplicate, a row still referenced).
	ErrConflict = errors.New("conflict with an existing resource")
	// ErrDiskFull: a write failed for want of space (ENOSPC), whatever the
	// disk reserve said.
	ErrDiskFull = errors.New("the filesystem is full")
	// ErrPGVersionMissing: the image's PostgreSQL major version is not
	// installed on this server.
	ErrPGVersionMissing = errors.New("the PostgreSQL version is not installed")
	// ErrMetadataUnavailable: the metadata database is out of reach (its
	// leader changing in a failover, or down: store.ErrUnavailable). The
	// request did not complete and may be sent again as it is; what it
	// began is finished or undone.
	ErrMetadataUnavailable = errors.New("the metadata store is unavailable")
)

// errVolumeTaken: a creation found its volume's name taken.
var errVolumeTaken = errors.New("the instance's volume name is taken")

// LimitError is a refusal by a limit: its message, written for the
// person who asked, names the limit's key and the figure that reached it.
type LimitError struct {
	// Key is the configuration key, e.g. "limits.instances_per_user".
	Key string
	// Used is the figure (for the disk reserve: the free bytes) and Limit
	// the limit (the reserve's bytes).
	Used, Limit int64
	// Disk is set for the disk reserve (ErrNoDiskSpace); otherwise it is a
	// quota (ErrQuotaExceeded).
	Disk bool
	// Msg is the message.
	Msg string
}

func (e *LimitError) Error() string { return e.Msg }

// Unwrap makes errors.Is(err, ErrNoDiskSpace) or ErrQuotaExceeded true.
func (e *LimitError) Unwrap() error {
	if e.Disk {
		return ErrNoDiskSpace
	}
	return ErrQuotaExceeded
}
