package store

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/sindri-db/sindri/pkg/secrets"
)

// The store seals these columns with its keyring (see package secrets):
// they are written only sealed, and read opened. A value is bound to its
// table, column and row id, so one moved elsewhere does not open.
var sealedColumns = map[string][]string{
	"instances": {"password", "server_key", "client_key"},
	"images":    {"source_url"},
	"sources":   {"url"},
}

// SealedColumns lists the sealed columns as "table.column", sorted.
func SealedColumns() []string {
	var out []string
	for table, cols := range sealedColumns {
		for _, c := range cols {
			out = append(out, table+"."+c)
		}
	}
	sort.Strings(out)
	return out
}

// Secrets errors, for errors.Is.
var (
	// ErrNoKeyring: a secret was to be sealed or opened by a store given
	// no keyring (see LoadKeyring).
	ErrNoKeyring = errors.New("no secrets key loaded")
	// ErrKeyMissing: the key file is missing while the store holds
	// values sealed with a key.
	ErrKeyMissing = errors.New("the secrets key file is missing")
	// ErrLocked: the secrets lock is held elsewhere (see LockSecrets).
	ErrLocked = errors.New("secrets lock held")
)

// SetKeyring gives the store the keys it seals and opens secrets with.
func (s *Store) SetKeyring(k *secrets.Keyring) { s.keyring.Store(k) }

// Keyring is the store's keyring; nil until set.
func (s *Store) Keyring() *secrets.Keyring { return s.keyring.Load() }

func binding(table, column string, id int64) string {
	return table + "." + column + "#" + strconv.FormatInt(id, 10)
}

// seal seals a secret of a row; "" stays NULL.
func (s *Store) seal(table, column string, id int64, value string) (*string, error) {
	if value == "" {
		return nil, nil
	}
	if l := s.secretsLock.Load(); l != nil && !l.Held() {
		return nil, fmt.Errorf("store: seal %s.%s of row %d: %w: the secrets lock is being taken again on the new connection", table, column, id, ErrUnavailable)
	}
	kr := s.keyring.Load()
	if kr == nil {
		return nil, fmt.Errorf("store: seal %s.%s of row %d: %w", table, column, id, ErrNoKeyring)
	}
	sealed := kr.Seal(value, binding(table, column, id))
	return &sealed, nil
}

// open opens a secret of a row read from the database; "" stays "". The
// caller wraps the error.
func (s *Store) open(table, column string, id int64, value string) (string, error) {
	if value == "" {
		return "", nil
	}
	kr := s.keyring.Load()
	if kr == nil {
		return "", fmt.Errorf("open %s.%s of row %d: %w", table, column, id, ErrNoKeyring)
	}
	plain, err := kr.Open(value, binding(table, column, id))
	if err != nil {
		return "", fmt.Errorf("open %s.%s of row %d: %w", table, column, id, err)
	}
	return plain, nil
}

