package store

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/sindri-db/sindri/migrations"
	"github.com/sindri-db/sindri/pkg/secrets"
)

// raw reads one column of one row as the database holds it.
func raw(t *testing.T, s *Store, table, column string, id int64) string {
	t.Helper()
	var v *string
	check(t, s.pool.QueryRow(ctx, "select "+column+" from "+table+" where id = $1", id).Scan(&v))
	if v == nil {
		return ""
	}
	return *v
}

// testCreds are credentials shaped like the real ones.
func testCreds(tag string) Credentials {
	return Credentials{
		Username: "sindri", Password: "pw-" + tag,
		CACertificate:     "-----BEGIN CERTIFICATE-----\nca-" + tag + "\n-----END CERTIFICATE-----\n",
		ServerCertificate: "-----BEGIN CERTIFICATE-----\nsc-" + tag + "\n-----END CERTIFICATE-----\n",
		ServerKey:         "-----BEGIN EC PRIVATE KEY-----\nsk-" + tag + "\n-----END EC PRIVATE KEY-----\n",
		ClientCertificate: "-----BEGIN CERTIFICATE-----\ncc-" + tag + "\n-----END CERTIFICATE-----\n",
		ClientKey:         "-----BEGIN EC PRIVATE KEY-----\nck-" + tag + "\n-----END EC PRIVATE KEY-----\n",
	}
}

func secretsOf(c Credentials) map[string]string {
	return map[string]string{"password": c.Password, "server_key": c.ServerKey, "client_key": c.ClientKey}
}

func TestSecretsAreStoredSealed(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	img := newImage(t, s, "img")
	inst := newInstance(t, s, img.ID, "ada@example.com")
	creds := testCreds("a")
	check(t, s.SetInstanceCredentials(ctx, inst.ID, creds))
	for col, plain := range secretsOf(creds) {
		v := raw(t, s, "instances", col, inst.ID)
		if !strings.HasPrefix(v, secrets.Prefix+s.Keyring().Current()+":") || strings.Contains(v, plain) || strings.Contains(v, "PRIVATE KEY") {
			t.Errorf("instances.%s holds %q", col, v)
		}
	}
	// Certificates are public: kept as they are.
	if v := raw(t, s, "instances", "ca_certificate", inst.ID); v != creds.CACertificate {
		t.Errorf("ca_certificate %q", v)
	}
	if got := must[Instance](t)(s.GetInstance(ctx, inst.ID)); got.Credentials != creds {
		t.Fatalf("read back %+v", got.Credentials)
	}
	if got := must[[]Instance](t)(s.ListInstances(ctx, "")); len(got) != 1 || got[0].Credentials != creds {
		t.Fatalf("listed %+v", got)
	}

	pending := must[Image](t)(s.CreateImage(ctx, ImageInput{BackedUpAt: time.Now(), SourceURL: "postgres://rep:Pr0d-pw@prod/db", SourceURLRedacted: "postgres://rep@prod/db"}))
	if v := raw(t, s, "images", "source_url", pending.ID); !secrets.IsSealed(v) || strings.Contains(v, "Pr0d-pw") {
		t.Errorf("images.source_url holds %q", v)
	}

	// The database itself refuses a clear value, whoever writes it.
	_, err := s.pool.Exec(ctx, "update instances set password = 'clear' where id = $1", inst.ID)
	wantErr(t, classify(err), ErrInvalid)
	_, err = s.pool.Exec(ctx, "update images set source_url = 'postgres://u:pw@h/d' where id = $1", pending.ID)
	wantErr(t, classify(err), ErrInvalid)

	// Without a keyring the store neither writes nor reads a secret.
	bare := openURL(t, s.pool.Config().ConnString())
	wantErr(t, bare.SetInstanceCredentials(ctx, inst.ID, creds), ErrNoKeyring)
	_, err = bare.GetInstance(ctx, inst.ID)
	wantErr(t, err, ErrNoKeyring)
	_, err = bare.CreateImage(ctx, ImageInput{BackedUpAt: time.Now(), SourceURL: "postgres://u:pw@h/d"})
	wantErr(t, err, ErrNoKeyring)
}

