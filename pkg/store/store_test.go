package store

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sindri-db/sindri/migrations"
)

var ctx = context.Background()

func allVersions(t *testing.T) []string {
	t.Helper()
	files, err := fs.Glob(migrations.FS, "*.sql")
	if err != nil || len(files) == 0 {
		t.Fatalf("no migrations: %v", err)
	}
	sort.Strings(files)
	for i, f := range files {
		files[i] = strings.TrimSuffix(f, ".sql")
	}
	return files
}

func recorded(t *testing.T, s *Store) []string {
	t.Helper()
	rows, err := s.pool.Query(ctx, "select version from schema_migrations order by version")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var vs []string
	for rows.Next() {
		var v string
		if err := rows.Scan(&v); err != nil {
			t.Fatal(err)
		}
		vs = append(vs, v)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return vs
}

func tableExists(t *testing.T, s *Store, name string) bool {
	t.Helper()
	var ok bool
	if err := s.pool.QueryRow(ctx, "select to_regclass($1) is not null", name).Scan(&ok); err != nil {
		t.Fatal(err)
	}
	return ok
}

func must[T any](t *testing.T) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func check(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func wantErr(t *testing.T, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("error %v, want %v", err, target)
	}
}

func TestMigrateOnce(t *testing.T) {
	t.Parallel()
	s, _ := openDB(t)
	want := allVersions(t)
	applied := must[[]string](t)(s.Migrate(ctx))
	if !slices.Equal(applied, want) {
		t.Fatalf("first Migrate applied %v, want %v", applied, want)
	}
	applied = must[[]string](t)(s.Migrate(ctx))
	if len(applied) != 0 {
		t.Fatalf("second Migrate applied %v, want nothing", applied)
	}
	if got := recorded(t, s); !slices.Equal(got, want) {
		t.Fatalf("schema_migrations holds %v, want %v", got, want)
	}
	for _, table := range []string{"images", "instances", "backups", "tokens", "audit_log"} {
		if !tableExists(t, s, table) {
			t.Errorf("no table %s", table)
		}
	}
}

func TestMigrateConcurrently(t *testing.T) {
	t.Parallel()
	s1, url := openDB(t)
	s2 := openURL(t, url)
	var (
		wg      sync.WaitGroup
		applied [2][]string
		errs    [2]error
	)
	for i, s := range []*Store{s1, s2} {
		wg.Go(func() { applied[i], errs[i] = s.Migrate(ctx) })
	}
	wg.Wait()
	for _, err := range errs {
		check(t, err)
	}
	all := append(slices.Clone(applied[0]), applied[1]...)
	sort.Strings(all)
	if want := allVersions(t); !slices.Equal(all, want) {
		t.Fatalf("together applied %v and %v, want each of %v once", applied[0], applied[1], want)
	}
	if got := recorded(t, s1); !slices.Equal(got, allVersions(t)) {
		t.Fatalf("schema_migrations holds %v", got)
	}
}

func TestMigrateFailureRollsBackThatFile(t *testing.T) {
	t.Parallel()
	s, _ := openDB(t)
	broken := fstest.MapFS{
		"0001_a.sql": {Data: []byte("create table a (x int);")},
		"0002_b.sql": {Data: []byte("create table b (x int);\ninsert into a values (1);\nselect 1/0;")},
		"0003_c.sql": {Data: []byte("create table c (x int);")},
		"README.md":  {Data: []byte("not a migration")},
	}
	applied, err := s.migrateFS(ctx, broken)
	if err == nil || !strings.Contains(err.Error(), "0002_b.sql") {
		t.Fatalf("error %v, want one naming 0002_b.sql", err)
	}
	if !slices.Equal(applied, []string{"0001_a"}) {
		t.Fatalf("applied %v, want [0001_a]", applied)
	}
	if got := recorded(t, s); !slices.Equal(got, []string{"0001_a"}) {
		t.Fatalf("schema_migrations holds %v", got)
	}
	if !tableExists(t, s, "a") || tableExists(t, s, "b") || tableExists(t, s, "c") {
		t.Fatal("want table a only")
	}
	var n int
	check(t, s.pool.QueryRow(ctx, "select count(*) from a").Scan(&n))
	if n != 0 {
		t.Fatalf("the failed file's insert stayed: %d rows", n)
	}

	broken["0002_b.sql"] = &fstest.MapFile{Data: []byte("create table b (x int);")}
	applied = must[[]string](t)(s.migrateFS(ctx, broken))
	if !slices.Equal(applied, []string{"0002_b", "0003_c"}) {
		t.Fatalf("after the fix applied %v", applied)
	}
}

func newImage(t *testing.T, s *Store, name string) Image {
	t.Helper()
	return must[Image](t)(s.CreateImage(ctx, ImageInput{
		Name: name, BackedUpAt: time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC),
	}))
}

