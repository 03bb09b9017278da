package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sindri-db/sindri/pkg/postgres"
	"github.com/sindri-db/sindri/pkg/postgres/pgtest"
)

var ctx = context.Background()

const binPattern = "/usr/lib/postgresql/{version}/bin"

func TestMajorVersionAndBinDir(t *testing.T) {
	dir := t.TempDir()
	if _, err := postgres.MajorVersion(dir); !errors.Is(err, postgres.ErrNotDataDir) {
		t.Fatalf("a directory without PG_VERSION: %v, want ErrNotDataDir", err)
	}
	if _, err := postgres.BinDirFor(binPattern, dir); !errors.Is(err, postgres.ErrNotDataDir) {
		t.Fatalf("BinDirFor a directory without PG_VERSION: %v, want ErrNotDataDir", err)
	}
	os.WriteFile(filepath.Join(dir, "PG_VERSION"), []byte("garbage\n"), 0o644)
	if _, err := postgres.MajorVersion(dir); !errors.Is(err, postgres.ErrNotDataDir) {
		t.Fatalf("PG_VERSION 'garbage': %v, want ErrNotDataDir", err)
	}
	os.WriteFile(filepath.Join(dir, "PG_VERSION"), []byte("9.6\n"), 0o644)
	_, err := postgres.BinDirFor(binPattern, dir)
	if !errors.Is(err, postgres.ErrVersionMissing) || !strings.Contains(err.Error(), "PostgreSQL 9.6") {
		t.Fatalf("a major that is not installed: %v, want ErrVersionMissing naming 9.6", err)
	}
	os.WriteFile(filepath.Join(dir, "PG_VERSION"), []byte("15\n"), 0o644)
	if got, err := postgres.BinDirFor(binPattern, dir); err != nil || got != "/usr/lib/postgresql/15/bin" {
		t.Fatalf("BinDirFor 15 = %q, %v", got, err)
	}
}

func TestLookupUserRefusesRoot(t *testing.T) {
	if _, err := postgres.LookupUser("root"); err == nil {
		t.Fatal("LookupUser accepted root")
	}
}

// connect logs in over TCP and returns the result of a query, or the error.
func query(t *testing.T, connString, sql string) (string, error) {
	t.Helper()
	c, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(c, connString)
	if err != nil {
		return "", err
	}
	defer conn.Close(ctx)
	var out string
	err = conn.QueryRow(c, sql).Scan(&out)
	return out, err
}

func TestInstanceLoginsTLSAndPassword(t *testing.T) {
	c := pgtest.StartInstance(t)
	tcp := fmt.Sprintf("host=127.0.0.1 port=%d dbname=postgres", c.Port)
	cert := tcp + fmt.Sprintf(" user=%s sslmode=verify-ca sslrootcert=%s sslcert=%s sslkey=%s",
		postgres.ClientRole, c.ClientFiles.CA, c.ClientFiles.Cert, c.ClientFiles.Key)
	password := tcp + fmt.Sprintf(" user=%s password=%s sslmode=require", c.PasswordRole, c.Password)

	for name, conn := range map[string]string{"client certificate": cert, "password": password} {
		got, err := query(t, conn, "select rolsuper::text || ' ' || (select ssl from pg_stat_ssl where pid = pg_backend_pid())::text from pg_roles where rolname = current_user")
		if err != nil {
			t.Fatalf("%s login: %v", name, err)
		}
		if got != "false true" {
			t.Errorf("%s login: rolsuper, ssl = %s; want false true", name, got)
		}
	}

	refused := map[string]string{
		"certificate role without TLS":              tcp + " user=draupnir sslmode=disable",
		"certificate role, TLS without certificate": tcp + fmt.Sprintf(" user=draupnir sslmode=verify-ca sslrootcert=%s", c.ClientFiles.CA),
		"password role without TLS":                 tcp + fmt.Sprintf(" user=%s password=%s sslmode=disable", c.PasswordRole, c.Password),
		"wrong password":                            tcp + fmt.Sprintf(" user=%s password=nope sslmode=require", c.PasswordRole),
		"superuser over TCP":                        tcp + " user=postgres sslmode=require",
		"superuser with client cert":                tcp + fmt.Sprintf(" user=postgres sslmode=verify-ca sslrootcert=%s sslcert=%s sslkey=%s", c.ClientFiles.CA, c.ClientFiles.Cert, c.ClientFiles.Key),
	}
	for name, conn := range refused {
		if _, err := query(t, conn, "select 1::text"); err == nil {
			t.Errorf("%s: logged in, want refused", name)
		}
	}
}

