// Package testenv holds what tests need to know about the machine they run
// on. sindri's tests run as root against real BTRFS, zfs-fuse and Postgres;
// run as anyone else they fail, so that a skipped test is never counted as
// a passing one, unless SINDRI_SKIP_ROOT_TESTS=1 says to skip them knowingly.
package testenv

import (
	"os"
	"testing"
)

// geteuid is os.Geteuid; the package's tests replace it.
var geteuid = os.Geteuid

// RequireRoot returns when the test runs as root. Otherwise it fails t,
// saying why the test needs root, or skips t when SINDRI_SKIP_ROOT_TESTS=1.
func RequireRoot(t testing.TB, why string) {
	t.Helper()
	if geteuid() == 0 {
		return
	}
	if os.Getenv("SINDRI_SKIP_ROOT_TESTS") == "1" {
		t.Skipf("needs root: %s (SINDRI_SKIP_ROOT_TESTS=1)", why)
	}
	t.Fatalf("needs root: %s; run `make test` as root, or set SINDRI_SKIP_ROOT_TESTS=1 to skip these tests knowingly", why)
}
