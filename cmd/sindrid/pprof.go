//go:build sindri_pprof

package main

// Built only with -tags sindri_pprof, as the density benchmark builds
// sindrid (spec/density_test.go), never into a release: Go's profiler on
// SINDRI_PPROF_ADDR (e.g. 127.0.0.1:6060), where the benchmark takes CPU
// profiles of a host with hundreds of instances.

import (
	"log/slog"
	"net/http"
	_ "net/http/pprof" // its handlers, on http.DefaultServeMux only
	"os"
)

func init() {
	addr := os.Getenv("SINDRI_PPROF_ADDR")
	if addr == "" {
		return
	}
	go func() {
		// The API has a router of its own: DefaultServeMux serves only here.
		if err := http.ListenAndServe(addr, nil); err != nil {
			slog.Error("sindrid: the profiler's listener", "addr", addr, "err", err)
		}
	}()
}
