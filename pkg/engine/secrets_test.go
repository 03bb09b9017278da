package engine_test

import (
	"errors"
	"fmt"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/sindri-db/sindri/pkg/engine"
	"github.com/sindri-db/sindri/pkg/metrics"
	"github.com/sindri-db/sindri/pkg/store"
)

// statusReader makes a role that may read every column of the metadata
// tables except the sealed ones, and returns a store logged in as it.
func statusReader(t *testing.T, w *world) *store.Store {
	t.Helper()
	role := fmt.Sprintf("status_reader_%d", time.Now().UnixNano())
	conn, err := pgx.Connect(ctx, w.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	sealed := map[string]bool{}
	for _, c := range store.SealedColumns() {
		sealed[c] = true
	}
	rows, _ := conn.Query(ctx, `select table_name, string_agg(quote_ident(column_name), ', ')
		filter (where table_name || '.' || column_name <> all ($1))
		from information_schema.columns where table_schema = 'public' group by table_name`, store.SealedColumns())
	grants := []string{"create role " + role + " login", "grant usage on schema public to " + role}
	var table, cols string
	if _, err := pgx.ForEachRow(rows, []any{&table, &cols}, func() error {
		grants = append(grants, fmt.Sprintf("grant select (%s) on %s to %s", cols, pgx.Identifier{table}.Sanitize(), role))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, g := range grants {
		if _, err := conn.Exec(ctx, g); err != nil {
			t.Fatalf("%s: %v", g, err)
		}
	}
	t.Cleanup(func() {
		c, err := pgx.Connect(ctx, w.dbURL)
		if err != nil {
			t.Error(err)
			return
		}
		defer c.Close(ctx)
		if _, err := c.Exec(ctx, "drop owned by "+role+"; drop role "+role); err != nil {
			t.Error(err)
		}
	})
	st, err := store.Open(ctx, strings.Replace(w.dbURL, "postgres://postgres@", "postgres://"+role+"@", 1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	return st
}

// /status and /metrics count instances, images and backups without
// reading a password, a private key or a source_url: they work for a
// role that may read every column but those.
func TestStatusAndMetricsReadNoSecretColumn(t *testing.T) {
	w := newWorld(t, 5)
	e := engine.New(w.options())
	if _, err := e.CreateInstance(ctx, engine.InstanceRequest{ImageID: 1, Owner: "upload"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.CreateImage(ctx, engine.ImageRequest{BackedUpAt: time.Now(), SourceURL: "postgres://rep:pw@127.0.0.1:1/postgres"}); err != nil {
		t.Fatal(err)
	}
	reader := statusReader(t, w)

	// The role really is kept from the secrets: reading an instance whole
	// is refused, as /status's former list of instances was.
	var pgErr *pgconn.PgError
	if _, err := reader.ListInstances(ctx, ""); !errors.As(err, &pgErr) || pgErr.Code != "42501" {
		t.Fatalf("listing instances whole as the status reader: %v, want permission denied", err)
	}
	if _, err := reader.ImageSourceURL(ctx, 2); !errors.As(err, &pgErr) || pgErr.Code != "42501" {
		t.Fatalf("reading a source_url as the status reader: %v, want permission denied", err)
	}

	opts := w.options()
	opts.Store = reader
	counting := engine.New(opts)
	st, err := counting.Status(ctx)
	if err != nil {
		t.Fatalf("Status as the status reader: %v", err)
	}
	if st.InstancesByStatus["running"] != 1 || st.ImagesByStatus["ready"] != 1 || st.ImagesByStatus["pending"] != 1 {
		t.Fatalf("status %+v", st)
	}

	rec := httptest.NewRecorder()
	metrics.New(counting.Status).Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	if rec.Code != 200 || !strings.Contains(string(body), `sindri_instances{status="running"} 1`) ||
		!strings.Contains(string(body), `sindri_images{status="pending"} 1`) {
		t.Fatalf("metrics as the status reader: %d\n%s", rec.Code, body)
	}
}

// A pulled image's source_url is sealed while the pull is pending and
// gone once the image is ready; its form without the password stays.
func TestPullKeepsNoSourcePasswordOnceDone(t *testing.T) {
	w := newWorld(t, 5)
	e := engine.New(w.options())
	src := replicationSource(t) // trusts the socket: the password is not checked, only carried
	const password = "Pull-S3cret"
	url := fmt.Sprintf("postgres://postgres:%s@/postgres?host=%s&port=%d", password, src.SocketDir, src.Port)
	img, err := e.CreateImage(ctx, engine.ImageRequest{BackedUpAt: time.Now(), SourceURL: url})
	if err != nil {
		t.Fatal(err)
	}
	row := func() string {
		t.Helper()
		return mustSQL(t, w.dbURL, fmt.Sprintf("select concat_ws(' | ', source_url, source_url_redacted) from images where id = %d", img.ID))
	}
	if r := row(); strings.Contains(r, password) || !strings.HasPrefix(r, "sindri:v1:") {
		t.Fatalf("pending image's row: %q", r)
	}
	if got, err := e.FinaliseImage(ctx, img.ID); err != nil || got.Status != store.ImageReady {
		t.Fatalf("finalise: %+v, %v", got, err)
	}
	redacted := fmt.Sprintf("postgres://postgres@/postgres?host=%s&port=%d", src.SocketDir, src.Port)
	if r := row(); r != redacted {
		t.Fatalf("ready image's row: %q, want only %q", r, redacted)
	}
}