// LoadKeyring reads the key file at path and checks that it holds every
// key the store's secrets are sealed with. A missing file is made, with a
// new key, only when mayCreate is set and the store holds no sealed value
// (a new key would orphan every one of them): otherwise ErrKeyMissing,
// naming the path. created tells whether the file was made.
func (s *Store) LoadKeyring(ctx context.Context, path string, mayCreate bool) (created bool, err error) {
	inUse, err := s.SealedKeyIDs(ctx)
	if err != nil {
		return false, err
	}
	kr, err := secrets.Load(path)
	if errors.Is(err, fs.ErrNotExist) {
		if len(inUse) > 0 {
			return false, fmt.Errorf("%w: %s does not exist, and the metadata store holds %d value(s) sealed with key(s) %s: restore the key file from its backup (a new key would make them unreadable)",
				ErrKeyMissing, path, total(inUse), strings.Join(slices.Sorted(maps.Keys(inUse)), ", "))
		}
		if !mayCreate {
			return false, fmt.Errorf("%w: %s does not exist: sindrid makes it at its first start", ErrKeyMissing, path)
		}
		if kr, err = secrets.Create(path); err != nil {
			return false, err
		}
		created = true
	} else if err != nil {
		return false, err
	}
	var unknown []string
	for id := range inUse {
		if !slices.Contains(kr.IDs(), id) {
			unknown = append(unknown, id)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return false, fmt.Errorf("%w %s: the metadata store holds values sealed with key(s) %s, which it does not hold (it holds %s): is it this store's key file? Restore the right one from its backup",
			secrets.ErrKeyFile, path, strings.Join(unknown, ", "), strings.Join(kr.IDs(), ", "))
	}
	s.keyring.Store(kr)
	return created, nil
}

func total(m map[string]int64) int64 {
	var n int64
	for _, v := range m {
		n += v
	}
	return n
}

// SealedKeyIDs counts the sealed values by the id of the key that sealed
// them.
func (s *Store) SealedKeyIDs(ctx context.Context) (map[string]int64, error) {
	var parts []string
	for table, cols := range sealedColumns {
		for _, c := range cols {
			parts = append(parts, "select "+c+" as v from "+table)
		}
	}
	rows, _ := s.pool.Query(ctx, `select split_part(v, ':', 3) as key_id, count(*) as n
		from (`+strings.Join(parts, " union all ")+`) s
		where v like $1 group by 1`, secrets.Prefix+"%")
	type count struct {
		KeyID string `db:"key_id"`
		N     int64  `db:"n"`
	}
	counts, err := pgx.CollectRows(rows, pgx.RowToStructByName[count])
	if err != nil {
		return nil, wrap(err, "count sealed values")
	}
	out := make(map[string]int64, len(counts))
	for _, c := range counts {
		out[c.KeyID] = c.N
	}
	return out, nil
}

// SealSecrets seals, in one transaction, every secret that is in clear
// (a row written before secrets were sealed) or sealed with a key other
// than the current one (a rotation, or one cut short), and clears the
// source_url of every image whose pull is over (ready or being destroyed),
// keeping redactSourceURL's form of a clear one for the record. It then
// validates the checks that refuse clear values. It returns how many
// values it changed.
func (s *Store) SealSecrets(ctx context.Context, redactSourceURL func(string) string) (n int, err error) {
	kr := s.keyring.Load()
	if kr == nil {
		return 0, fmt.Errorf("store: seal secrets: %w", ErrNoKeyring)
	}
	current := secrets.Prefix + kr.Current() + ":%"
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return 0, wrap(err, "seal secrets")
	}
	defer tx.Rollback(context.WithoutCancel(ctx))

	// plain is a value in clear, whether it was in clear or sealed.
	plain := func(table, column string, id int64, v string) (string, error) {
		if v == "" || !secrets.IsSealed(v) {
			return v, nil
		}
		return s.open(table, column, id, v)
	}

	type instanceRow struct {
		ID        int64  `db:"id"`
		Password  string `db:"password"`
		ServerKey string `db:"server_key"`
		ClientKey string `db:"client_key"`
	}
	rows, _ := tx.Query(ctx, `select id, coalesce(password, '') as password,
		coalesce(server_key, '') as server_key, coalesce(client_key, '') as client_key
		from instances
		where password not like $1 or server_key not like $1 or client_key not like $1
		order by id for update`, current)
	insts, err := pgx.CollectRows(rows, pgx.RowToStructByName[instanceRow])
	if err != nil {
		return 0, wrap(err, "seal secrets: read instances")
	}
	for _, r := range insts {
		vals := map[string]*string{"password": &r.Password, "server_key": &r.ServerKey, "client_key": &r.ClientKey}
		sealed := map[string]*string{}
		for col, v := range vals {
			p, err := plain("instances", col, r.ID, *v)
			if err != nil {
				return 0, wrap(err, "seal secrets")
			}
			if sealed[col], err = s.seal("instances", col, r.ID, p); err != nil {
				return 0, err
			}
			if *v != "" && !strings.HasPrefix(*v, strings.TrimSuffix(current, "%")) {
				n++
			}
		}
		if _, err := tx.Exec(ctx, `update instances set password = $2, server_key = $3, client_key = $4 where id = $1`,
			r.ID, sealed["password"], sealed["server_key"], sealed["client_key"]); err != nil {
			return 0, wrap(err, "seal secrets of instance %d", r.ID)
		}
	}

	type imageRow struct {
		ID       int64       `db:"id"`
		Status   ImageStatus `db:"status"`
		URL      string      `db:"source_url"`
		Redacted string      `db:"source_url_redacted"`
	}
	rows, _ = tx.Query(ctx, `select id, status, source_url, coalesce(source_url_redacted, '') as source_url_redacted
		from images
		where source_url is not null and (source_url not like $1 or status in ('ready', 'destroying'))
		order by id for update`, current)
	imgs, err := pgx.CollectRows(rows, pgx.RowToStructByName[imageRow])
	if err != nil {
		return 0, wrap(err, "seal secrets: read images")
	}
	for _, r := range imgs {
		if r.Redacted == "" && !secrets.IsSealed(r.URL) && redactSourceURL != nil {
			r.Redacted = redactSourceURL(r.URL)
		}
		var sealed *string
		if r.Status != ImageReady && r.Status != ImageDestroying {
			p, err := plain("images", "source_url", r.ID, r.URL)
			if err != nil {
				return 0, wrap(err, "seal secrets")
			}
			if sealed, err = s.seal("images", "source_url", r.ID, p); err != nil {
				return 0, err
			}
		}
		if _, err := tx.Exec(ctx, `update images set source_url = $2, source_url_redacted = $3 where id = $1`,
			r.ID, sealed, nullText(r.Redacted)); err != nil {
			return 0, wrap(err, "seal the source_url of image %d", r.ID)
		}
		n++
	}

	// A source's url is sealed from its first write (its check was valid
	// from the start): only a rotation seals it again.
	type sourceRow struct {
		ID  int64  `db:"id"`
		URL string `db:"url"`
	}
	rows, _ = tx.Query(ctx, `select id, url from sources where url not like $1 order by id for update`, current)
	srcs, err := pgx.CollectRows(rows, pgx.RowToStructByName[sourceRow])
	if err != nil {
		return 0, wrap(err, "seal secrets: read sources")
	}
	for _, r := range srcs {
		p, err := plain("sources", "url", r.ID, r.URL)
		if err != nil {
			return 0, wrap(err, "seal secrets")
		}
		sealed, err := s.seal("sources", "url", r.ID, p)
		if err != nil {
			return 0, err
		}
		if _, err := tx.Exec(ctx, `update sources set url = $2 where id = $1`, r.ID, sealed); err != nil {
			return 0, wrap(err, "seal the url of source %d", r.ID)
		}
		n++
	}

	// From now on the database itself refuses a clear value in these
	// columns, whatever writes it.
	rows, _ = tx.Query(ctx, `select t.relname || ' ' || c.conname
		from pg_constraint c join pg_class t on t.oid = c.conrelid
		where c.conname like '%\_sealed' and c.contype = 'c' and not c.convalidated
		and c.conrelid in ('instances'::regclass, 'images'::regclass)`)
	unvalidated, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return 0, wrap(err, "seal secrets: read checks")
	}
	for _, c := range unvalidated {
		table, name, _ := strings.Cut(c, " ")
		if _, err := tx.Exec(ctx, "alter table "+pgx.Identifier{table}.Sanitize()+
			" validate constraint "+pgx.Identifier{name}.Sanitize()); err != nil {
			return 0, wrap(err, "seal secrets: validate %s", name)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, wrap(err, "seal secrets")
	}
	return n, nil
}

