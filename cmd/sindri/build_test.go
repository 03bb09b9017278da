package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
)

// The client ships for laptops and CI runners alike: pure Go, without cgo,
// for Linux and macOS on amd64 and arm64.
func TestBuildsForEveryPlatformWithoutCgo(t *testing.T) {
	if testing.Short() {
		t.Skip("cross-compiles four times")
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		// The toolchain that built this test, when go is not on PATH.
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	for _, target := range [][2]string{{"linux", "amd64"}, {"linux", "arm64"}, {"darwin", "amd64"}, {"darwin", "arm64"}} {
		cmd := exec.Command(goBin, "build", "-o", filepath.Join(t.TempDir(), "sindri"), ".")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS="+target[0], "GOARCH="+target[1])
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("GOOS=%s GOARCH=%s CGO_ENABLED=0 go build: %v\n%s", target[0], target[1], err, out)
		}
	}
}