func TestSwappedCiphertextIsRefused(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	img := newImage(t, s, "img")
	a, b := newInstance(t, s, img.ID, "ada@example.com"), newInstance(t, s, img.ID, "bob@example.com")
	check(t, s.SetInstanceCredentials(ctx, a.ID, testCreds("a")))
	check(t, s.SetInstanceCredentials(ctx, b.ID, testCreds("b")))
	pending := must[Image](t)(s.CreateImage(ctx, ImageInput{BackedUpAt: time.Now(), SourceURL: "postgres://rep:pw@prod/db"}))

	moves := []struct {
		name, sql string
		from      int64
	}{
		// Bob's password put in Ada's row: with it, Ada's database_url
		// would log in to Bob's instance.
		{"a password from another row", "update instances set password = (select password from instances where id = $2) where id = $1", b.ID},
		{"a private key from another column", "update instances set password = (select client_key from instances where id = $2) where id = $1", a.ID},
		{"a source_url into a password", "update instances set password = (select source_url from images where id = $2) where id = $1", pending.ID},
	}
	for _, m := range moves {
		t.Run(m.name, func(t *testing.T) {
			saved := raw(t, s, "instances", "password", a.ID)
			if _, err := s.pool.Exec(ctx, m.sql, a.ID, m.from); err != nil {
				t.Fatal(err)
			}
			defer s.pool.Exec(ctx, "update instances set password = $2 where id = $1", a.ID, saved)
			_, err := s.GetInstance(ctx, a.ID)
			if !errors.Is(err, secrets.ErrTampered) || !strings.Contains(err.Error(), "instances.password") {
				t.Fatalf("GetInstance: %v, want ErrTampered naming instances.password", err)
			}
			if list, err := s.ListInstances(ctx, ""); !errors.Is(err, secrets.ErrTampered) || len(list) != 0 {
				t.Fatalf("ListInstances: %d rows, %v; want none and ErrTampered", len(list), err)
			}
		})
	}
	// Put back, each opens again.
	if got := must[Instance](t)(s.GetInstance(ctx, a.ID)); got.Password != "pw-a" {
		t.Fatalf("after putting it back: %q", got.Password)
	}
}

// migrateBefore applies the migrations before version (e.g. "0008"), as
// an older sindri did.
func migrateBefore(t *testing.T, s *Store, version string) {
	t.Helper()
	older := fstest.MapFS{}
	files, _ := fs.Glob(migrations.FS, "*.sql")
	for _, f := range files {
		if f < version {
			data, _ := fs.ReadFile(migrations.FS, f)
			older[f] = &fstest.MapFile{Data: data}
		}
	}
	must[[]string](t)(s.migrateFS(ctx, older))
}

func TestRowsInClearFromBeforeAreSealedAtStart(t *testing.T) {
	t.Parallel()
	s, _ := openDB(t)
	migrateBefore(t, s, "0008")
	// What an older sindri wrote: everything in clear.
	var imgReady, imgPending, inst int64
	check(t, s.pool.QueryRow(ctx, `insert into images (status, backed_up_at, source_url)
		values ('ready', now(), 'postgres://rep:0ld-pw@prod/db') returning id`).Scan(&imgReady))
	check(t, s.pool.QueryRow(ctx, `insert into images (status, backed_up_at, source_url)
		values ('failed', now(), 'host=prod user=rep password=0ld-pw2') returning id`).Scan(&imgPending))
	creds := testCreds("old")
	check(t, s.pool.QueryRow(ctx, `insert into instances (image_id, owner, status, username, password,
		ca_certificate, server_certificate, server_key, client_certificate, client_key)
		values ($1, 'upload', 'running', $2, $3, $4, $5, $6, $7, $8) returning id`,
		imgReady, creds.Username, creds.Password, creds.CACertificate, creds.ServerCertificate,
		creds.ServerKey, creds.ClientCertificate, creds.ClientKey).Scan(&inst))

	must[[]string](t)(s.Migrate(ctx))
	// No sealed value yet: the first start may make the key.
	created := must[bool](t)(s.LoadKeyring(ctx, filepath.Join(t.TempDir(), "secrets.key"), true))
	if !created {
		t.Fatal("no key file made")
	}
	redact := func(u string) string { return strings.NewReplacer(":0ld-pw@", "@", " password=0ld-pw2", "").Replace(u) }
	if n := must[int](t)(s.SealSecrets(ctx, redact)); n != 5 {
		t.Fatalf("sealed %d values, want 5 (three of the instance, two source_urls)", n)
	}
	for col, plain := range secretsOf(creds) {
		if v := raw(t, s, "instances", col, inst); !secrets.IsSealed(v) || strings.Contains(v, plain) {
			t.Errorf("instances.%s after start: %q", col, v)
		}
	}
	if got := must[Instance](t)(s.GetInstance(ctx, inst)); got.Credentials != creds {
		t.Fatalf("credentials after sealing: %+v", got.Credentials)
	}
	// The ready image's pull is over: no source_url, its redacted form
	// kept. The failed one may be tried again: sealed.
	ready := must[Image](t)(s.GetImage(ctx, imgReady))
	if ready.HasSourceURL || raw(t, s, "images", "source_url", imgReady) != "" || ready.SourceURLRedacted != "postgres://rep@prod/db" {
		t.Fatalf("ready image after sealing: %+v", ready)
	}
	if v := raw(t, s, "images", "source_url", imgPending); !secrets.IsSealed(v) || strings.Contains(v, "0ld-pw2") {
		t.Fatalf("failed image's source_url after sealing: %q", v)
	}
	if url := must[string](t)(s.ImageSourceURL(ctx, imgPending)); url != "host=prod user=rep password=0ld-pw2" {
		t.Fatalf("failed image's source_url opens as %q", url)
	}
	if r := raw(t, s, "images", "source_url_redacted", imgPending); r != "host=prod user=rep" {
		t.Fatalf("failed image's redacted source_url %q", r)
	}
	var unvalidated int
	check(t, s.pool.QueryRow(ctx, `select count(*) from pg_constraint where conname like '%\_sealed' and not convalidated`).Scan(&unvalidated))
	if unvalidated != 0 {
		t.Fatalf("%d sealed-value checks still not validated", unvalidated)
	}
	if n := must[int](t)(s.SealSecrets(ctx, redact)); n != 0 {
		t.Fatalf("a second start sealed %d values again", n)
	}
}

