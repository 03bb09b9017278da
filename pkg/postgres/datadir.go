package postgres

import (
	"errors"
	"os"
	"path/filepath"
	"regexp"
)

// walSegment is the name of a WAL segment file in pg_wal.
var walSegment = regexp.MustCompile(`^[0-9A-F]{24}$`)

// CheckBackupHasWAL refuses an online backup (one with backup_label)
// whose pg_wal holds no WAL segment: it cannot recover to consistency.
// pg_basebackup -Ft puts the WAL in pg_wal.tar unless given -X fetch.
func CheckBackupHasWAL(dataDir string) error {
	if _, err := os.Lstat(filepath.Join(dataDir, "backup_label")); err != nil {
		return nil
	}
	entries, _ := os.ReadDir(filepath.Join(dataDir, "pg_wal"))
	for _, de := range entries {
		if de.Type().IsRegular() && walSegment.MatchString(de.Name()) {
			return nil
		}
	}
	return errors.New("the upload is an online backup (it has backup_label) without the WAL it needs: pg_wal/ holds no WAL segment. pg_basebackup -Ft writes the WAL to pg_wal.tar unless it is given -X fetch: take the backup with -X fetch, or put the files of pg_wal.tar into pg_wal/ of the data directory and upload that")
}

// RemoveStartLeftovers removes from a data directory that came from
// elsewhere the postmaster's leftovers, and the signal files that would
// make a start a standby of the original (pg_basebackup -R) instead of
// recovering to consistency and opening.
func RemoveStartLeftovers(dataDir string) {
	for _, leftover := range []string{"postmaster.pid", "postmaster.opts", "standby.signal", "recovery.signal", "recovery.conf"} {
		os.Remove(filepath.Join(dataDir, leftover))
	}
}
