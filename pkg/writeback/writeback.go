// Package writeback tells how much of the page cache waits to be written
// back to disk. A filesystem such as BTRFS counts that data as free space
// until it is written, and the page cache can hold gigabytes of it: a
// check of the free space against a limit writes it back first when it is
// near.
package writeback

import (
	"math"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// Flush writes the page cache back (sync(2)): what Pending counted is
// then on disk, and counted as used where it is.
func Flush() { syscall.Sync() }

// Pending is how many bytes wait to be written back: Dirty plus Writeback
// of /proc/meminfo. When that cannot be read, it is math.MaxInt64 (as much
// as there could be), so that a caller writes back rather than trusts a
// stale figure.
func Pending() int64 {
	data, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return math.MaxInt64
	}
	var sum int64
	seen := 0
	for _, line := range strings.Split(string(data), "\n") {
		name, rest, ok := strings.Cut(line, ":")
		if !ok || (name != "Dirty" && name != "Writeback") {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
		if err != nil {
			return math.MaxInt64
		}
		sum += kb << 10
		seen++
	}
	if seen != 2 {
		return math.MaxInt64
	}
	return sum
}
