package fleet_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/sindri-db/sindri/pkg/auth"
	"github.com/sindri-db/sindri/pkg/store"
)

// BenchmarkCreatePlacedElsewhere measures what a POST /instances costs
// when it is placed on another host than the one asked: with a drained,
// every instance is placed on b; each iteration sends one create to b
// (built where it was asked) and one to a (placed on b, built there over
// the peer route, answered by a), alternately, over HTTPS on loopback.
// It reports the median of each and the median of the pairs'
// differences; the destroys
// between iterations are not timed.
func BenchmarkCreatePlacedElsewhere(bm *testing.B) {
	ctx := context.Background()
	a, b, c := twoHosts(bm)
	authn, err := auth.New(auth.Options{Store: a.store})
	if err != nil {
		bm.Fatal(err)
	}
	token, _, err := authn.CreateAPIToken(ctx, "bench")
	if err != nil {
		bm.Fatal(err)
	}
	if err := a.store.SetHostState(ctx, "a", store.HostDraining); err != nil {
		bm.Fatal(err)
	}
	var local, elsewhere []time.Duration
	create := func(on *host) time.Duration {
		start := time.Now()
		got := call(bm, c, on, "POST", "/instances", token, "5.4.0", newInstance(1))
		d := time.Since(start)
		if got.status != 201 {
			bm.Fatalf("create through %s: %s", on.name, got)
		}
		bm.StopTimer()
		if got := call(bm, c, b, "DELETE", "/instances/"+decode(bm, got).Data.ID, token, "5.4.0", nil); got.status != 204 {
			bm.Fatalf("destroy: %s", got)
		}
		bm.StartTimer()
		return d
	}
	create(a) // the first connections and the first clone's caches
	bm.ResetTimer()
	for range bm.N {
		local = append(local, create(b))
		elsewhere = append(elsewhere, create(a))
	}
	bm.StopTimer()
	l, e := median(local), median(elsewhere)
	// Each pair ran back to back: the median of their differences is
	// less disturbed by a shared machine than that of the medians.
	extra := make([]time.Duration, len(local))
	for i := range local {
		extra[i] = elsewhere[i] - local[i]
	}
	bm.ReportMetric(float64(l.Microseconds())/1000, "local-median-ms")
	bm.ReportMetric(float64(e.Microseconds())/1000, "elsewhere-median-ms")
	bm.ReportMetric(float64(median(extra).Microseconds())/1000, "extra-paired-median-ms")
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}
