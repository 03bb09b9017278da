package postgres

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// untrustedLibraries lists the C functions of the connected database whose
// library is not one of the installation's own: a probin with a directory
// in it other than "$libdir/". Calling such a function loads that file
// into the server, which runs as the postgres OS user: an uploaded data
// directory could ship the file beside its catalog and name it there.
func untrustedLibraries(ctx context.Context, conn *pgx.Conn) ([]string, error) {
	rows, err := conn.Query(ctx, `select p.oid::pg_catalog.regprocedure::pg_catalog.text, p.probin
		from pg_catalog.pg_proc p join pg_catalog.pg_language l on l.oid = p.prolang
		where l.lanname = 'c' and p.probin is not null`)
	if err != nil {
		return nil, fmt.Errorf("reading the C functions: %w", err)
	}
	type fn struct{ name, library string }
	fns, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (fn, error) {
		var f fn
		return f, r.Scan(&f.name, &f.library)
	})
	if err != nil {
		return nil, fmt.Errorf("reading the C functions: %w", err)
	}
	var untrusted []string
	for _, f := range fns {
		if !installedLibrary(f.library) {
			untrusted = append(untrusted, fmt.Sprintf("%s loads %q", f.name, f.library))
		}
	}
	return untrusted, nil
}

// installedLibrary tells whether a C function's probin names a library of
// the installation: a bare name (found on dynamic_library_path, which
// sindri pins to $libdir) or "$libdir/name".
func installedLibrary(probin string) bool {
	name := strings.TrimPrefix(probin, "$libdir/")
	return !strings.Contains(name, "/") && name != ".." && name != "."
}
