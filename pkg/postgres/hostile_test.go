package postgres_test

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sindri-db/sindri/pkg/postgres"
	"github.com/sindri-db/sindri/pkg/postgres/pgtest"
)

// TestHostileDataConfigurationIsNotRead plants, for each way a data
// directory can hold configuration, a value for every setting sindri
// pins, then starts it as sindri starts an instance: every setting must
// show sindri's value, no file of the data directory but sindri's must be
// read as configuration, and nothing the hostile settings would do
// (a canary file, a TCP login without a password) may happen.
func TestHostileDataConfigurationIsNotRead(t *testing.T) {
	for _, v := range pgtest.HostileVectors {
		t.Run(v.Name, func(t *testing.T) {
			i := pgtest.NewInstance(t)
			canaryDir := pgtest.Dir(t)
			i.Owner.Chown(canaryDir, false)
			v.Plant(t, i.Owner, i.DataDir, canaryDir)
			i.Start(t) // fails the test if the broken lines were read
			conn, err := pgx.Connect(ctx, i.SocketURL())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(ctx)
			pgtest.CheckSindrisSettings(t, conn, pgtest.Where{DataDir: i.DataDir, SocketDir: i.SocketDir, Port: i.Port,
				ClusterName: i.Settings.ClusterName, SharedBuffers: i.Settings.SharedBuffers}, canaryDir)
			if _, err := query(t, fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=disable", i.Port), "select 1"); err == nil {
				t.Error("a TCP login without a password or certificate got in")
			}
			for _, name := range []string{"postgresql.conf", "pg_hba.conf", "pg_ident.conf"} {
				if _, err := os.Lstat(filepath.Join(i.DataDir, name)); !os.IsNotExist(err) {
					t.Errorf("the data directory's %s is still in place: %v", name, err)
				}
				if _, err := os.Lstat(filepath.Join(i.DataDir, name+postgres.KeptSuffix)); err != nil {
					t.Errorf("the data directory's %s is not kept beside: %v", name, err)
				}
			}
		})
	}
}

