package engine

import "errors"

// Classified errors of the engine, for errors.Is; the API maps them.
var (
	ErrImageNotReady = errors.New("image is not ready")
	ErrNotFound      = errors.New("not found")
	ErrNoPort        = errors.New("no free port")
)

// More classified errors of the engine.
var (
	ErrImageHasInstances = errors.New("image has instances")
	ErrImageNotPending   = errors.New("image no longer accepts uploads")
	ErrFinaliseFailed    = errors.New("finalising the image failed")
	ErrUploadInterrupted = errors.New("the upload was interrupted")
)

// ErrTTLTooLong is a requested lifetime above the configured maximum;
// ErrInvalid is a request that makes no sense (a negative TTL, a past
// expiry).
var (
	ErrTTLTooLong = errors.New("requested lifetime is longer than the maximum")
	ErrInvalid    = errors.New("invalid request")
)

// Classified errors of backups.
var (
	ErrBackupNotDone  = errors.New("backup is not done")
	ErrBackupRunning  = errors.New("a backup is reading it")
	ErrNotBackupReady = errors.New("cannot be backed up now")
)

// Refusals by the configured limits, for errors.Is; each is a *LimitError.
var (
	// ErrQuotaExceeded: a per-user or global count or size is at its limit.
	ErrQuotaExceeded = errors.New("quota exceeded")
	// ErrNoDiskSpace: the free space is under the disk reserve, or would
	// be.
	ErrNoDiskSpace = errors.New("not enough disk space")
)

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

// Classified errors of the volumes' records: ErrNotItsVolume, a volume
// whose record names another installation, instance or image than the
// store's row, which is therefore left alone; ErrStoreMismatch, a
// metadata store that does not account for most volumes (a wrong
// database_url, an empty database, another installation's or an older
// dump), while which nothing is destroyed.
var (
	ErrNotItsVolume  = errors.New("the volume belongs to something else")
	ErrStoreMismatch = errors.New("the metadata store does not match the volumes")
)

// ErrOperationRunning is an operation that another live sindrid runs on
// the same thing.
var ErrOperationRunning = errors.New("another sindrid is running this operation")

// errVolumeTaken: a creation found its volume's name taken.
var errVolumeTaken = errors.New("the instance's volume name is taken")