func newInstance(t *testing.T, s *Store, imageID int64, owner string) Instance {
	t.Helper()
	return must[Instance](t)(s.CreateInstance(ctx, InstanceInput{ImageID: imageID, Owner: owner}))
}

func TestImages(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	backedUp := time.Date(2024, 1, 2, 3, 4, 5, 0, time.FixedZone("CEST", 2*3600))
	img := must[Image](t)(s.CreateImage(ctx, ImageInput{
		Name: "prod", BackedUpAt: backedUp, AnonymisationScript: "update users set email = 'x';",
		SourceURL: "postgres://u:pw@db/prod", SourceURLRedacted: "postgres://u@db/prod", BackupID: 42,
	}))
	if img.ID == 0 || img.Status != ImagePending || img.Name != "prod" || img.BackupID != 42 ||
		!img.HasSourceURL || img.SourceURLRedacted != "postgres://u@db/prod" || img.AnonymisationScript == "" || img.Error != "" {
		t.Fatalf("created %+v", img)
	}
	if url := must[string](t)(s.ImageSourceURL(ctx, img.ID)); url != "postgres://u:pw@db/prod" {
		t.Fatalf("source_url %q", url)
	}
	if !img.BackedUpAt.Equal(backedUp) || img.BackedUpAt.Location() != time.UTC || img.CreatedAt.Location() != time.UTC {
		t.Fatalf("times %v %v, want %v in UTC", img.BackedUpAt, img.CreatedAt, backedUp)
	}
	got := must[Image](t)(s.GetImage(ctx, img.ID))
	if !reflect.DeepEqual(got, img) {
		t.Fatalf("got %+v, want %+v", got, img)
	}

	check(t, s.SetImageStatus(ctx, img.ID, ImageFinalising, ""))
	check(t, s.SetImageStatus(ctx, img.ID, ImageFailed, "disk full"))
	got = must[Image](t)(s.GetImage(ctx, img.ID))
	if got.Status != ImageFailed || got.Error != "disk full" || got.UpdatedAt.Before(img.UpdatedAt) {
		t.Fatalf("after failing: %+v", got)
	}
	if got.Anonymised || got.UserWritten {
		t.Fatalf("a new image from an upload: anonymised %v, user-written %v; want neither", got.Anonymised, got.UserWritten)
	}
	check(t, s.MarkImageReady(ctx, img.ID, "15.4", 1<<30, true))
	got = must[Image](t)(s.GetImage(ctx, img.ID))
	if got.Status != ImageReady || got.Error != "" || got.PGVersion != "15.4" || got.SizeBytes != 1<<30 || !got.Anonymised {
		t.Fatalf("after ready: %+v", got)
	}
	// The pull is over: the source_url goes, its redacted form stays.
	if got.HasSourceURL || got.SourceURLRedacted != "postgres://u@db/prod" || must[string](t)(s.ImageSourceURL(ctx, img.ID)) != "" {
		t.Fatalf("source_url after ready: %+v", got)
	}
	wantErr(t, s.SetImageStatus(ctx, img.ID, "bogus", ""), ErrInvalid)

	restored := must[Image](t)(s.CreateImage(ctx, ImageInput{BackedUpAt: backedUp, BackupID: 7, UserWritten: true}))
	if got := must[Image](t)(s.GetImage(ctx, restored.ID)); !got.UserWritten || got.Anonymised {
		t.Fatalf("an image restored from an instance's backup: %+v; want user-written, not anonymised", got)
	}
	check(t, s.DeleteImage(ctx, restored.ID))
	second := newImage(t, s, "")
	imgs := must[[]Image](t)(s.ListImages(ctx))
	if len(imgs) != 2 || imgs[0].ID != second.ID || imgs[1].ID != img.ID {
		t.Fatalf("list %+v, want newest first", imgs)
	}

	check(t, s.DeleteImage(ctx, img.ID))
	_, err := s.GetImage(ctx, img.ID)
	wantErr(t, err, ErrNotFound)
	wantErr(t, s.DeleteImage(ctx, img.ID), ErrNotFound)
	wantErr(t, s.SetImageStatus(ctx, img.ID, ImageReady, ""), ErrNotFound)
	wantErr(t, s.MarkImageReady(ctx, img.ID, "15", 1, false), ErrNotFound)
}

