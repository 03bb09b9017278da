package engine_test

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sindri-db/sindri/pkg/engine"
)

// loggedErrors keeps the engine's log records at WARN and above, with
// their instance_id and err, beside what a quiet logger prints.
type loggedErrors struct {
	next slog.Handler
	mu   *sync.Mutex
	recs *[]loggedError
	with []slog.Attr
}

type loggedError struct {
	level      slog.Level
	msg, err   string
	instanceID int64 // 0 when the record names none
}

func newLoggedErrors() *loggedErrors {
	return &loggedErrors{next: quietLogger().Handler(), mu: &sync.Mutex{}, recs: &[]loggedError{}}
}

func (h *loggedErrors) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelWarn || h.next.Enabled(ctx, l)
}

func (h *loggedErrors) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelWarn {
		e := loggedError{level: r.Level, msg: r.Message}
		visit := func(a slog.Attr) bool {
			switch a.Key {
			case "instance_id":
				e.instanceID, _ = strconv.ParseInt(a.Value.String(), 10, 64)
			case "err":
				e.err = a.Value.String()
			}
			return true
		}
		for _, a := range h.with {
			visit(a)
		}
		r.Attrs(visit)
		h.mu.Lock()
		*h.recs = append(*h.recs, e)
		h.mu.Unlock()
	}
	if h.next.Enabled(ctx, r.Level) {
		return h.next.Handle(ctx, r)
	}
	return nil
}

func (h *loggedErrors) WithAttrs(attrs []slog.Attr) slog.Handler {
	c := *h
	c.next = h.next.WithAttrs(attrs)
	c.with = append(slices.Clone(h.with), attrs...)
	return &c
}

func (h *loggedErrors) WithGroup(name string) slog.Handler {
	c := *h
	c.next = h.next.WithGroup(name)
	return &c
}

func (h *loggedErrors) records() []loggedError {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(*h.recs)
}

// namedInstances are the instance ids a text names: "instance 7",
// "instance-7" (its volume), "instance_id=7", "instances/7".
var namedInstance = regexp.MustCompile(`instance(?:s/|[- ]|_id=)(\d+)\b`)

func namedInstances(text string) []int64 {
	var ids []int64
	for _, m := range namedInstance.FindAllStringSubmatch(text, -1) {
		if id, err := strconv.ParseInt(m[1], 10, 64); err == nil && !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	return ids
}

// lineOf is the instance a line of a joined error is about.
var lineOf = regexp.MustCompile(`^instance (\d+): `)

// others are the ids in named that are not own.
func others(named []int64, own int64) []int64 {
	var out []int64
	for _, id := range named {
		if id != own {
			out = append(out, id)
		}
	}
	return out
}

// Several goroutines create and destroy instances side by side, beside
// others that live on, while the supervisor and reconcile (every second)
// run: every create and destroy succeeds, and no
// error, returned or logged, is about another instance than its own (a
// lookup or a listing that trips over a volume that another goroutine
// creates or destroys at that moment).
func TestCreatesRacingDestroysFailOnlyForThemselves(t *testing.T) {
	for _, fs := range []string{"btrfs", "zfs"} {
		t.Run(fs, func(t *testing.T) {
			var w *world
			if fs == "btrfs" {
				w = newWorld(t, 60)
			} else {
				w = newWorldZFS(t, 60)
			}
			logs := newLoggedErrors()
			opts := w.options()
			opts.Logger = slog.New(logs)
			e := engine.New(opts)
			run, stop := context.WithCancel(ctx)
			var running sync.WaitGroup
			running.Add(1)
			go func() {
				defer running.Done()
				e.Run(run, time.Second, time.Minute)
			}()

			// Bystanders: instances that live through the race, so that
			// each listing has entries to trip over, and the supervisor
			// instances to watch.
			const workers, keep, bystanders = 4, 3, 30
			var standing []int64
			for range bystanders {
				inst, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: 1, Owner: engine.UploadOwner})
				if err != nil {
					t.Fatal(err)
				}
				standing = append(standing, inst.ID)
			}
			duration := 20 * time.Second
			type failure struct {
				op     string
				own    int64 // 0: not known (a create that failed before its record)
				err    string
				others []int64
			}
			var mu sync.Mutex
			var failures []failure
			ops := map[string]int{}
			record := func(op string, own int64, err error) {
				mu.Lock()
				defer mu.Unlock()
				ops[op]++
				if err == nil {
					return
				}
				if own == 0 {
					// A failed creation's id is the one its undoing logged
					// with this error.
					for _, r := range logs.records() {
						if r.msg == "engine: instance creation failed; undoing" && r.err == err.Error() {
							own = r.instanceID
						}
					}
				}
				failures = append(failures, failure{op: op, own: own, err: err.Error(), others: others(namedInstances(err.Error()), own)})
			}
			deadline := time.Now().Add(duration)
			var wg sync.WaitGroup
			for range workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					var mine []int64
					destroy := func(i int) {
						id := mine[i]
						mine = slices.Delete(mine, i, i+1)
						record("destroy", id, e.DestroyInstance(ctx, id))
					}
					for time.Now().Before(deadline) {
						if len(mine) < keep && (len(mine) == 0 || rand.IntN(2) == 0) {
							inst, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: 1, Owner: engine.UploadOwner})
							record("create", inst.ID, err)
							if err == nil {
								mine = append(mine, inst.ID)
							}
							continue
						}
						destroy(rand.IntN(len(mine)))
					}
					for len(mine) > 0 {
						destroy(0)
					}
				}()
			}
			wg.Wait()
			stop()
			running.Wait()
			t.Logf("%d creates and %d destroys in %s by %d goroutines, beside %d instances", ops["create"], ops["destroy"], duration, workers, bystanders)
			for _, id := range standing {
				if err := e.DestroyInstance(ctx, id); err != nil {
					t.Errorf("destroying instance %d: %v", id, err)
				}
			}

			var about []string
			for _, f := range failures {
				line := fmt.Sprintf("%s of instance %d: %s", f.op, f.own, f.err)
				if len(f.others) > 0 {
					line = fmt.Sprintf("NAMES ANOTHER INSTANCE %v: %s", f.others, line)
				}
				about = append(about, line)
			}
			for _, r := range logs.records() {
				if r.level < slog.LevelError {
					continue
				}
				// Reconcile joins its errors, one line each, as
				// "instance N: why".
				for _, line := range strings.Split(r.err, "\n") {
					own := r.instanceID
					if m := lineOf.FindStringSubmatch(line); m != nil {
						own, _ = strconv.ParseInt(m[1], 10, 64)
					}
					if o := others(namedInstances(line), own); len(o) > 0 {
						about = append(about, fmt.Sprintf("NAMES ANOTHER INSTANCE %v: logged about instance %d: %s: %s", o, own, r.msg, line))
					}
				}
			}
			if len(about) > 0 {
				t.Errorf("%d failed operations of %d, and errors logged about other instances:\n%s",
					len(failures), ops["create"]+ops["destroy"], strings.Join(about, "\n"))
			}
			if ops["create"] < workers {
				t.Errorf("only %d creates in %s", ops["create"], duration)
			}
			for _, name := range volumeNames(t, w.storage) {
				if strings.HasPrefix(name, "instance-") {
					t.Errorf("volume %s left after every instance was destroyed", name)
				}
			}
			insts, err := w.store.ListInstances(ctx, "")
			if err != nil || len(insts) != 0 {
				t.Errorf("instances left in the store: %v %v", insts, err)
			}
		})
	}
}
