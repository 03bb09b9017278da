package postgres

import (
	"errors"
	"fmt"
	"sync"

	"golang.org/x/sys/unix"
)

// OnExit calls fn once, from a goroutine of its own, when the process pid
// ends, and at once when it has ended already. It watches a pidfd of the
// process (pidfd_open, Linux 5.3), which refers to that one process even
// once its pid is reused, and which says the process ended whether or not
// anybody reaps it (PID 1 here does not) and whether or not it is this
// process's child (a postmaster adopted after a restart of sindrid is
// not). All pidfds wait in one epoll set on one goroutine: no thread waits
// per process. stop forgets the watch; fn may still run if the process
// ended as stop was called.
//
// The caller checks that pid is the process it means (see Status) after
// OnExit returns: a pid that was reused before the pidfd was opened is
// another process's.
func OnExit(pid int, fn func()) (stop func(), err error) {
	x, err := exits()
	if err != nil {
		return nil, err
	}
	return x.watch(pid, fn)
}

// exitWatcher is the epoll set behind OnExit.
type exitWatcher struct {
	epfd  int
	mu    sync.Mutex
	next  uint32 // the key of the next watch: keys are not reused, fds are
	byKey map[uint32]exitWatch
}

type exitWatch struct {
	fd int
	fn func()
}

var (
	exitsOnce sync.Once
	exitsErr  error
	theExits  *exitWatcher
)

func exits() (*exitWatcher, error) {
	exitsOnce.Do(func() {
		epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		if err != nil {
			exitsErr = fmt.Errorf("epoll_create1: %w", err)
			return
		}
		theExits = &exitWatcher{epfd: epfd, byKey: map[uint32]exitWatch{}}
		go theExits.loop()
	})
	return theExits, exitsErr
}

func (x *exitWatcher) watch(pid int, fn func()) (func(), error) {
	if pid <= 0 {
		return nil, fmt.Errorf("no process to watch (pid %d)", pid)
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		go fn() // gone, and reaped
		return func() {}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	// pidfds are close-on-exec.
	x.mu.Lock()
	defer x.mu.Unlock()
	x.next++
	key := x.next
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLONESHOT, Fd: int32(key)}
	if err := unix.EpollCtl(x.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("epoll_ctl add pidfd of %d: %w", pid, err)
	}
	x.byKey[key] = exitWatch{fd: fd, fn: fn}
	return func() { x.forget(key) }, nil
}

// forget removes a watch and closes its pidfd; false when it was gone.
func (x *exitWatcher) forget(key uint32) (exitWatch, bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	w, ok := x.byKey[key]
	if !ok {
		return w, false
	}
	delete(x.byKey, key)
	_ = unix.EpollCtl(x.epfd, unix.EPOLL_CTL_DEL, w.fd, nil)
	unix.Close(w.fd)
	return w, true
}

func (x *exitWatcher) loop() {
	events := make([]unix.EpollEvent, 64)
	for {
		n, err := unix.EpollWait(x.epfd, events, -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			// Cannot happen with a valid epoll fd; the watches stay, and
			// callers' own checks (the supervisor's round) still see exits.
			return
		}
		for _, ev := range events[:n] {
			// A watch stopped meanwhile is gone from byKey: its event is
			// dropped, never taken for another's.
			if w, ok := x.forget(uint32(ev.Fd)); ok {
				go w.fn()
			}
		}
	}
}
