package metrics

import (
	"context"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/sindri-db/sindri/pkg/engine"
)

func TestLimitsAreExported(t *testing.T) {
	m := New(func(context.Context) (engine.Status, error) {
		return engine.Status{TotalBytes: 1000, FreeBytes: 400, DiskReserveBytes: 50, Limits: []engine.LimitUse{
			{Name: "instances_per_user", Limit: 20, Used: 7},
			{Name: "running_backups", Limit: 0, Used: 3}, // no limit: only its use
		}}, nil
	})
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	for _, want := range []string{
		`sindri_limit{name="disk_reserve"} 50`,
		`sindri_limit{name="instances_per_user"} 20`,
		`sindri_limit_used{name="instances_per_user"} 7`,
		`sindri_limit_used{name="running_backups"} 3`,
		`sindri_disk_free_bytes 400`,
	} {
		if !strings.Contains(string(body), want+"\n") {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if strings.Contains(string(body), `sindri_limit{name="running_backups"}`) {
		t.Error("/metrics shows a limit that is not set")
	}
}

// On a fleet host, sindri_instances counts this host's instances and
// sindri_fleet_instances every host's; a single host has no fleet series.
func TestFleetInstancesAreExported(t *testing.T) {
	scrape := func(st engine.Status) string {
		m := New(func(context.Context) (engine.Status, error) { return st, nil })
		rec := httptest.NewRecorder()
		m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		body, _ := io.ReadAll(rec.Body)
		return string(body)
	}
	body := scrape(engine.Status{Host: "host-a", InstancesByStatus: map[string]int{"running": 2},
		FleetInstancesByStatus: map[string]int{"running": 5, "unavailable": 3}})
	for _, want := range []string{
		`sindri_instances{status="running"} 2`,
		`sindri_fleet_instances{status="running"} 5`,
		`sindri_fleet_instances{status="unavailable"} 3`,
	} {
		if !strings.Contains(body, want+"\n") {
			t.Errorf("/metrics of a fleet host lacks %q", want)
		}
	}
	if body := scrape(engine.Status{InstancesByStatus: map[string]int{"running": 2}}); strings.Contains(body, "sindri_fleet_instances") {
		t.Error("/metrics of a single host has sindri_fleet_instances")
	}
}

// A fleet host's receives of images are counted by result, with the
// bytes read (a failed receive's too) and a successful one's duration;
// both results show from the start, at 0.
func TestReplicationsAreExported(t *testing.T) {
	m := New(func(context.Context) (engine.Status, error) { return engine.Status{}, nil })
	scrape := func() string {
		rec := httptest.NewRecorder()
		m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		body, _ := io.ReadAll(rec.Body)
		return string(body)
	}
	for _, want := range []string{
		`sindri_image_replications_total{result="ok"} 0`,
		`sindri_image_replications_total{result="failed"} 0`,
		`sindri_image_replication_bytes_total 0`,
		`sindri_image_replication_seconds_count 0`,
		`sindri_images_awaiting_replication 0`,
	} {
		if body := scrape(); !strings.Contains(body, want+"\n") {
			t.Errorf("/metrics before any receive lacks %q", want)
		}
	}

	var observer engine.ReplicationObserver = m
	observer.SetImagesAwaitingReplication(3)
	observer.ObserveReplication(true, 5000, 2*time.Second)
	observer.ObserveReplication(false, 700, 40*time.Second) // cut short: its bytes count, its time does not
	observer.ObserveReplication(false, 0, time.Second)      // the peer did not answer
	body := scrape()
	for _, want := range []string{
		`sindri_image_replications_total{result="ok"} 1`,
		`sindri_image_replications_total{result="failed"} 2`,
		`sindri_image_replication_bytes_total 5700`,
		`sindri_image_replication_seconds_count 1`,
		`sindri_image_replication_seconds_sum 2`,
		`sindri_image_replication_seconds_bucket{le="2.5"} 1`,
		`sindri_image_replication_seconds_bucket{le="1"} 0`,
		`sindri_images_awaiting_replication 3`,
	} {
		if !strings.Contains(body, want+"\n") {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}
