package postgres_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sindri-db/sindri/pkg/postgres"
	"github.com/sindri-db/sindri/pkg/postgres/pgtest"
)

// A log past MaxLogBytes is moved to sindri.log.1 when the postmaster
// starts again; a small one is kept and appended to.
func TestLogIsRotatedAtStartPastItsLimit(t *testing.T) {
	c := pgtest.StartInstance(t)
	logPath := filepath.Join(c.DataDir, postgres.LogFile)
	restart := func() {
		t.Helper()
		if err := postgres.Stop(ctx, c.DataDir, 10*time.Second); err != nil {
			t.Fatal(err)
		}
		c.Restart(t)
	}

	restart()
	small, err := os.ReadFile(logPath)
	if err != nil || !strings.Contains(string(small), "database system is shut down") {
		t.Fatalf("a small log should be kept across a restart: %v\n%s", err, small)
	}
	if _, err := os.Stat(logPath + ".1"); !os.IsNotExist(err) {
		t.Fatalf("sindri.log.1 after restarting with a small log: %v", err)
	}

	big := bytes.Repeat([]byte("an old line of the log\n"), postgres.MaxLogBytes/23+1)
	f, err := os.OpenFile(logPath, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write(big)
	f.Close()
	restart()
	old, err := os.Stat(logPath + ".1")
	if err != nil || old.Size() <= postgres.MaxLogBytes {
		t.Fatalf("sindri.log.1 after restarting with a big log: %v %v", old, err)
	}
	now, err := os.ReadFile(logPath)
	if err != nil || len(now) > 1<<20 || strings.Contains(string(now), "an old line") || !strings.Contains(string(now), "ready to accept connections") {
		t.Fatalf("sindri.log after rotation: %d bytes, %v", len(now), err)
	}
	if tail := postgres.LogTail(c.DataDir, 3); !strings.Contains(tail, "ready to accept connections") {
		t.Fatalf("LogTail after rotation: %q", tail)
	}
}
