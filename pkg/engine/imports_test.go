package engine

import (
	"go/build"
	"strings"
	"testing"
)

// forbiddenImports are what the engine leaves to the packages that do
// the work: SQL to pkg/postgres (its Cluster), programs and signals to
// pkg/postgres and pkg/operation, files opened without following links
// to pkg/safefile. The engine says in what order, and why.
var forbiddenImports = map[string]string{
	"github.com/jackc/pgx":  "SQL goes through postgres.Cluster",
	"os/exec":               "programs run through postgres.Cluster.Command or pkg/operation",
	"syscall":               "system calls belong to pkg/postgres, pkg/operation, pkg/safefile, pkg/osuser, pkg/writeback",
	"golang.org/x/sys/unix": "system calls belong to pkg/postgres, pkg/operation, pkg/safefile, pkg/osuser, pkg/writeback",
}

// The engine's own source (its non-test imports, as go list shows them)
// imports neither the Postgres driver, nor os/exec, nor syscall.
func TestEngineImportsNoDriverExecOrSyscall(t *testing.T) {
	pkg, err := build.ImportDir(".", 0)
	if err != nil {
		t.Fatal(err)
	}
	if pkg.Name != "engine" || len(pkg.Imports) == 0 {
		t.Fatalf("read package %q with %d imports; is the test run in pkg/engine?", pkg.Name, len(pkg.Imports))
	}
	for _, imp := range pkg.Imports {
		for prefix, why := range forbiddenImports {
			if imp == prefix || strings.HasPrefix(imp, prefix+"/") {
				t.Errorf("pkg/engine imports %s (%v): %s", imp, pkg.ImportPos[imp], why)
			}
		}
	}
}
