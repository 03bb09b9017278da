package api

import (
	"go/build"
	"slices"
	"strings"
	"testing"
)

// The layers, from the non-test imports of each package's source: the API
// knows the engine's classes and services, not the storage or Postgres
// below it; the engine knows an actor, not how one authenticates; the
// resources and the client know nothing of the server.
func TestLayering(t *testing.T) {
	const module = "github.com/sindri-db/sindri/pkg/"
	for _, c := range []struct {
		dir       string
		forbidden []string
		only      []string // if set, the only sindri packages allowed
	}{
		{dir: ".", forbidden: []string{"storage", "postgres"}},
		{dir: "../engine", forbidden: []string{"auth", "api"}},
		{dir: "resource", only: []string{}},
		{dir: "../client", only: []string{"api/resource", "api/wire", "version"}},
	} {
		pkg, err := build.ImportDir(c.dir, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(pkg.Imports) == 0 {
			t.Fatalf("%s: no imports found", c.dir)
		}
		for _, imp := range pkg.Imports {
			name, ours := strings.CutPrefix(imp, module)
			if !ours {
				continue
			}
			for _, f := range c.forbidden {
				if name == f || strings.HasPrefix(name, f+"/") {
					t.Errorf("%s imports %s", c.dir, imp)
				}
			}
			if c.only != nil && !slices.Contains(c.only, name) {
				t.Errorf("%s imports %s; it may import only %v of sindri's", c.dir, imp, c.only)
			}
		}
	}
}
