// Package migrations holds sindri's metadata schema as numbered SQL files
// (0001_initial.sql, ...), applied in lexical order by store.Migrate, each
// once and in its own transaction. A file must not contain its own
// BEGIN/COMMIT nor statements that cannot run in a transaction.
package migrations

import "embed"

// FS holds every migration file.
//
//go:embed *.sql
var FS embed.FS
