package postgres

import "testing"

func TestInstalledLibrary(t *testing.T) {
	for probin, want := range map[string]bool{
		"$libdir/postgres_fdw":                     true,
		"plpgsql":                                  true,
		"$libdir/../../../tmp/evil.so":             false,
		"/var/lib/sindri/volumes/upload-3/evil.so": false,
		"base/evil.so":                             false,
		"$libdir/..":                               false,
		"$libdir/sub/x.so":                         false,
	} {
		if got := installedLibrary(probin); got != want {
			t.Errorf("installedLibrary(%q) = %v, want %v", probin, got, want)
		}
	}
}
