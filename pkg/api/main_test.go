package api

import (
	"log/slog"
	"os"
	"testing"

	"github.com/sindri-db/sindri/pkg/store/storetest"
)

// TestMain starts the metadata Postgres that the tests and benchmarks
// over the real engine and store read (as root only; the handler tests
// over fakes need none).
func TestMain(m *testing.M) {
	// Middleware used outside a Server logs to slog.Default().
	slog.SetDefault(discardLogger())
	os.Exit(storetest.Main(m))
}
