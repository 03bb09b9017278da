package postgres_test

import (
	"context"
	"errors"
	"syscall"
	"testing"
	"time"

	"github.com/sindri-db/sindri/pkg/postgres"
	"github.com/sindri-db/sindri/pkg/postgres/pgtest"
)

// A running postmaster answers the probe (Cluster.Answers); a stopped one (SIGSTOP) leaves
// it unanswered until its deadline; a port with no socket fails at once,
// not at the deadline.
func TestAnswersTellsSilenceFromAnswers(t *testing.T) {
	c := pgtest.StartInstance(t)
	probe := func(port int) (time.Duration, bool, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
		t0 := time.Now()
		probe := postgres.Cluster{SocketDir: c.SocketDir, Port: port}
		answered, err := probe.Answers(ctx)
		if answered != !errors.Is(err, postgres.ErrNoAnswer) {
			t.Fatalf("answered %v, but err %v", answered, err)
		}
		return time.Since(t0), !answered, err
	}
	if d, _, err := probe(c.Port); err != nil {
		t.Fatalf("a running postmaster: %v", err)
	} else {
		t.Logf("answered in %s", d)
	}
	if _, silent, err := probe(c.Port + 1); err == nil || silent {
		t.Fatalf("no socket: err %v, silent %v; want an error at once", err, silent)
	}

	if err := syscall.Kill(c.Process.PID, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		d, silent, err := probe(c.Port)
		if err == nil || !silent || d < 500*time.Millisecond {
			syscall.Kill(c.Process.PID, syscall.SIGCONT)
			t.Fatalf("a stopped postmaster: err %v after %s, silent %v; want silence until the deadline", err, d, silent)
		}
	}
	syscall.Kill(c.Process.PID, syscall.SIGCONT)
	if _, _, err := probe(c.Port); err != nil {
		t.Fatalf("continued: %v", err)
	}
}

// A postmaster's Activity counts its runs: a connection wakes it, an
// idle one barely runs (its autovacuum launcher may ask it for a worker);
// stopped, it is Stalled.
func TestActivityCountsAPostmastersRuns(t *testing.T) {
	c := pgtest.StartInstance(t)
	pid := c.Process.PID
	read := func() postgres.Activity {
		t.Helper()
		a, ok := postgres.ReadActivity(pid)
		if !ok {
			t.Fatalf("no activity for postmaster %d", pid)
		}
		return a
	}
	before := read()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if answered, err := (&postgres.Cluster{SocketDir: c.SocketDir, Port: c.Port}).Answers(ctx); !answered {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // its child's end, which wakes it again
	asked := read()
	if asked.Runs <= before.Runs || asked.Stalled() {
		t.Fatalf("after a connection: %+v, before %+v; want more runs, not stalled", asked, before)
	}
	time.Sleep(time.Second)
	if idle := read(); idle.Runs > asked.Runs+3 {
		t.Errorf("idle for a second, it ran %d times", idle.Runs-asked.Runs)
	}
	if _, ok := postgres.ReadActivity(1 << 30); ok {
		t.Error("activity read for a pid that cannot exist")
	}
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(pid, syscall.SIGCONT)
	time.Sleep(100 * time.Millisecond)
	if stopped := read(); !stopped.Stalled() || stopped.State != 'T' {
		t.Errorf("stopped: %+v, want state T, stalled", stopped)
	}
}