func TestInstances(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	img := newImage(t, s, "img")
	expires := time.Now().Add(time.Hour).Truncate(time.Microsecond)
	inst := must[Instance](t)(s.CreateInstance(ctx, InstanceInput{
		ImageID: img.ID, Owner: "ada@example.com", ExpiresAt: &expires,
	}))
	if inst.Status != InstanceCreating || inst.Port != 0 || inst.ImageID != img.ID ||
		inst.ExpiresAt == nil || !inst.ExpiresAt.Equal(expires) || inst.Protected {
		t.Fatalf("created %+v", inst)
	}
	if got := must[Instance](t)(s.GetInstance(ctx, inst.ID)); !got.ExpiresAt.Equal(*inst.ExpiresAt) || got.ID != inst.ID {
		t.Fatalf("got %+v", got)
	}

	creds := Credentials{
		Username: "u", Password: "p", CACertificate: "ca", ServerCertificate: "sc",
		ServerKey: "sk", ClientCertificate: "cc", ClientKey: "ck",
	}
	check(t, s.SetInstanceCredentials(ctx, inst.ID, creds))
	check(t, s.SetInstancePID(ctx, inst.ID, 4242))
	check(t, s.SetInstanceStatus(ctx, inst.ID, InstanceRunning, ""))
	got := must[Instance](t)(s.GetInstance(ctx, inst.ID))
	if got.Credentials != creds || got.PID != 4242 || got.Status != InstanceRunning {
		t.Fatalf("after setters: %+v", got)
	}
	check(t, s.SetInstanceStatus(ctx, inst.ID, InstanceFailed, "boom"))
	check(t, s.SetInstancePID(ctx, inst.ID, 0))
	got = must[Instance](t)(s.GetInstance(ctx, inst.ID))
	if got.Status != InstanceFailed || got.Error != "boom" || got.PID != 0 {
		t.Fatalf("after failing: %+v", got)
	}

	// Expiry: nil leaves a column alone, the zero time clears expires_at.
	yes := true
	check(t, s.SetInstanceExpiry(ctx, inst.ID, nil, &yes))
	got = must[Instance](t)(s.GetInstance(ctx, inst.ID))
	if !got.Protected || got.ExpiresAt == nil || !got.ExpiresAt.Equal(expires) {
		t.Fatalf("after protecting: %+v", got)
	}
	later := expires.Add(time.Hour)
	check(t, s.SetInstanceExpiry(ctx, inst.ID, &later, nil))
	got = must[Instance](t)(s.GetInstance(ctx, inst.ID))
	if !got.Protected || !got.ExpiresAt.Equal(later) {
		t.Fatalf("after extending: %+v", got)
	}
	check(t, s.SetInstanceExpiry(ctx, inst.ID, &time.Time{}, nil))
	if got = must[Instance](t)(s.GetInstance(ctx, inst.ID)); got.ExpiresAt != nil {
		t.Fatalf("after clearing: %+v", got)
	}

	other := newInstance(t, s, img.ID, "upload")
	if all := must[[]Instance](t)(s.ListInstances(ctx, "")); len(all) != 2 || all[0].ID != inst.ID || all[1].ID != other.ID {
		t.Fatalf("list all: %+v", all)
	}
	if mine := must[[]Instance](t)(s.ListInstances(ctx, "upload")); len(mine) != 1 || mine[0].ID != other.ID {
		t.Fatalf("list upload's: %+v", mine)
	}
	if n := must[int](t)(s.CountInstancesOfImage(ctx, img.ID)); n != 2 {
		t.Fatalf("count %d, want 2", n)
	}

	check(t, s.DeleteInstance(ctx, inst.ID))
	_, err := s.GetInstance(ctx, inst.ID)
	wantErr(t, err, ErrNotFound)
	wantErr(t, s.DeleteInstance(ctx, inst.ID), ErrNotFound)
	wantErr(t, s.SetInstanceStatus(ctx, inst.ID, InstanceRunning, ""), ErrNotFound)
	wantErr(t, s.SetInstancePID(ctx, inst.ID, 1), ErrNotFound)
	wantErr(t, s.SetInstanceCredentials(ctx, inst.ID, creds), ErrNotFound)
	wantErr(t, s.SetInstanceExpiry(ctx, inst.ID, nil, &yes), ErrNotFound)
	wantErr(t, s.ReleasePort(ctx, inst.ID), ErrNotFound)
	_, err = s.CreateInstance(ctx, InstanceInput{ImageID: 999999, Owner: "x"})
	wantErr(t, err, ErrNotFound)
	if errors.Is(err, ErrInUse) {
		t.Fatalf("missing image classified as in use: %v", err)
	}
}

