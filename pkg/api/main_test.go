package api

import (
	"log/slog"
	"os"
	"testing"
)

func TestMain(m *testing.M) {
	// Middleware used outside a Server logs to slog.Default().
	slog.SetDefault(discardLogger())
	os.Exit(m.Run())
}