func TestKilledPostmasterIsSeenDeadAndStartsAgain(t *testing.T) {
	c := pgtest.StartInstance(t)
	st, err := postgres.Status(c.DataDir)
	if err != nil || !st.Alive || st.PID != c.Process.PID || st.Status != "ready" {
		t.Fatalf("Status = %+v, %v; want alive, ready, pid %d", st, err, c.Process.PID)
	}
	if err := syscall.Kill(c.Process.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.Process.Exited:
	case <-time.After(5 * time.Second):
		t.Fatal("Exited not closed 5s after SIGKILL")
	}
	st, err = postgres.Status(c.DataDir)
	if err != nil || st.Alive {
		t.Fatalf("after SIGKILL Status = %+v, %v; want a postmaster.pid whose process is dead", st, err)
	}
	// The postmaster.pid it left does not keep a new one from starting.
	c.Restart(t)
	if _, err := query(t, c.SocketURL(), "select 1::text"); err != nil {
		t.Fatalf("after restart: %v", err)
	}
}

func TestStopEndsThePostmaster(t *testing.T) {
	c := pgtest.StartInstance(t)
	if err := postgres.Stop(ctx, c.DataDir, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.Process.Exited:
	case <-time.After(5 * time.Second):
		t.Fatal("postmaster still there after Stop")
	}
	if _, err := postgres.Status(c.DataDir); !errors.Is(err, postgres.ErrNotRunning) {
		t.Fatalf("Status after a clean stop: %v, want ErrNotRunning", err)
	}
	if conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", c.Port), time.Second); err == nil {
		conn.Close()
		t.Fatalf("port %d still accepts connections", c.Port)
	}
	// Stopping what is stopped is no error.
	if err := postgres.Stop(ctx, c.DataDir, time.Second); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
}

func TestRunningSeesZombies(t *testing.T) {
	// A child that exits and is not waited for stays a zombie: signal 0
	// still succeeds, Running must not.
	pid, err := syscall.ForkExec("/bin/true", []string{"true"}, &syscall.ProcAttr{})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if strings.Contains(string(data), ") Z ") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("child %d never became a zombie: %s", pid, data)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := syscall.Kill(pid, 0); err != nil {
		t.Fatalf("kill(pid, 0) on a zombie: %v (the test assumes it succeeds)", err)
	}
	if postgres.Running(pid) {
		t.Fatal("Running says a zombie is alive")
	}
	var ws syscall.WaitStatus
	syscall.Wait4(pid, &ws, 0, nil)
}

