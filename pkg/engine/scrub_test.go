package engine_test

import (
	"archive/tar"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/sindri-db/sindri/pkg/engine"
	"github.com/sindri-db/sindri/pkg/postgres"
	"github.com/sindri-db/sindri/pkg/postgres/pgtest"
	"github.com/sindri-db/sindri/pkg/store"
)

// canarySource is a stopped data directory whose secrets are canaries:
// values unique to the test run, each placed where Postgres keeps a copy
// of a value. Canaries maps where each was put to the bytes to look for.
type canarySource struct {
	Tarball  []byte
	Canaries map[string]string
}

// canaryScript anonymises canarySource as a user's script would: it
// rewrites the columns that hold the secrets, deletes the secret rows and
// refreshes the materialized view over them. It leaves people_mv (whose
// stale copy only the scrub refreshes) and the roles' passwords to the
// scrub.
const canaryScript = `\c postgres
update people set email = 'person' || id || '@example.com', nickname = 'nick', city = 'somewhere', doc = 'redacted';
delete from leaks;
update secrets set secret = 'redacted';
refresh materialized view secret_mv;
`

// newCanarySource makes the data directory: a table people with a row
// canary, a TOAST canary (large, uncompressible, stored uncompressed), an
// index canary (in an expression index only: upper case), a statistics
// canary (a frequent value, ANALYZEd, with extended statistics over it);
// a table leaks whose rows the script deletes (its old statistics would
// survive an ANALYZE of the empty table); materialized views over a
// secret; a role with a password (its stored SCRAM hash is the canary);
// a WAL canary (a logical message: in no table, only in the WAL); a
// prepared transaction holding a canary row; a server log, a
// pg_stat_statements dump and a primary_conninfo with a password, each
// with a canary, where the source's own Postgres would have left them.
func newCanarySource(t *testing.T) canarySource {
	t.Helper()
	tok := make([]byte, 6)
	rand.Read(tok)
	id := hex.EncodeToString(tok)
	c := canarySource{Canaries: map[string]string{
		"table row":             "canary-row-" + id + "@real-customer.example",
		"TOAST value":           "canary-toast-" + id,
		"index":                 strings.ToUpper("canary-index-" + id),
		"pg_statistic":          "canary-stat-" + id,
		"deleted rows' stats":   "canary-deleted-" + id,
		"materialized view":     "canary-mv-" + id,
		"stale matview":         "canary-stalemv-" + id,
		"WAL":                   "canary-wal-" + id,
		"prepared transaction":  "canary-2pc-" + id,
		"server log":            "canary-log-" + id,
		"pg_stat_statements":    "canary-pgss-" + id,
		"primary_conninfo":      "canary-conninfo-" + id,
		"user mapping password": "canary-umpw-" + id,
	}}
	src := pgtest.StartSource(t, "max_prepared_transactions=5")
	url := src.SocketURL()
	pgtest.Exec(t, url, fmt.Sprintf(`
		create table people (id int primary key, email text, nickname text, city text, country text, doc text);
		alter table people alter column doc set storage external;
		create index people_nickname on people (upper(nickname));
		create statistics people_city_country (mcv, ndistinct, dependencies) on city, country from people;
		insert into people select i, 'person' || i || '@example.com', 'nick' || i,
			case when i %% 3 = 0 then '%[3]s' else 'city' || (i %% 7) end, 'country' || (i %% 2), 'doc'
			from generate_series(1, 3000) i;
		update people set email = '%[1]s' where id = 1;
		update people set doc = '%[2]s' || (select string_agg(md5(random()::text), '') from generate_series(1, 400)) where id = 2;
		update people set nickname = '%[4]s' where id = 4;
		create table leaks (id int, secret text);
		insert into leaks select i, '%[5]s' from generate_series(1, 500) i;
		create table secrets (id int, secret text);
		insert into secrets values (1, '%[6]s');
		create materialized view secret_mv as select id, secret from secrets;
		insert into people values (5000, '%[7]s', 'n', 'c', 'c', 'd');
		create materialized view people_mv as select id, email from people where email like 'canary-%%';
		create role app_login login password 'app-password';
		create extension postgres_fdw;
		create server prod foreign data wrapper postgres_fdw options (host 'prod.example.com');
		create user mapping for app_login server prod options (user 'app', password '%[8]s');
		analyze;
		select pg_logical_emit_message(true, 'canary', '%[9]s');`,
		c.Canaries["table row"], c.Canaries["TOAST value"], c.Canaries["pg_statistic"], strings.ToLower(c.Canaries["index"]),
		c.Canaries["deleted rows' stats"], c.Canaries["materialized view"], c.Canaries["stale matview"],
		c.Canaries["user mapping password"], c.Canaries["WAL"]))
	// people_mv holds the stale-matview canary; the row itself goes, so
	// that only the view's copy is left for the scrub's refresh.
	pgtest.Exec(t, url, "delete from people where id = 5000")
	pgtest.Exec(t, url, fmt.Sprintf("begin; insert into people values (6000, '%s'); prepare transaction 'canary'", c.Canaries["prepared transaction"]))
	c.Canaries["role password"] = mustSQL(t, url, "select rolpassword from pg_authid where rolname = 'app_login'")
	if err := postgres.Stop(ctx, src.DataDir, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	// What the source's own server would have left beside its data: a
	// log of the logging collector, pg_stat_statements' saved texts, and
	// pg_basebackup -R's connection string.
	for name, content := range map[string]string{
		"log/postgresql-2026-11-30.log":   "ERROR: duplicate key value: Key (email)=(" + c.Canaries["server log"] + ")\n",
		"pg_stat/pg_stat_statements.stat": "select * from people where email = '" + c.Canaries["pg_stat_statements"] + "'\n",
		"postgresql.auto.conf":            "# Do not edit this file manually!\nprimary_conninfo = 'host=prod user=replicator password=" + c.Canaries["primary_conninfo"] + "'\n",
	} {
		path := filepath.Join(src.DataDir, name)
		os.MkdirAll(filepath.Dir(path), 0o700)
		f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteString(content)
		f.Close()
	}
	out, err := exec.Command("tar", "-C", src.DataDir, "-czf", "-", ".").Output()
	if err != nil {
		t.Fatal(err)
	}
	c.Tarball = out
	return c
}

// canariesIn tells which canaries each file under dir holds, as
// "canary: file" lines.
func canariesIn(t *testing.T, canaries map[string]string, dir string) []string {
	t.Helper()
	var found []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // a running instance's file went while walking
			}
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		data, err := os.ReadFile(path)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		found = append(found, canariesInBytes(canaries, rel, data)...)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}