func TestKeyRotationSealsEverythingAgain(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	img := newImage(t, s, "img")
	a, b := newInstance(t, s, img.ID, "ada@example.com"), newInstance(t, s, img.ID, "bob@example.com")
	check(t, s.SetInstanceCredentials(ctx, a.ID, testCreds("a")))
	check(t, s.SetInstanceCredentials(ctx, b.ID, testCreds("b")))
	pending := must[Image](t)(s.CreateImage(ctx, ImageInput{BackedUpAt: time.Now(), SourceURL: "postgres://rep:pw@prod/db"}))
	source := must[Source](t)(s.CreateSource(ctx, SourceInput{Name: "prod", URL: "postgres://rep:src-pw@prod/db",
		URLRedacted: "postgres://rep@prod/db", Mode: SourceBasebackup, Keep: 2}))
	path := s.Keyring().Path()
	oldKeyFile := must[[]byte](t)(os.ReadFile(path))
	oldID := s.Keyring().Current()

	newID := must[string](t)(s.Keyring().Rotate())
	// A crash here: the next start reads both keys; every value opens, and
	// sealing finishes the rotation.
	restarted := openURL(t, s.pool.Config().ConnString())
	must[bool](t)(restarted.LoadKeyring(ctx, path, false))
	if got := must[Instance](t)(restarted.GetInstance(ctx, a.ID)); got.Credentials != testCreds("a") {
		t.Fatalf("mid-rotation read: %+v", got.Credentials)
	}
	if n := must[int](t)(restarted.SealSecrets(ctx, nil)); n != 8 {
		t.Fatalf("sealed again %d values, want 8", n)
	}
	if ids := must[map[string]int64](t)(restarted.SealedKeyIDs(ctx)); len(ids) != 1 || ids[newID] != 8 {
		t.Fatalf("sealed key ids after rotation: %v, want only %s", ids, newID)
	}
	check(t, restarted.Keyring().Retain(nil))
	if ids := must[*secrets.Keyring](t)(secrets.Load(path)).IDs(); !slices.Equal(ids, []string{newID}) {
		t.Fatalf("key file after rotation holds %v", ids)
	}
	for id, tag := range map[int64]string{a.ID: "a", b.ID: "b"} {
		if got := must[Instance](t)(restarted.GetInstance(ctx, id)); got.Credentials != testCreds(tag) {
			t.Fatalf("instance %d after rotation: %+v", id, got.Credentials)
		}
	}
	if url := must[string](t)(restarted.ImageSourceURL(ctx, pending.ID)); url != "postgres://rep:pw@prod/db" {
		t.Fatalf("source_url after rotation: %q", url)
	}
	if url := must[string](t)(restarted.SourceURL(ctx, source.ID)); url != "postgres://rep:src-pw@prod/db" {
		t.Fatalf("a source's url after rotation: %q", url)
	}

	// The old key file opens nothing any more, not even with the old key
	// put under the new key's id.
	oldPath := filepath.Join(t.TempDir(), "old.key")
	check(t, os.WriteFile(oldPath, oldKeyFile, 0o600))
	old := must[*secrets.Keyring](t)(secrets.Load(oldPath))
	sealed := raw(t, s, "instances", "password", a.ID)
	if _, err := old.Open(sealed, binding("instances", "password", a.ID)); !errors.Is(err, secrets.ErrUnknownKey) {
		t.Fatalf("the old key file opens the new value: %v", err)
	}
	check(t, os.WriteFile(oldPath, []byte(strings.ReplaceAll(string(oldKeyFile), oldID, newID)), 0o600))
	disguised := must[*secrets.Keyring](t)(secrets.Load(oldPath))
	if _, err := disguised.Open(sealed, binding("instances", "password", a.ID)); !errors.Is(err, secrets.ErrTampered) {
		t.Fatalf("the old key under the new id: %v, want ErrTampered", err)
	}
	// And a store given the old key file refuses to start.
	check(t, os.WriteFile(oldPath, oldKeyFile, 0o600))
	_, err := openURL(t, s.pool.Config().ConnString()).LoadKeyring(ctx, oldPath, true)
	if !errors.Is(err, secrets.ErrKeyFile) || !strings.Contains(err.Error(), oldPath) || !strings.Contains(err.Error(), newID) {
		t.Fatalf("LoadKeyring with the old key file: %v", err)
	}
}

