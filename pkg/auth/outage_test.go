package auth_test

import (
	"errors"
	"net/http"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/sindri-db/sindri/pkg/auth"
	"github.com/sindri-db/sindri/pkg/store"
)

// storeOutage makes the test's metadata database refuse connections and
// ends the ones it has, as a leader going away in a failover does, until
// the returned function is called.
func (e *env) storeOutage() (end func()) {
	e.t.Helper()
	cfg, err := pgx.ParseConfig(e.dbURL)
	if err != nil {
		e.t.Fatal(err)
	}
	db := cfg.Database
	cfg.Database = "postgres"
	exec := func(sql string, args ...any) {
		e.t.Helper()
		conn, err := pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			e.t.Fatal(err)
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, sql, args...); err != nil {
			e.t.Fatalf("%s: %v", sql, err)
		}
	}
	exec("alter database " + pgx.Identifier{db}.Sanitize() + " with allow_connections false")
	exec("select pg_terminate_backend(pid) from pg_stat_activity where datname = $1", db)
	ended := false
	end = func() {
		if !ended {
			ended = true
			exec("alter database " + pgx.Identifier{db}.Sanitize() + " with allow_connections true")
		}
	}
	e.t.Cleanup(end)
	return end
}

// A login confirmed while the metadata store is out of reach (a failover)
// cannot record its token: the waiting client gets 503
// metadata_unavailable with Retry-After, not a 500, and nothing is
// recorded; once the store is back, logging in again works. A token's
// lookup meanwhile fails as unavailable, not as a bad token.
func TestLoginDuringAStoreOutage(t *testing.T) {
	e := newEnv(t)
	e.prov.Login(map[string]any{"email": "alice@example.com", "email_verified": true})
	state := randomString()
	waiting := e.wait(state)
	page := e.browse(state)
	if !isConfirmPage(page) {
		t.Fatalf("after signing in: %s", page)
	}
	end := e.storeOutage()
	e.decide(e.browser, page, "confirm")
	r := receive(t, waiting)
	if code := apiErrorOf(t, r, http.StatusServiceUnavailable); code != "metadata_unavailable" || r.header.Get("Retry-After") != "2" {
		t.Fatalf("POST /access_tokens during the outage: %s, Retry-After %q", r, r.header.Get("Retry-After"))
	}
	if _, err := e.authenticate(auth.TokenPrefix + randomString()); !errors.Is(err, store.ErrUnavailable) || errors.Is(err, auth.ErrUnauthorized) {
		t.Errorf("a token's lookup during the outage: %v, want store.ErrUnavailable", err)
	}
	end()
	if n := e.tokenRows(); n != 0 {
		t.Errorf("%d tokens recorded by the login that failed, want 0", n)
	}

	state = randomString()
	waiting = e.wait(state)
	page = e.browse(state)
	e.decide(e.browser, page, "confirm")
	tok := tokenOf(t, receive(t, waiting))
	if p := e.mustAuthenticate(tok.AccessToken); p.Email != "alice@example.com" {
		t.Errorf("principal after the outage: %+v", p)
	}
}