func canariesInBytes(canaries map[string]string, where string, data []byte) []string {
	var found []string
	for what, canary := range canaries {
		if bytes.Contains(data, []byte(canary)) {
			found = append(found, what+": "+where)
		}
	}
	sort.Strings(found)
	return found
}

// canariesInBackup decompresses a backup's tar.zst and tells which
// canaries each entry holds.
func canariesInBackup(t *testing.T, e *engine.Engine, canaries map[string]string, id int64) []string {
	t.Helper()
	f, _, err := e.OpenBackup(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := zstd.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	defer zr.Close()
	tr := tar.NewReader(zr)
	var found []string
	entries := 0
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		entries++
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		found = append(found, canariesInBytes(canaries, hdr.Name, append([]byte(hdr.Name+"\x00"), data...))...)
	}
	if entries < 100 {
		t.Fatalf("backup %d holds %d entries: not a data directory", id, entries)
	}
	return found
}

// canariesShownTo runs, as an instance's user, the queries that show what
// the data and its statistics hold, and tells which canaries they show.
func canariesShownTo(t *testing.T, conn string, canaries map[string]string) []string {
	t.Helper()
	shown := mustSQL(t, conn, `select concat_ws(E'\n',
		(select string_agg(concat_ws(' ', tablename, attname, most_common_vals, histogram_bounds, most_common_elems), E'\n') from pg_stats),
		(select string_agg(concat_ws(' ', tablename, statistics_name, most_common_vals), E'\n') from pg_stats_ext),
		(select string_agg(concat_ws(' ', tablename, statistics_name, most_common_vals, histogram_bounds), E'\n') from pg_stats_ext_exprs),
		(select string_agg(p::text, E'\n') from people p),
		(select string_agg(l::text, E'\n') from leaks l),
		(select string_agg(s::text, E'\n') from secrets s),
		(select string_agg(m::text, E'\n') from secret_mv m),
		(select string_agg(m::text, E'\n') from people_mv m))`)
	return canariesInBytes(canaries, "queries as "+mustSQL(t, conn, "select current_user"), []byte(shown))
}

// TestScrubLeavesNoCanary runs on newWorld's storage: BTRFS, or dircopy
// under SINDRI_TEST_STORAGE=dircopy.
func TestScrubLeavesNoCanary(t *testing.T)      { testScrubLeavesNoCanary(t, newWorld(t, 5)) }
func TestScrubLeavesNoCanaryOnZFS(t *testing.T) { testScrubLeavesNoCanary(t, newWorldZFS(t, 5)) }