func TestConfigureIsIdempotent(t *testing.T) {
	c := pgtest.StartInstance(t)
	auto := filepath.Join(c.DataDir, postgres.AutoConfFile)
	before, err := os.ReadFile(auto)
	if err != nil {
		t.Fatal(err)
	}
	orig, err := os.ReadFile(filepath.Join(c.DataDir, "postgresql.conf"+postgres.KeptSuffix))
	if err != nil || !strings.Contains(string(orig), "max_connections = 100") {
		t.Fatalf("initdb's postgresql.conf is not kept beside sindri's: %v\n%s", err, orig)
	}
	c.Configure(t)
	after, err := os.ReadFile(auto)
	if err != nil || string(after) != string(before) {
		t.Fatalf("postgresql.auto.conf changed on a second Configure: %v\n%s\nthen\n%s", err, before, after)
	}
	// sindri's settings are in force: the port, and no archiving.
	got, err := query(t, c.SocketURL(), "select current_setting('port') || ' ' || current_setting('archive_mode') || ' ' || current_setting('listen_addresses')")
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("%d off *", c.Port); got != want {
		t.Fatalf("settings = %q, want %q", got, want)
	}
	info, err := os.Stat(filepath.Join(c.DataDir, postgres.ServerKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode().Perm() != 0o600 {
		t.Fatalf("server key mode %v, want 0600", info.Mode().Perm())
	}
}

func TestLinksInTheDataDirectoryAreNotFollowed(t *testing.T) {
	c := pgtest.StartInstance(t)
	if err := postgres.Stop(ctx, c.DataDir, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	// Files only root may touch, which the postgres user links to.
	secret := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(secret, []byte("root:only\n"), 0o600)
	for _, name := range []string{postgres.LogFile, postgres.ConfFile, postgres.ServerKeyFile} {
		p := filepath.Join(c.DataDir, name)
		os.Remove(p)
		if err := os.Symlink(secret, p); err != nil {
			t.Fatal(err)
		}
	}
	os.Symlink(secret, filepath.Join(c.DataDir, postgres.ServerKeyFile+".sindri-tmp"))
	c.Configure(t)
	c.Restart(t)
	got, err := os.ReadFile(secret)
	if err != nil || string(got) != "root:only\n" {
		t.Fatalf("the linked file changed: %q %v", got, err)
	}
	var st syscall.Stat_t
	syscall.Stat(secret, &st)
	if st.Uid != 0 {
		t.Fatalf("the linked file now belongs to uid %d", st.Uid)
	}
	if tail := postgres.LogTail(c.DataDir, 5); strings.Contains(tail, "root:only") {
		t.Fatal("the log tail shows the linked file")
	}
	os.Remove(filepath.Join(c.DataDir, postgres.LogFile))
	os.Symlink(secret, filepath.Join(c.DataDir, postgres.LogFile))
	if tail := postgres.LogTail(c.DataDir, 5); strings.Contains(tail, "root:only") {
		t.Fatal("LogTail followed a link")
	}
}

func TestAlterSystemCannotOverrideSindri(t *testing.T) {
	c := pgtest.StartInstance(t)
	execSQL := func(sql string) {
		conn, err := pgx.Connect(ctx, c.SocketURL())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	// What the original server may have had set with ALTER SYSTEM.
	execSQL("alter system set archive_mode = 'on'")
	execSQL("alter system set archive_command = 'cp %p /production-archive/%f'")
	execSQL("alter system set work_mem = '7MB'")
	postgres.Stop(ctx, c.DataDir, 10*time.Second)
	c.Configure(t)
	c.Restart(t)
	got, err := query(t, c.SocketURL(), "select current_setting('archive_mode') || ' ' || current_setting('archive_command') || ' ' || current_setting('work_mem')")
	if err != nil {
		t.Fatal(err)
	}
	if got != "off (disabled) 7MB" {
		t.Fatalf("settings after ALTER SYSTEM: %q; want archiving off and the user's other settings kept", got)
	}
}

// Client roles of the same names that come with the clone's data, given
// powers there, lose them: no superuser, CREATEROLE, CREATEDB,
// replication or RLS bypass, no membership but the password role's of
// the certificate role, no expiry. The setup needs no PL/pgSQL (the data
// has dropped it), and the password role logs in with its new password.
func TestClientRolesThatCameWithTheDataLoseTheirPowers(t *testing.T) {
	c := pgtest.StartInstance(t)
	pgtest.Exec(t, c.SocketURL(), fmt.Sprintf(`create role admins superuser;
		alter role %[1]s superuser createrole createdb replication bypassrls;
		alter role %[2]s superuser createrole createdb replication bypassrls valid until '2001-01-01';
		grant admins, pg_execute_server_program, pg_read_server_files to %[1]s;
		grant admins, pg_write_server_files to %[2]s;
		revoke %[1]s from %[2]s;
		grant %[2]s to %[1]s;
		drop extension plpgsql cascade`, postgres.ClientRole, c.PasswordRole))

	for run := 1; run <= 2; run++ {
		session, err := c.Cluster.Ready(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		verifier, err := postgres.PasswordVerifier(c.Password)
		if err != nil {
			t.Fatal(err)
		}
		err = session.SetUpClientRoles(ctx, c.PasswordRole, verifier, false)
		session.Close(ctx)
		if err != nil {
			t.Fatalf("setting up the roles, run %d: %v", run, err)
		}
		conn, err := pgx.Connect(ctx, c.SocketURL())
		if err != nil {
			t.Fatal(err)
		}
		roles := pgtest.MustQueryAll(t, conn, fmt.Sprintf(`select rolname || ': ' || concat_ws(' ', case when rolsuper then 'superuser' end,
				case when rolcreaterole then 'createrole' end, case when rolcreatedb then 'createdb' end,
				case when rolreplication then 'replication' end, case when rolbypassrls then 'bypassrls' end,
				case when not rolcanlogin then 'nologin' end)
			from pg_roles where rolname in ('%s', '%s') order by 1`, postgres.ClientRole, c.PasswordRole))
		members := pgtest.MustQueryAll(t, conn, fmt.Sprintf(`select m.rolname || ' in ' || g.rolname from pg_auth_members a
			join pg_roles g on g.oid = a.roleid join pg_roles m on m.oid = a.member
			where m.rolname in ('%s', '%s') order by 1`, postgres.ClientRole, c.PasswordRole))
		conn.Close(ctx)
		if want := []string{postgres.ClientRole + ": ", c.PasswordRole + ": "}; !slices.Equal(roles, want) {
			t.Errorf("run %d: roles %q, want %q", run, roles, want)
		}
		if want := []string{c.PasswordRole + " in " + postgres.ClientRole}; !slices.Equal(members, want) {
			t.Errorf("run %d: memberships %q, want %q", run, members, want)
		}
		got, err := query(t, fmt.Sprintf("host=127.0.0.1 port=%d dbname=postgres user=%s password=%s sslmode=require", c.Port, c.PasswordRole, c.Password),
			"select current_user::text")
		if err != nil || got != c.PasswordRole {
			t.Errorf("run %d: password login: %q %v", run, got, err)
		}
	}
}

// A verifier is not the password: it differs each time (its salt), and
// a password that is not printable ASCII, which SASLprep might change, is
// refused rather than hashed into a verifier Postgres would not match.
func TestPasswordVerifier(t *testing.T) {
	a, err := postgres.PasswordVerifier("s3cret")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := postgres.PasswordVerifier("s3cret")
	if !strings.HasPrefix(a, "SCRAM-SHA-256$4096:") || a == b || strings.Contains(a, "s3cret") {
		t.Errorf("verifiers %q and %q of one password", a, b)
	}
	for _, bad := range []string{"", "caf\u00e9", "two words", "tab\t"} {
		if _, err := postgres.PasswordVerifier(bad); err == nil {
			t.Errorf("PasswordVerifier(%q): no error", bad)
		}
	}
}
