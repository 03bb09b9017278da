package postgres

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// FreezeDatabases runs VACUUM (FREEZE), with ANALYZE when analyze is set,
// in every database that accepts connections (template0 is frozen by
// initdb and refuses them),
// so that an image's clones inherit what each would otherwise do for
// itself, within a naptime of its start and on a copy-on-write volume: the
// first read of a row that no VACUUM has seen sets its hint bits, and
// writes its page into the clone; autovacuum, seeing the rows inserted
// since the last VACUUM and ANALYZE (a restored dump: all of them),
// vacuums and analyses every table, and writes each page again. Frozen
// and analysed once in the image, the data is read by every clone without
// a write. VACUUM alone runs none of the data's own code; ANALYZE runs
// its index expressions, as each table's owner in a security-restricted
// operation, which data an instance's user wrote must not get to do in
// sindri's session (leave analyze off for it). vacuumed, if not nil, is
// told of each database as it is done.
func (c *Cluster) FreezeDatabases(ctx context.Context, analyze bool, vacuumed func(database string, took time.Duration)) error {
	stmt := "VACUUM (FREEZE)"
	if analyze {
		stmt = "VACUUM (FREEZE, ANALYZE)"
	}
	admin, err := c.connect(ctx, "")
	if err != nil {
		return err
	}
	databases, err := column(ctx, admin, "select datname from pg_database where datallowconn and datconnlimit <> -2 order by datname")
	admin.Close(context.WithoutCancel(ctx))
	if err != nil {
		return err
	}
	for _, db := range databases {
		started := time.Now()
		conn, err := c.connect(ctx, db)
		if err != nil {
			return err
		}
		_, err = conn.Exec(ctx, stmt)
		conn.Close(context.WithoutCancel(ctx))
		if err != nil {
			return fmt.Errorf("%s of database %s: %w", stmt, pgx.Identifier{db}.Sanitize(), err)
		}
		if vacuumed != nil {
			vacuumed(db, time.Since(started))
		}
	}
	return nil
}
