package store

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/sindri-db/sindri/pkg/metadb/metadbtest"
)

func TestMain(m *testing.M) {
	os.Exit(metadbtest.Main(m))
}

// newDB creates a fresh, empty database for t, dropped at cleanup, and
// returns its URL. It fails t when not running as root (see
// testenv.RequireRoot).
func newDB(t testing.TB) string {
	t.Helper()
	return metadbtest.NewDatabase(t)
}

// openDB opens a Store on a fresh, unmigrated database.
func openDB(t testing.TB) (*Store, string) {
	t.Helper()
	url := newDB(t)
	return openURL(t, url), url
}

func openURL(t testing.TB, url string) *Store {
	t.Helper()
	s, err := Open(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// newStore opens a Store on a fresh, migrated database, with a new
// secrets key file of its own.
func newStore(t testing.TB) *Store {
	t.Helper()
	s, _ := openDB(t)
	if _, err := s.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := s.LoadKeyring(context.Background(), filepath.Join(t.TempDir(), "secrets.key"), true); err != nil {
		t.Fatal(err)
	}
	return s
}
