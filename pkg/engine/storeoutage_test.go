package engine_test

import (
	"errors"
	"fmt"
	"net/url"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sindri-db/sindri/pkg/engine"
	"github.com/sindri-db/sindri/pkg/postgres"
	"github.com/sindri-db/sindri/pkg/postgres/pgtest"
	"github.com/sindri-db/sindri/pkg/storage"
	"github.com/sindri-db/sindri/pkg/store"
)

// outage makes a test's metadata database refuse every connection and
// ends the ones it has, as a leader that goes away does: the store's
// calls fail with store.ErrUnavailable until end.
type outage struct {
	dbURL    string
	database string
}

func newOutage(t *testing.T, dbURL string) *outage {
	t.Helper()
	cfg, err := pgx.ParseConfig(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	o := &outage{dbURL: dbURL, database: cfg.Database}
	t.Cleanup(func() { o.end(t) })
	return o
}

// url reaches database ("" for the test's own) as the test's
// superuser, in sessions whose commits do not wait for a synchronous
// standby.
func (o *outage) url(t *testing.T, database string) string {
	t.Helper()
	u, err := url.Parse(o.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	if database != "" {
		u.Path = "/" + database
	}
	q := u.Query()
	q.Set("synchronous_commit", "local")
	u.RawQuery = q.Encode()
	return u.String()
}

// exec runs sql in the cluster's postgres database.
func (o *outage) exec(t *testing.T, sql string) {
	t.Helper()
	pgtest.Exec(t, o.url(t, "postgres"), sql)
}

func (o *outage) begin(t *testing.T) {
	t.Helper()
	db := pgx.Identifier{o.database}.Sanitize()
	o.exec(t, "alter database "+db+" with allow_connections false")
	o.exec(t, "select pg_terminate_backend(pid) from pg_stat_activity where datname = '"+o.database+"'")
}

func (o *outage) end(t *testing.T) {
	t.Helper()
	o.exec(t, "alter database "+pgx.Identifier{o.database}.Sanitize()+" with allow_connections true")
}

// A creation whose metadata store goes out of reach once its postmaster
// is up (a failover between its last steps) fails with
// store.ErrUnavailable. Its undo needs the store too, so the clone and the
// postmaster stay while the store is out; once it answers again they go
// within seconds, with the row (a tombstone left), without waiting for a
// reconcile.
func TestCreationCutShortByTheStoreIsUndoneOnceItAnswers(t *testing.T) {
	w := newWorld(t, 5)
	out := newOutage(t, w.dbURL)
	var id int64
	opts := engine.WithStepHook(w.options(), func(step string, instanceID int64) {
		if step == "ready" {
			id = instanceID
			out.begin(t)
		}
	})
	e := engine.New(opts)
	if _, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: 1, Owner: "upload"}); !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("a creation whose store went away: %v, want store.ErrUnavailable", err)
	}
	vol := mustVolume(t, w, engine.InstanceVolume(id))
	time.Sleep(2 * time.Second) // the store still out: its undo waits
	if st, err := postgres.Status(vol.Path); err != nil || !st.Alive {
		t.Fatalf("the postmaster went while the store was out, before its record could: %+v %v", st, err)
	}
	out.end(t)

	deadline := time.Now().Add(20 * time.Second)
	for {
		_, volErr := w.storage.Get(ctx, vol.Name)
		_, rowErr := w.store.GetInstance(ctx, id)
		if errors.Is(volErr, storage.ErrNotFound) && errors.Is(rowErr, store.ErrNotFound) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("20 s after the store answered again: volume %v, row %v", volErr, rowErr)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if pids := postmastersUnder(w.root); len(pids) != 0 {
		t.Fatalf("postmasters left: %v", pids)
	}
	if tomb, err := w.store.InstanceTombstones(ctx, []int64{id}); err != nil || len(tomb) != 1 {
		t.Fatalf("tombstone of instance %d: %v %v", id, tomb, err)
	}
}

// query runs sql in database ("" for the test's own) and returns its one
// value as text.
func (o *outage) query(t *testing.T, database, sql string) string {
	t.Helper()
	conn, err := pgx.Connect(ctx, o.url(t, database))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	return pgtest.MustQuery(t, conn, sql)
}

// A creation whose insert commits but whose answer is lost fails without
// learning the instance's id: here, as at a Patroni switchover, the
// leader's sessions end while the commit waits for its synchronous
// standby, which leaves the row committed. Once the store answers again
// the row goes within seconds, without a reconcile (which would take
// StartTimeout and a minute).
func TestCreationWhoseInsertIsAnsweredByAnOutageIsUndoneOnceTheStoreAnswers(t *testing.T) {
	w := newWorld(t, 5)
	out := newOutage(t, w.dbURL)
	resetStandby := func() {
		out.exec(t, "alter system reset synchronous_standby_names")
		out.exec(t, "select pg_reload_conf()")
	}
	t.Cleanup(resetStandby)
	out.exec(t, "alter system set synchronous_standby_names = 'sindri_test_absent_standby'")
	out.exec(t, "select pg_reload_conf()")
	// pg_reload_conf only signals the postmaster, which rereads the file
	// and then signals the store's sessions: a new session sees the
	// setting once that is done, and the store's next statements after it.
	for deadline := time.Now().Add(10 * time.Second); out.query(t, "postgres", "show synchronous_standby_names") != "sindri_test_absent_standby"; {
		if time.Now().After(deadline) {
			t.Fatal("the store's server did not reload synchronous_standby_names")
		}
		time.Sleep(10 * time.Millisecond)
	}

	e := engine.New(w.options())
	created := make(chan error, 1)
	go func() {
		_, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: 1, Owner: "upload"})
		created <- err
	}()
	waiting := fmt.Sprintf(`select count(*) from pg_stat_activity where datname = '%s'
		and wait_event = 'SyncRep' and query like 'insert into instances%%'`, out.database)
	deadline := time.Now().Add(20 * time.Second)
	for out.query(t, "postgres", waiting) != "1" {
		select {
		case err := <-created:
			t.Fatalf("the creation ended before its insert waited for the synchronous standby: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the creation's insert never waited for the synchronous standby; sessions of the store: %s",
				out.query(t, "postgres", fmt.Sprintf(`select coalesce(string_agg(state || ' ' || coalesce(wait_event, '-') || ': ' || left(query, 60), '; '), 'none')
					from pg_stat_activity where datname = '%s'`, out.database)))
		}
		time.Sleep(20 * time.Millisecond)
	}
	out.begin(t)
	resetStandby()
	select {
	case err := <-created:
		if !errors.Is(err, store.ErrUnavailable) {
			t.Fatalf("a creation whose insert's session ended: %v, want store.ErrUnavailable", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the creation still waits 30 s after its session was ended")
	}
	time.Sleep(2 * time.Second) // the store still out: the undo waits
	out.end(t)

	deadline = time.Now().Add(20 * time.Second)
	for {
		insts, err := w.store.ListInstances(ctx, "")
		tombstones := out.query(t, "", "select count(*) from instance_tombstones")
		if err == nil && len(insts) == 0 && tombstones == "1" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("20 s after the store answered again: instances %+v (%v), %s tombstones, want none and 1 (the row committed, then went)", insts, err, tombstones)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if entries, err := w.storage.List(ctx); err != nil || len(entries) != 1 {
		t.Fatalf("volumes beside the image's after a creation that failed at its insert: %+v %v", entries, err)
	}
}