// testScrubLeavesNoCanary finalises the canary source with canaryScript and
// looks for every canary in every file of the image, of a backup of it,
// of an instance of it, and in what the instance's user can query.
func testScrubLeavesNoCanary(t *testing.T, w *world) {
	e := engine.New(w.options())
	src := newCanarySource(t)
	img := newImage(t, e, canaryScript, src.Tarball)
	img, err := e.FinaliseImage(ctx, img.ID)
	if err != nil {
		t.Fatalf("finalise: %+v, %v", img, err)
	}
	if !img.Anonymised {
		t.Errorf("an image finalised with a script and scrubbed says anonymised %v", img.Anonymised)
	}
	frozen, err := w.storage.Get(ctx, engine.ImageVolume(img.ID))
	if err != nil {
		t.Fatal(err)
	}
	if found := canariesIn(t, src.Canaries, frozen.Path); len(found) > 0 {
		t.Errorf("the image's files hold canaries:\n%s", strings.Join(found, "\n"))
	}
	// Nothing was lost that the script kept: the rows, the matviews.
	inst, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: img.ID, Owner: "ada@example.com"})
	if err != nil {
		t.Fatal(err)
	}
	user := certConn(t, inst)
	if got := mustSQL(t, user, "select format('%s %s %s %s', (select count(*) from people), (select count(*) from leaks), (select secret from secret_mv), (select count(*) from people_mv))"); got != "3000 0 redacted 0" {
		t.Errorf("in the instance: people, leaks, secret_mv, people_mv: %s; want 3000 0 redacted 0", got)
	}
	if got := mustSQL(t, user, "select count(*)::text from pg_stats where tablename = 'people'"); got == "0" {
		t.Errorf("people has no statistics after the scrub: ANALYZE did not rebuild them")
	}
	if found := canariesShownTo(t, user, src.Canaries); len(found) > 0 {
		t.Errorf("an instance's user can query canaries:\n%s", strings.Join(found, "\n"))
	}
	if found := canariesShownTo(t, passwordConn(inst), src.Canaries); len(found) > 0 {
		t.Errorf("the database_url's role can query canaries:\n%s", strings.Join(found, "\n"))
	}
	if got := mustSQL(t, w.superuserConn(inst), "select count(*)::text from pg_authid where rolpassword is not null and rolname <> 'sindri'"); got != "0" {
		t.Errorf("%s roles still have a password (besides the instance's own login)", got)
	}
	pgtest.Exec(t, w.superuserConn(inst), "checkpoint")
	vol, err := w.storage.Get(ctx, engine.InstanceVolume(inst.ID))
	if err != nil {
		t.Fatal(err)
	}
	if found := canariesIn(t, src.Canaries, vol.Path); len(found) > 0 {
		t.Errorf("the instance's files hold canaries:\n%s", strings.Join(found, "\n"))
	}

	b, err := e.CreateBackup(ctx, engine.BackupRequest{ImageID: img.ID})
	if err != nil {
		t.Fatal(err)
	}
	if b = waitBackup(t, e, b.ID); b.Status != store.BackupDone {
		t.Fatalf("backup of the image: %+v", b)
	}
	if found := canariesInBackup(t, e, src.Canaries, b.ID); len(found) > 0 {
		t.Errorf("the backup of the image holds canaries:\n%s", strings.Join(found, "\n"))
	}
}

// TestWithoutAScriptNothingIsRewritten finalises the canary source without
// a script: the image says it is not anonymised, and holds the data as
// uploaded, canaries and all (which is also what shows that the searches
// of the scrub's test find what is there).
func TestWithoutAScriptNothingIsRewritten(t *testing.T) {
	w := newWorld(t, 5)
	e := engine.New(w.options())
	src := newCanarySource(t)
	img := newImage(t, e, "", src.Tarball)
	img, err := e.FinaliseImage(ctx, img.ID)
	if err != nil {
		t.Fatalf("finalise: %+v, %v", img, err)
	}
	if img.Anonymised {
		t.Errorf("an image finalised without a script says anonymised")
	}
	frozen, err := w.storage.Get(ctx, engine.ImageVolume(img.ID))
	if err != nil {
		t.Fatal(err)
	}
	found := canariesIn(t, src.Canaries, frozen.Path)
	for _, what := range []string{"table row", "TOAST value", "index", "pg_statistic", "deleted rows' stats",
		"materialized view", "stale matview", "role password", "WAL", "server log", "primary_conninfo", "user mapping password"} {
		if !hasPrefixed(found, what+": ") {
			t.Errorf("the %s canary is in no file of the image finalised without a script; found %v", what, found)
		}
	}
	inst, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: img.ID, Owner: "ada@example.com"})
	if err != nil {
		t.Fatal(err)
	}
	shown := canariesShownTo(t, certConn(t, inst), src.Canaries)
	for _, what := range []string{"table row", "TOAST value", "pg_statistic", "deleted rows' stats", "materialized view", "stale matview"} {
		if !hasPrefixed(shown, what+": ") {
			t.Errorf("the %s canary does not show to the instance's user without a script; shown %v", what, shown)
		}
	}
	if got := mustSQL(t, certConn(t, inst), "select count(*)::text from people"); got != "3000" {
		t.Errorf("people: %s rows, want the 3000 uploaded", got)
	}
	// The source's transaction in flight is rolled back whatever the
	// script: a clone runs with max_prepared_transactions = 0.
	if got := mustSQL(t, w.superuserConn(inst), "select count(*)::text from pg_prepared_xacts"); got != "0" {
		t.Errorf("%s prepared transactions, want the source's one rolled back", got)
	}
}

func hasPrefixed(list []string, prefix string) bool {
	for _, s := range list {
		if strings.HasPrefix(s, prefix) {
			return true
		}
	}
	return false
}
