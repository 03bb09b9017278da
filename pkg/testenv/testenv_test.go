package testenv

import (
	"fmt"
	"runtime"
	"testing"
)

// recorder is a testing.TB that records Skipf and Fatalf instead of ending
// the test; like testing's, they end the goroutine that calls them.
type recorder struct {
	testing.TB
	skipped, failed string
}

func (r *recorder) Skipf(format string, args ...any) {
	r.skipped = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func (r *recorder) Fatalf(format string, args ...any) {
	r.failed = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func TestRequireRoot(t *testing.T) {
	for _, c := range []struct {
		name          string
		euid          int
		env           string
		skipped, fail string
	}{
		{"root", 0, "", "", ""},
		{"root, opted out", 0, "1", "", ""},
		{"not root", 1000, "", "", "needs root: mount; run `make test` as root, or set SINDRI_SKIP_ROOT_TESTS=1 to skip these tests knowingly"},
		{"not root, other value", 1000, "true", "", "needs root: mount; run `make test` as root, or set SINDRI_SKIP_ROOT_TESTS=1 to skip these tests knowingly"},
		{"not root, opted out", 1000, "1", "needs root: mount (SINDRI_SKIP_ROOT_TESTS=1)", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			defer func(f func() int) { geteuid = f }(geteuid)
			geteuid = func() int { return c.euid }
			t.Setenv("SINDRI_SKIP_ROOT_TESTS", c.env)
			r := &recorder{TB: t}
			done := make(chan struct{})
			go func() {
				defer close(done)
				RequireRoot(r, "mount")
			}()
			<-done
			if r.skipped != c.skipped || r.failed != c.fail {
				t.Errorf("skipped %q, failed %q; want skipped %q, failed %q", r.skipped, r.failed, c.skipped, c.fail)
			}
		})
	}
}
