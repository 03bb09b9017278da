// Package osuser finds the operating-system accounts sindrid hands work
// to (the postgres user that runs every postmaster, the upload account
// that scp writes as) and does what sindrid does for them as root: give
// them files, and check that they can reach a path.
package osuser

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
)

// ErrRoot: the account is root, which sindrid never hands work to.
var ErrRoot = errors.New("the account is root")

// User is an operating-system account.
type User struct {
	Name     string
	UID, GID uint32
	Home     string
}

// Lookup finds the account name; root is ErrRoot.
func Lookup(name string) (User, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return User{}, err
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return User{}, fmt.Errorf("account %q has uid %q: %w", name, u.Uid, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return User{}, fmt.Errorf("account %q has gid %q: %w", name, u.Gid, err)
	}
	if uid == 0 {
		return User{}, fmt.Errorf("%w: %q", ErrRoot, name)
	}
	return User{Name: name, UID: uint32(uid), GID: uint32(gid), Home: u.HomeDir}, nil
}

// Chown gives path, and everything under it when recursive, to the user;
// a symbolic link itself, never its target.
func (u User) Chown(path string, recursive bool) error {
	if !recursive {
		return os.Lchown(path, int(u.UID), int(u.GID))
	}
	return filepath.Walk(path, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, int(u.UID), int(u.GID))
	})
}

// CheckReach tells, in a sentence that says what to change, when the user
// cannot reach path because a directory on the way denies it search
// permission.
func (u User) CheckReach(path string) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	for dir := filepath.Dir(abs); ; dir = filepath.Dir(dir) {
		info, err := os.Stat(dir)
		if err != nil {
			return err
		}
		uid, gid, ok := Owner(info)
		mode := info.Mode().Perm()
		reachable := mode&0o001 != 0 || (ok && uid == u.UID && mode&0o100 != 0) || (ok && gid == u.GID && mode&0o010 != 0)
		if !reachable {
			return fmt.Errorf("the %s user cannot reach %s: %s is mode %04o; allow it with chmod o+x %s", u.Name, path, dir, mode, dir)
		}
		if dir == "/" {
			return nil
		}
	}
}

// Owner is the owner and group of the file info describes; ok is false
// when the system does not say.
func Owner(info os.FileInfo) (uid, gid uint32, ok bool) {
	st, ok := info.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, 0, false
	}
	return st.Uid, st.Gid, true
}