func TestLoadKeyringMakesAKeyOnlyWhenNothingIsSealed(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	path := s.Keyring().Path()
	// Nothing sealed yet: a lost key file is replaced.
	check(t, os.Remove(path))
	if created := must[bool](t)(openURL(t, s.pool.Config().ConnString()).LoadKeyring(ctx, path, true)); !created {
		t.Fatal("no key file made for a store with nothing sealed")
	}
	s2 := openURL(t, s.pool.Config().ConnString())
	must[bool](t)(s2.LoadKeyring(ctx, path, false))
	img := newImage(t, s2, "img")
	inst := newInstance(t, s2, img.ID, "upload")
	check(t, s2.SetInstanceCredentials(ctx, inst.ID, testCreds("a")))

	// Now it holds sealed values: a missing key file is an error that
	// names it, and no new key is made.
	check(t, os.Remove(path))
	_, err := openURL(t, s.pool.Config().ConnString()).LoadKeyring(ctx, path, true)
	if !errors.Is(err, ErrKeyMissing) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "restore") {
		t.Fatalf("missing key file: %v", err)
	}
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a key file was made anyway: %v", err)
	}
	// A corrupt one: an error naming it too.
	check(t, os.WriteFile(path, []byte("key 0011\n"), 0o600))
	_, err = openURL(t, s.pool.Config().ConnString()).LoadKeyring(ctx, path, true)
	if !errors.Is(err, secrets.ErrKeyFile) || !strings.Contains(err.Error(), path) {
		t.Fatalf("corrupt key file: %v", err)
	}
}

func TestSecretsLockKeepsRotationAndSindridApart(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	other := openURL(t, s.pool.Config().ConnString())
	running := must[func()](t)(s.LockSecrets(ctx, false))
	alsoRunning := must[func()](t)(other.LockSecrets(ctx, false))
	_, err := other.LockSecrets(ctx, true)
	wantErr(t, err, ErrLocked)
	running()
	alsoRunning()
	rotating := must[func()](t)(other.LockSecrets(ctx, true))
	_, err = s.LockSecrets(ctx, false)
	wantErr(t, err, ErrLocked)
	rotating()
	must[func()](t)(s.LockSecrets(ctx, false))()
}

// BenchmarkListInstances reads 1,000 instances with their credentials
// (three values opened each), and their summaries, as GET /instances
// does for the upload user.
func BenchmarkListInstances(b *testing.B) {
	s := newStore(b)
	img, err := s.CreateImage(ctx, ImageInput{BackedUpAt: time.Now()})
	if err != nil {
		b.Fatal(err)
	}
	for i := range 1000 {
		inst, err := s.CreateInstance(ctx, InstanceInput{ImageID: img.ID, Owner: "upload"})
		if err != nil {
			b.Fatal(err)
		}
		creds := testCreds(strconv.Itoa(i))
		creds.ServerKey += strings.Repeat("k", 200) // a P-256 key's PEM is about 240 bytes
		creds.ClientKey += strings.Repeat("k", 200)
		if err := s.SetInstanceCredentials(ctx, inst.ID, creds); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("opened", func(b *testing.B) {
		for b.Loop() {
			if insts, err := s.ListInstances(ctx, ""); err != nil || len(insts) != 1000 {
				b.Fatalf("%d instances, %v", len(insts), err)
			}
		}
	})
	// What a listing shows: no certificate or key, the password opened.
	b.Run("summaries", func(b *testing.B) {
		for b.Loop() {
			if insts, err := s.ListInstanceSummaries(ctx, ""); err != nil || len(insts) != 1000 {
				b.Fatalf("%d instances, %v", len(insts), err)
			}
		}
	})
	// The same query, its values left sealed: what opening costs.
	b.Run("sealed", func(b *testing.B) {
		for b.Loop() {
			if insts, err := list[Instance](ctx, s, `select `+instanceColumns+` from instances order by id`); err != nil || len(insts) != 1000 {
				b.Fatalf("%d instances, %v", len(insts), err)
			}
		}
	})
}
