package storage

import (
	"errors"
	"syscall"
)

// NoSpace reports whether err is a write the filesystem refused for want
// of space (ENOSPC), anywhere in its chain.
func NoSpace(err error) bool { return errors.Is(err, syscall.ENOSPC) }
