package postgres

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// statisticsDirs hold the cumulative statistics: those a clean shutdown
// saves (pg_stat, pg_stat_statements' among them) and the files of a
// running server (pg_stat_tmp, pg_stat_statements' query texts there).
var statisticsDirs = []string{"pg_stat", "pg_stat_tmp"}

// ForgetStatistics empties the cumulative statistics of the cleanly shut
// down dataDir, so that a clone of it starts with none, as after a crash.
// Kept, they name every database a session has used (an image's freeze
// uses them all), and a clone's autovacuum launcher starts a worker in
// each of those every autovacuum_naptime, to find nothing to do in the
// frozen and analysed data: a fork, a login and catalog reads, about
// 20 ms of CPU, for every database of every idle clone. Without them, a
// clone's launcher visits a database once a session has used it, and a
// table once it has changed. The planner's statistics are in the catalog
// (pg_statistic) and stay.
//
// dataDir is an upload: nothing is followed through a symbolic link. One
// that stands where a statistics directory should is replaced by an empty
// directory, owned as dataDir is.
func ForgetStatistics(dataDir string) error {
	var root syscall.Stat_t
	if err := syscall.Lstat(dataDir, &root); err != nil {
		return &fs.PathError{Op: "lstat", Path: dataDir, Err: err}
	}
	for _, name := range statisticsDirs {
		dir := filepath.Join(dataDir, name)
		info, err := os.Lstat(dir)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			continue
		case err != nil:
			return err
		case info.IsDir():
			if err := emptyDir(dir); err != nil {
				return err
			}
			continue
		}
		if err := os.Remove(dir); err != nil {
			return err
		}
		if err := os.Mkdir(dir, 0o700); err != nil {
			return err
		}
		if err := os.Lchown(dir, int(root.Uid), int(root.Gid)); err != nil {
			return err
		}
	}
	return nil
}
