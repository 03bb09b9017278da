// Package storetest gives tests a migrated metadata store on a real
// PostgreSQL: one cluster per test binary, started by Main, and a fresh
// database per test, made by New and dropped at its cleanup (see
// metadbtest).
package storetest

import (
	"context"
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/sindri-db/sindri/pkg/metadb/metadbtest"
	"github.com/sindri-db/sindri/pkg/store"
)

// Main starts the cluster (as root; otherwise the tests that need it fail,
// or skip with SINDRI_SKIP_ROOT_TESTS=1), runs the tests and stops it.
// Call it from TestMain: os.Exit(storetest.Main(m)).
func Main(m *testing.M) int { return metadbtest.Main(m) }

// Logger logs at debug level with -v, and nowhere without.
func Logger() *slog.Logger { return metadbtest.Logger() }

// New opens a Store on a fresh, migrated database, dropped at cleanup,
// with a new secrets key file of its own (st.Keyring().Path()), and
// returns it with the database's URL.
func New(t testing.TB) (*store.Store, string) {
	t.Helper()
	url := metadbtest.NewDatabase(t)
	ctx := context.Background()
	st, err := store.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	if _, err := st.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := st.LoadKeyring(ctx, filepath.Join(t.TempDir(), "secrets.key"), true); err != nil {
		t.Fatal(err)
	}
	return st, url
}