// TestKeptSettingsStay: the harmless settings of a data directory's
// postgresql.conf (its top level) and postgresql.auto.conf stay, the
// auto.conf's winning; everything else of them goes; the originals stay
// beside; and a restart changes nothing. A superuser's later ALTER
// SYSTEM of a kept setting survives restarts, of another does not, and
// never replaces the data's original file.
func TestKeptSettingsStay(t *testing.T) {
	i := pgtest.NewInstance(t)
	canaryDir := pgtest.Dir(t)
	conf := filepath.Join(i.DataDir, "postgresql.conf")
	pgtest.AppendTo(t, conf, "timezone = 'Pacific/Auckland'\nwork_mem = '5MB'\nsearch_path = 'app, public'   # the app's schema first\n"+
		"basebackup_to_shell.command = 'touch "+filepath.Join(canaryDir, "ran")+"'\ninclude_dir 'conf.d'\n")
	pgtest.WriteAs(t, i.Owner, filepath.Join(i.DataDir, "conf.d", "x.conf"), "lock_timeout = '42s'\n")
	pgtest.AppendTo(t, filepath.Join(i.DataDir, postgres.AutoConfFile), "work_mem = '7MB'\nstatement_timeout 1234\nplpgsql.extra_warnings = 'all'\n"+
		"application_name = 'it''s \\\\ here'\nmax_connections = 77\n")
	autoOrig, err := os.ReadFile(filepath.Join(i.DataDir, postgres.AutoConfFile))
	if err != nil {
		t.Fatal(err)
	}
	i.Start(t)
	conn, err := pgx.Connect(ctx, i.PasswordURL())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	const show = "select concat_ws(' | ', current_setting('timezone'), current_setting('work_mem'), current_setting('search_path'), " +
		"current_setting('statement_timeout'), current_setting('plpgsql.extra_warnings', true), current_setting('lock_timeout'), " +
		"current_setting('max_connections'), coalesce(current_setting('basebackup_to_shell.command', true), 'unset'))"
	want := "Pacific/Auckland | 7MB | app, public | 1234ms | all | 0 | 50 | unset"
	if got := pgtest.MustQuery(t, conn, show); got != want {
		t.Fatalf("settings in a client's session:\n got %s\nwant %s", got, want)
	}
	auto := filepath.Join(i.DataDir, postgres.AutoConfFile)
	first, _ := os.ReadFile(auto)
	if strings.Contains(string(first), "application_name") {
		t.Errorf("postgresql.auto.conf kept application_name, which is not a kept setting:\n%s", first)
	}
	kept, err := os.ReadFile(auto + postgres.KeptSuffix)
	if err != nil || string(kept) != string(autoOrig) {
		t.Errorf("the original postgresql.auto.conf is not kept beside: %v\n%s", err, kept)
	}

	conn.Close(ctx)
	postgres.Stop(ctx, i.DataDir, 10*time.Second)
	i.Configure(t)
	i.Restart(t)
	if again, _ := os.ReadFile(auto); string(again) != string(first) {
		t.Errorf("a restart rewrote postgresql.auto.conf:\n%s\nthen\n%s", first, again)
	}

	// A superuser's ALTER SYSTEM (allow_superuser), then a restart.
	super, err := pgx.Connect(ctx, i.SocketURL())
	if err != nil {
		t.Fatal(err)
	}
	for _, stmt := range []string{"alter system set work_mem = '9MB'", "alter system set archive_command = 'touch x'", `alter system set search_path = "it's", public, "back\slash"`} {
		if _, err := super.Exec(ctx, stmt); err != nil {
			t.Fatal(err)
		}
	}
	super.Close(ctx)
	postgres.Stop(ctx, i.DataDir, 10*time.Second)
	i.Configure(t)
	i.Restart(t)
	super, err = pgx.Connect(ctx, i.SocketURL())
	if err != nil {
		t.Fatal(err)
	}
	defer super.Close(ctx)
	if got := pgtest.MustQuery(t, super, "select current_setting('work_mem') || ' ' || current_setting('archive_command') || ' ' || current_setting('search_path')"); got != `9MB (disabled) "it's", public, "back\slash"` {
		t.Errorf("after ALTER SYSTEM and a restart: %q", got)
	}
	if got := pgtest.MustQueryAll(t, super, "select name from pg_file_settings where sourcefile like '%auto.conf' and name = 'archive_command'"); len(got) != 0 {
		t.Errorf("postgresql.auto.conf still sets archive_command after a restart")
	}
	if again, _ := os.ReadFile(auto + postgres.KeptSuffix); string(again) != string(autoOrig) {
		t.Errorf("the data's original postgresql.auto.conf was replaced:\n%s", again)
	}
}