func TestDeleteImageInUse(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	img := newImage(t, s, "img")
	inst := newInstance(t, s, img.ID, "upload")
	err := s.DeleteImage(ctx, img.ID)
	wantErr(t, err, ErrInUse)
	if errors.Is(err, ErrNotFound) || errors.Is(err, ErrConflict) {
		t.Fatalf("misclassified: %v", err)
	}
	check(t, s.DeleteInstance(ctx, inst.ID))
	check(t, s.DeleteImage(ctx, img.ID))
}

func TestExpiredInstances(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	img := newImage(t, s, "img")
	now := time.Now()
	past, future := now.Add(-time.Minute), now.Add(time.Minute)
	yes := true
	expired := must[Instance](t)(s.CreateInstance(ctx, InstanceInput{ImageID: img.ID, Owner: "a", ExpiresAt: &past}))
	must[Instance](t)(s.CreateInstance(ctx, InstanceInput{ImageID: img.ID, Owner: "b", ExpiresAt: &past, Protected: true}))
	must[Instance](t)(s.CreateInstance(ctx, InstanceInput{ImageID: img.ID, Owner: "c", ExpiresAt: &future}))
	must[Instance](t)(s.CreateInstance(ctx, InstanceInput{ImageID: img.ID, Owner: "d"}))
	unprotected := must[Instance](t)(s.CreateInstance(ctx, InstanceInput{ImageID: img.ID, Owner: "e", ExpiresAt: &past, Protected: true}))
	no := false
	check(t, s.SetInstanceExpiry(ctx, unprotected.ID, nil, &no))
	protectedLater := must[Instance](t)(s.CreateInstance(ctx, InstanceInput{ImageID: img.ID, Owner: "f", ExpiresAt: &past}))
	check(t, s.SetInstanceExpiry(ctx, protectedLater.ID, nil, &yes))

	got := must[[]Instance](t)(s.ExpiredInstances(ctx, now))
	var ids []int64
	for _, i := range got {
		ids = append(ids, i.ID)
	}
	if want := []int64{expired.ID, unprotected.ID}; !slices.Equal(ids, want) {
		t.Fatalf("expired %v, want %v", ids, want)
	}
}