// secretsLockKey is the advisory lock that keeps a key rotation and a
// running sindrid apart: "sindri" and 'S' in ASCII.
const secretsLockKey int64 = 0x73696e647269_0053

// LockSecrets takes the secrets lock on a connection of its own, held
// until release: shared by a running sindrid, exclusive by a key
// rotation, so that neither runs while the other does. ErrLocked when it
// is held in the other mode. release must be called before Close.
func (s *Store) LockSecrets(ctx context.Context, exclusive bool) (release func(), err error) {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return nil, wrap(err, "lock secrets")
	}
	lock, unlock := "pg_try_advisory_lock_shared", "pg_advisory_unlock_shared"
	if exclusive {
		lock, unlock = "pg_try_advisory_lock", "pg_advisory_unlock"
	}
	var got bool
	if err := conn.QueryRow(ctx, "select "+lock+"($1)", secretsLockKey).Scan(&got); err != nil {
		conn.Release()
		return nil, wrap(err, "lock secrets")
	}
	if !got {
		conn.Release()
		return nil, fmt.Errorf("store: lock secrets: %w", ErrLocked)
	}
	return func() {
		if _, err := conn.Exec(context.Background(), "select "+unlock+"($1)", secretsLockKey); err != nil {
			conn.Conn().Close(context.Background())
		}
		conn.Release()
	}, nil
}
