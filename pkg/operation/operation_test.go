package operation

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"runtime"
	"sync"
	"testing"
	"time"
)

// The kernel kills an operation's child when the thread that started it
// ends, not the process (PR_SET_PDEATHSIG); Go ends a thread whenever a
// goroutine locked to it returns. While goroutines keep doing that, an
// operation still runs to its end, each time.
func TestOperationOutlivesThreadsThatEnd(t *testing.T) {
	stop := make(chan struct{})
	var churn sync.WaitGroup
	for range 3 {
		churn.Add(1)
		go func() {
			defer churn.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				done := make(chan struct{})
				go func() {
					runtime.LockOSThread() // returns locked: its thread ends
					close(done)
				}()
				<-done
			}
		}()
	}
	defer func() {
		close(stop)
		churn.Wait()
	}()
	for i := range 15 {
		cmd := exec.CommandContext(context.Background(), "sleep", "0.05")
		started := time.Now()
		if err := Run(cmd, "test churn"); err != nil {
			t.Fatalf("run %d: %v after %s (killed when a thread ended?)", i, err, time.Since(started))
		}
	}
}

// A cancelled operation is killed with the processes it started.
func TestCancelledOperationEndsItsGroup(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	// The shell starts a sleep of its own and waits for it.
	cmd := exec.CommandContext(ctx, "sh", "-c", "sleep 600 & echo $! ; wait")
	var out bytes.Buffer // read once Wait has returned
	cmd.Stdout = &out
	started := time.Now()
	if err := Run(cmd, "test cancel"); err == nil {
		t.Fatal("a cancelled operation ended without an error")
	}
	if d := time.Since(started); d > 15*time.Second {
		t.Fatalf("the cancelled operation took %s to end", d)
	}
	var pid int
	if _, err := fmt.Sscan(out.String(), &pid); err != nil || pid <= 0 {
		t.Fatalf("the shell printed %q, not its sleep's pid", out.String())
	}
	for deadline := time.Now().Add(5 * time.Second); Alive(pid); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the operation's own child %d outlived it", pid)
		}
	}
}