// TestHostileSettingsPerDatabaseAndRole plants, in the catalog, settings
// that win over the command line (ALTER DATABASE/ROLE ... SET): a library
// loaded into every session, a library path, and a search_path for the
// superuser that puts a schema of the data's own before pg_catalog, with a
// view named pg_roles that records who read it. Starting it as sindri
// starts an instance must remove them, keep the harmless ones, let
// clients in without the library, and never read the planted view.
func TestHostileSettingsPerDatabaseAndRole(t *testing.T) {
	i := pgtest.StartInstance(t)
	super, err := pgx.Connect(ctx, i.SocketURL())
	if err != nil {
		t.Fatal(err)
	}
	for _, stmt := range []string{
		"create schema sindri_evil",
		"create table sindri_evil.hits (who text)",
		"create function sindri_evil.spy() returns setof pg_catalog.pg_roles language sql as " +
			"$$ insert into sindri_evil.hits values (current_user); select * from pg_catalog.pg_roles $$",
		"create view sindri_evil.pg_roles as select * from sindri_evil.spy()",
		"grant usage on schema sindri_evil to public",
		"grant insert on sindri_evil.hits to public",
		"alter role postgres set search_path = sindri_evil, pg_catalog",
		"alter role all set dynamic_library_path = '" + pgtest.Dir(t) + "'",
		"alter role postgres in database postgres set jit = on",
		"alter database postgres set work_mem = '7MB'",
		"alter database postgres set search_path = app, public",
		"alter database postgres set local_preload_libraries = " + pgtest.CanaryLib,
		"alter database postgres set session_preload_libraries = " + pgtest.CanaryLib, // last: from here no session starts
	} {
		if _, err := super.Exec(ctx, stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	super.Close(ctx)
	if _, err := query(t, i.PasswordURL(), "select 1"); err == nil || !strings.Contains(err.Error(), pgtest.CanaryLib) {
		t.Fatalf("the planted library did not stop a client's session (%v): the test plants nothing", err)
	}
	postgres.Stop(ctx, i.DataDir, 10*time.Second)
	i.Start(t) // as a new instance: Configure, start, client roles

	if _, err := query(t, i.PasswordURL(), "select 1"); err != nil {
		t.Fatalf("a client's session after the start: %v", err)
	}
	// Without sindri's session options, as a client's session starts.
	got, err := query(t, i.SocketURL(), "select concat_ws(' | ', current_setting('session_preload_libraries'), current_setting('local_preload_libraries'), "+
		"current_setting('dynamic_library_path'), current_setting('work_mem'), current_setting('search_path'), current_setting('jit'))")
	if err != nil {
		t.Fatalf("a session of the superuser after the start: %v", err)
	}
	if want := " |  | $libdir | 7MB | app, public | off"; got != want {
		t.Errorf("settings of a session:\n got %q\nwant %q", got, want)
	}
	super, err = pgx.Connect(ctx, i.SuperuserURL())
	if err != nil {
		t.Fatal(err)
	}
	defer super.Close(ctx)
	if hits := pgtest.MustQuery(t, super, "select count(*)::text from sindri_evil.hits"); hits != "0" {
		t.Errorf("sindri's session read the planted view pg_roles %s times", hits)
	}
	left := pgtest.MustQueryAll(t, super, "select unnest(setconfig) from pg_db_role_setting")
	if want := []string{"search_path=app, public", "work_mem=7MB"}; !slices.Equal(left, want) {
		t.Errorf("settings per database and role left: %q, want %q", left, want)
	}
}

// TestKeptSettingsAreThoseAnyUserMaySet: keeping a setting grants
// nothing when any user could set it in a session of their own.
func TestKeptSettingsAreThoseAnyUserMaySet(t *testing.T) {
	i := pgtest.StartInstance(t)
	conn, err := pgx.Connect(ctx, i.SocketURL())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "do $$ begin end $$; load 'pg_trgm'"); err != nil { // registers their settings
		t.Fatal(err)
	}
	rows, err := conn.Query(ctx, "select lower(name), context from pg_settings")
	if err != nil {
		t.Fatal(err)
	}
	contexts := map[string]string{}
	for rows.Next() {
		var name, context string
		if err := rows.Scan(&name, &context); err != nil {
			t.Fatal(err)
		}
		contexts[name] = context
	}
	seen := 0
	for name, context := range contexts {
		if !postgres.KeptSetting(name) {
			continue
		}
		seen++
		if context != "user" && name != "lc_messages" {
			t.Errorf("%s is kept but its context is %s: not every user may set it", name, context)
		}
	}
	for name := range postgres.KeptSettings {
		if _, ok := contexts[name]; !ok {
			t.Errorf("kept setting %s does not exist in PostgreSQL %s", name, pgtest.Major)
		}
	}
	if seen < len(postgres.KeptSettings)+10 {
		t.Errorf("only %d settings of PostgreSQL match the kept ones", seen)
	}
}
