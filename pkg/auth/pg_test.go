package auth_test

import (
	"log/slog"
	"os"
	"testing"

	"github.com/sindri-db/sindri/pkg/store"
	"github.com/sindri-db/sindri/pkg/store/storetest"
)

func TestMain(m *testing.M) { os.Exit(storetest.Main(m)) }

func testLogger() *slog.Logger { return storetest.Logger() }

func newStore(t *testing.T) (*store.Store, string) { return storetest.New(t) }