func TestAllocatePortConcurrently(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	img := newImage(t, s, "img")
	const n, min, max = 20, 30000, 30025
	insts := make([]Instance, n)
	for i := range insts {
		insts[i] = newInstance(t, s, img.ID, "upload")
	}
	ports := make([]int, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range insts {
		wg.Go(func() {
			ports[i], errs[i] = s.AllocatePort(ctx, insts[i].ID, min, max, func(int) bool { return true })
		})
	}
	wg.Wait()
	seen := map[int]bool{}
	for i, p := range ports {
		check(t, errs[i])
		if p < min || p >= max || seen[p] {
			t.Fatalf("ports %v: %d out of range or given twice", ports, p)
		}
		seen[p] = true
		if got := must[Instance](t)(s.GetInstance(ctx, insts[i].ID)); got.Port != p {
			t.Fatalf("instance %d holds %d, was given %d", got.ID, got.Port, p)
		}
	}
}

func TestAllocatePortExhaustionAndRelease(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	img := newImage(t, s, "img")
	a, b, c := newInstance(t, s, img.ID, "x"), newInstance(t, s, img.ID, "x"), newInstance(t, s, img.ID, "x")
	free := func(int) bool { return true }
	if p := must[int](t)(s.AllocatePort(ctx, a.ID, 6000, 6002, free)); p != 6000 {
		t.Fatalf("a got %d, want the lowest, 6000", p)
	}
	if p := must[int](t)(s.AllocatePort(ctx, b.ID, 6000, 6002, free)); p != 6001 {
		t.Fatalf("b got %d, want 6001", p)
	}
	_, err := s.AllocatePort(ctx, c.ID, 6000, 6002, free)
	wantErr(t, err, ErrPortsExhausted)

	check(t, s.ReleasePort(ctx, a.ID))
	if got := must[Instance](t)(s.GetInstance(ctx, a.ID)); got.Port != 0 {
		t.Fatalf("released instance holds %d", got.Port)
	}
	if p := must[int](t)(s.AllocatePort(ctx, c.ID, 6000, 6002, free)); p != 6000 {
		t.Fatalf("c got %d after a released, want 6000", p)
	}
	check(t, s.DeleteInstance(ctx, b.ID))
	if p := must[int](t)(s.AllocatePort(ctx, a.ID, 6000, 6002, free)); p != 6001 {
		t.Fatalf("a got %d after b was deleted, want 6001", p)
	}
	_, err = s.AllocatePort(ctx, 999999, 7000, 7010, free)
	wantErr(t, err, ErrNotFound)
}

// A port freed below the last one given is taken again only once the
// range's end is reached: the search starts after the last port given, so
// that a host whose lowest thousand ports are held does not walk them all
// for each create.
func TestAllocatePortGoesOnAfterTheLastPortGiven(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	img := newImage(t, s, "img")
	free := func(int) bool { return true }
	allocate := func(want int) Instance {
		t.Helper()
		inst := newInstance(t, s, img.ID, "x")
		if p := must[int](t)(s.AllocatePort(ctx, inst.ID, 6100, 6105, free)); p != want {
			t.Fatalf("got port %d, want %d", p, want)
		}
		return inst
	}
	first := allocate(6100)
	allocate(6101)
	allocate(6102)
	check(t, s.DeleteInstance(ctx, first.ID))
	allocate(6103) // not 6100: the search goes on after 6102
	allocate(6104)
	allocate(6100) // the range's end reached, it wraps around
	inst := newInstance(t, s, img.ID, "x")
	_, err := s.AllocatePort(ctx, inst.ID, 6100, 6105, free)
	wantErr(t, err, ErrPortsExhausted)
}

func TestAllocatePortSkipsBusyPorts(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	img := newImage(t, s, "img")
	inst := newInstance(t, s, img.ID, "x")
	var asked []int
	busy := func(p int) bool { asked = append(asked, p); return p >= 6003 }
	if p := must[int](t)(s.AllocatePort(ctx, inst.ID, 6000, 6010, busy)); p != 6003 {
		t.Fatalf("got %d, want 6003", p)
	}
	if !slices.Equal(asked, []int{6000, 6001, 6002, 6003}) {
		t.Fatalf("asked about %v", asked)
	}
	other := newInstance(t, s, img.ID, "x")
	_, err := s.AllocatePort(ctx, other.ID, 6000, 6010, func(int) bool { return false })
	wantErr(t, err, ErrPortsExhausted)
}

func TestTokens(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	past, future := time.Now().Add(-time.Minute), time.Now().Add(time.Hour)
	live := must[Token](t)(s.CreateToken(ctx, TokenInput{Kind: TokenAPI, Name: "ci", Hash: []byte("h-live")}))
	oauth := must[Token](t)(s.CreateToken(ctx, TokenInput{Kind: TokenOAuth, Email: "ada@example.com", Hash: []byte("h-oauth"), ExpiresAt: &future}))
	expired := must[Token](t)(s.CreateToken(ctx, TokenInput{Kind: TokenOAuth, Email: "bob@example.com", Hash: []byte("h-expired"), ExpiresAt: &past}))
	revoked := must[Token](t)(s.CreateToken(ctx, TokenInput{Kind: TokenAPI, Name: "old", Hash: []byte("h-revoked")}))
	check(t, s.RevokeToken(ctx, revoked.ID))
	wantErr(t, s.RevokeToken(ctx, revoked.ID), ErrNotFound)

	if live.LastUsedAt != nil || live.Name != "ci" || live.Kind != TokenAPI {
		t.Fatalf("created %+v", live)
	}
	got := must[Token](t)(s.TokenByHash(ctx, []byte("h-live")))
	if got.ID != live.ID || got.LastUsedAt == nil || !bytes.Equal(got.Hash, []byte("h-live")) {
		t.Fatalf("by hash: %+v", got)
	}
	if got = must[Token](t)(s.TokenByHash(ctx, []byte("h-oauth"))); got.ID != oauth.ID || got.Email != "ada@example.com" {
		t.Fatalf("by hash: %+v", got)
	}
	for _, h := range []string{"h-expired", "h-revoked", "h-unknown"} {
		_, err := s.TokenByHash(ctx, []byte(h))
		wantErr(t, err, ErrNotFound)
	}

	_, err := s.CreateToken(ctx, TokenInput{Kind: TokenAPI, Name: "ci", Hash: []byte("h-other")})
	wantErr(t, err, ErrConflict)
	_, err = s.CreateToken(ctx, TokenInput{Kind: TokenOAuth, Hash: []byte("h-live")})
	wantErr(t, err, ErrConflict)
	// A revoked API token's name can be reused.
	must[Token](t)(s.CreateToken(ctx, TokenInput{Kind: TokenAPI, Name: "old", Hash: []byte("h-new")}))

	ids := func(ts []Token) (out []int64) {
		for _, t := range ts {
			out = append(out, t.ID)
		}
		return out
	}
	apis := must[[]Token](t)(s.ListTokens(ctx, TokenAPI))
	if len(apis) != 2 || apis[0].ID != live.ID || apis[1].Name != "old" {
		t.Fatalf("API tokens %+v", apis)
	}
	if all := ids(must[[]Token](t)(s.ListTokens(ctx, ""))); len(all) != 4 || !slices.Contains(all, expired.ID) {
		t.Fatalf("all tokens %v", all)
	}

	check(t, s.RevokeAPIToken(ctx, "ci"))
	wantErr(t, s.RevokeAPIToken(ctx, "ci"), ErrNotFound)
	_, err = s.TokenByHash(ctx, []byte("h-live"))
	wantErr(t, err, ErrNotFound)
}

func TestBackups(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	b := must[Backup](t)(s.CreateBackup(ctx, BackupInput{InstanceID: 7, Owner: "ada@example.com"}))
	if b.Status != BackupRunning || b.InstanceID != 7 || b.ImageID != 0 || b.Path != "" || b.Owner != "ada@example.com" {
		t.Fatalf("created %+v", b)
	}
	img := must[Backup](t)(s.CreateBackup(ctx, BackupInput{ImageID: 3, Path: "/backups/3.tar"}))
	tainted := must[Backup](t)(s.CreateBackup(ctx, BackupInput{ImageID: 4, UserWritten: true}))
	if !b.UserWritten || img.UserWritten || !tainted.UserWritten {
		t.Fatalf("user-written: of an instance %v, of an upload's image %v, of a restored instance's image %v; want true, false, true",
			b.UserWritten, img.UserWritten, tainted.UserWritten)
	}
	check(t, s.DeleteBackup(ctx, tainted.ID))
	_, err := s.CreateBackup(ctx, BackupInput{InstanceID: 1, ImageID: 1})
	wantErr(t, err, ErrInvalid)
	_, err = s.CreateBackup(ctx, BackupInput{})
	wantErr(t, err, ErrInvalid)

	check(t, s.SetBackupDone(ctx, b.ID, "/backups/7.tar.zst", 1234, "abcd"))
	got := must[Backup](t)(s.GetBackup(ctx, b.ID))
	if got.Status != BackupDone || got.Path != "/backups/7.tar.zst" || got.SizeBytes != 1234 || got.SHA256 != "abcd" {
		t.Fatalf("after done: %+v", got)
	}
	check(t, s.SetBackupStatus(ctx, img.ID, BackupFailed, "no space"))
	if got = must[Backup](t)(s.GetBackup(ctx, img.ID)); got.Status != BackupFailed || got.Error != "no space" {
		t.Fatalf("after failing: %+v", got)
	}

	all := must[[]Backup](t)(s.ListBackups(ctx, BackupFilter{}))
	if len(all) != 2 || all[0].ID != img.ID || all[1].ID != b.ID {
		t.Fatalf("list %+v, want newest first", all)
	}
	if of := must[[]Backup](t)(s.ListBackups(ctx, BackupFilter{InstanceID: 7})); len(of) != 1 || of[0].ID != b.ID {
		t.Fatalf("of instance 7: %+v", of)
	}
	if of := must[[]Backup](t)(s.ListBackups(ctx, BackupFilter{Owner: "ada@example.com"})); len(of) != 1 || of[0].ID != b.ID {
		t.Errorf("ada's backups: %+v", of)
	}
	if img.Owner != "upload" {
		t.Errorf("a backup recorded without an owner belongs to %q, want upload", img.Owner)
	}
	if of := must[[]Backup](t)(s.ListBackups(ctx, BackupFilter{ImageID: 3})); len(of) != 1 || of[0].ID != img.ID {
		t.Fatalf("of image 3: %+v", of)
	}

	check(t, s.DeleteBackup(ctx, b.ID))
	_, err = s.GetBackup(ctx, b.ID)
	wantErr(t, err, ErrNotFound)
	wantErr(t, s.DeleteBackup(ctx, b.ID), ErrNotFound)
	wantErr(t, s.SetBackupDone(ctx, b.ID, "", 0, ""), ErrNotFound)
	wantErr(t, s.SetBackupStatus(ctx, b.ID, BackupFailed, ""), ErrNotFound)
}

func TestAudit(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	if got := must[[]AuditEntry](t)(s.AuditLog(ctx, 10)); len(got) != 0 {
		t.Fatalf("empty log holds %+v", got)
	}
	at := time.Date(2024, 2, 3, 4, 5, 6, 0, time.UTC)
	entries := []AuditEntry{
		{At: at, Actor: "ada@example.com", Action: "create_image", TargetType: "image", TargetID: 1, Outcome: "ok"},
		{Actor: "upload", Action: "create_instance", TargetType: "instance", TargetID: 2, Outcome: "ok", Detail: "port 6000"},
		{Actor: "bob@example.com", Action: "destroy_instance", TargetType: "instance", TargetID: 2, Outcome: "denied"},
		{Actor: "sindrid", Action: "startup", Outcome: "ok"},
	}
	for _, e := range entries {
		check(t, s.Audit(ctx, e))
	}
	all := must[[]AuditEntry](t)(s.AuditLog(ctx, 0))
	if len(all) != len(entries) {
		t.Fatalf("read %d entries, want %d", len(all), len(entries))
	}
	for i, got := range all {
		want := entries[len(entries)-1-i] // newest first
		if got.ID == 0 || got.At.IsZero() || got.At.Location() != time.UTC {
			t.Fatalf("entry %+v", got)
		}
		got.ID, want.At = 0, got.At
		if got != want {
			t.Fatalf("entry %d: %+v, want %+v", i, got, want)
		}
	}
	if !all[3].At.Equal(at) {
		t.Fatalf("given time %v, want %v", all[3].At, at)
	}
	if i := slices.IndexFunc(all, func(e AuditEntry) bool { return e.ID <= 0 }); i >= 0 || all[0].ID <= all[1].ID {
		t.Fatal("ids not descending")
	}
	latest := must[[]AuditEntry](t)(s.AuditLog(ctx, 2))
	if len(latest) != 2 || latest[0].ID != all[0].ID || latest[1].ID != all[1].ID {
		t.Fatalf("limit 2: %+v", latest)
	}
}

// A listing of summaries is the listing of instances without the
// certificates and private keys, its passwords opened, for everyone and
// for one owner; and the owner's listing is found by the index on owner
// once the table is large.
func TestInstanceSummariesAreInstancesWithoutKeys(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	img := newImage(t, s, "img")
	a, b, c := newInstance(t, s, img.ID, "ada@example.com"), newInstance(t, s, img.ID, "upload"), newInstance(t, s, img.ID, "ada@example.com")
	for i, inst := range []Instance{a, b, c} {
		check(t, s.SetInstanceCredentials(ctx, inst.ID, testCreds(strconv.Itoa(i))))
	}
	for _, owner := range []string{"", "ada@example.com", "upload", "nobody@example.com"} {
		full := must[[]Instance](t)(s.ListInstances(ctx, owner))
		brief := must[[]Instance](t)(s.ListInstanceSummaries(ctx, owner))
		if len(full) != len(brief) {
			t.Fatalf("owner %q: %d summaries, %d instances", owner, len(brief), len(full))
		}
		for i := range full {
			want := full[i]
			if want.Password == "" || !strings.HasPrefix(want.Password, "pw-") {
				t.Fatalf("owner %q: instance %d's password %q", owner, want.ID, want.Password)
			}
			want.Credentials = Credentials{Username: want.Username, Password: want.Password}
			if !reflect.DeepEqual(brief[i], want) {
				t.Errorf("owner %q: summary\n%+v\nwant\n%+v", owner, brief[i], want)
			}
		}
	}

	// The plan of a large table: an index scan of one owner's rows.
	_, err := s.pool.Exec(ctx, `insert into instances (image_id, owner) select $1, 'user' || n || '@example.com' from generate_series(1, 5000) n`, img.ID)
	check(t, err)
	_, err = s.pool.Exec(ctx, `analyze instances`)
	check(t, err)
	rows, _ := s.pool.Query(ctx, `explain (format text) select id from instances where owner = $1 order by id`, "ada@example.com")
	lines := must[[]string](t)(pgx.CollectRows(rows, pgx.RowTo[string]))
	if plan := strings.Join(lines, "\n"); !strings.Contains(plan, "instances_owner_idx") {
		t.Errorf("one owner's instances are not found by the index on owner: %s", plan)
	}
}
