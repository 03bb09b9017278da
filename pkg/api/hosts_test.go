package api

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sindri-db/sindri/pkg/engine"
	"github.com/sindri-db/sindri/pkg/store"
)

// fakeHosts lists two hosts to the upload user only, as the engine does.
type fakeHosts struct{ *fake }

var heartbeatAt = time.Date(2026, 11, 30, 10, 0, 5, 0, time.UTC)

func (f fakeHosts) List(ctx context.Context, a engine.Actor) ([]store.Host, error) {
	if err := f.call(a, "list hosts"); err != nil {
		return nil, err
	}
	if !a.Upload {
		return nil, fmt.Errorf("only the upload user may see the fleet's hosts: %w", engine.ErrForbidden)
	}
	return []store.Host{
		{Name: "sindri-a", PeerURL: "https://a.internal:8443", PublicHostname: "a.example.com", StorageDriver: "btrfs",
			TotalBytes: 100, FreeBytes: 60, ReserveBytes: 5, Instances: 3, RunningInstances: 2, MaxInstances: 40,
			MemoryTotalBytes: 8, MemoryAvailableBytes: 6, State: store.HostDraining, HeartbeatAt: heartbeatAt},
		{Name: "sindri-b", PeerURL: "https://b.internal:8443", PublicHostname: "b.example.com", StorageDriver: "zfs",
			State: store.HostDown, HeartbeatAt: heartbeatAt},
	}, nil
}

func newHostsServer(f *fake, withHosts bool) http.Handler {
	s := NewServer(Options{Logger: discardLogger(), Authenticate: func(r *http.Request) (any, error) {
		p, ok := testPrincipals[strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")]
		if !ok {
			return nil, ErrUnauthorized
		}
		return p, nil
	}})
	h := &Handlers{Images: fakeImages{f}, Instances: fakeInstances{f}, Backups: fakeBackups{f}, Status: fakeStatus{f},
		PublicHostname: "db.example.com"}
	if withHosts {
		h.Hosts = fakeHosts{f}
	}
	h.Register(s)
	return s.Handler()
}

func TestHostsList(t *testing.T) {
	h := newHostsServer(newFake(), true)
	w := do(h, as("secret", "GET", "/hosts", ""))
	if w.Code != 200 {
		t.Fatalf("GET /hosts: %d %s", w.Code, w.Body)
	}
	var doc struct {
		Data []struct {
			Type       string         `json:"type"`
			ID         string         `json:"id"`
			Attributes map[string]any `json:"attributes"`
		} `json:"data"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &doc); err != nil || len(doc.Data) != 2 {
		t.Fatalf("body: %v %s", err, w.Body)
	}
	a := doc.Data[0]
	want := map[string]any{
		"name": "sindri-a", "peer_url": "https://a.internal:8443", "public_hostname": "a.example.com",
		"storage_driver": "btrfs", "total_bytes": 100.0, "free_bytes": 60.0, "reserve_bytes": 5.0, "instances": 3.0,
		"running_instances": 2.0, "max_instances": 40.0, "memory_total_bytes": 8.0, "memory_available_bytes": 6.0,
		"state": "draining", "last_heartbeat_at": "2026-11-30T10:00:05Z",
	}
	if a.Type != "hosts" || a.ID != "sindri-a" {
		t.Errorf("resource %s %s", a.Type, a.ID)
	}
	for k, v := range want {
		if a.Attributes[k] != v {
			t.Errorf("attribute %s = %v, want %v", k, a.Attributes[k], v)
		}
	}
	if len(a.Attributes) != len(want) {
		t.Errorf("attributes %v, want exactly %v", a.Attributes, want)
	}
	if doc.Data[1].Attributes["state"] != "down" {
		t.Errorf("second host: %v", doc.Data[1].Attributes)
	}

	if d := wantError(t, do(h, as("bob", "GET", "/hosts", "")), 403, CodeForbidden); !strings.Contains(d, "upload user") {
		t.Errorf("a user's GET /hosts says %q", d)
	}
	wantError(t, do(h, as("nobody", "GET", "/hosts", "")), 401, CodeUnauthorized)
	wantError(t, do(h, as("secret", "POST", "/hosts", "")), 405, CodeMethodNotAllowed)
}

// Without a fleet, /hosts is no route, as before.
func TestHostsWithoutAFleet(t *testing.T) {
	wantError(t, do(newHostsServer(newFake(), false), as("secret", "GET", "/hosts", "")), 404, CodeNotFound)
}

// An instance of a fleet host that is down renders status unavailable,
// and an instance of a fleet host its host's public hostname, in its
// database_url too: listed and alone, in both wire formats.
func TestInstanceOfADownHostRendersUnavailable(t *testing.T) {
	f := newFake()
	inst := f.instances[6]
	inst.Host, inst.Hostname, inst.Status = "sindri-b", "b.example.com", store.InstanceUnavailable
	f.instances[6] = inst
	h := newHostsServer(f, true)
	for _, format := range []struct {
		name   string
		header []string
	}{
		{"JSON:API", nil},
		{"Draupnir", []string{VersionHeader, "5.3.6"}},
	} {
		for _, path := range []string{"/instances", "/instances/6"} {
			w := do(h, as("bob", "GET", path, "", format.header...))
			if w.Code != 200 {
				t.Fatalf("%s GET %s: %d %s", format.name, path, w.Code, w.Body)
			}
			var attrs map[string]any
			if path == "/instances" {
				var doc struct {
					Data []struct {
						Attributes map[string]any `json:"attributes"`
					} `json:"data"`
				}
				if err := json.Unmarshal(w.Body.Bytes(), &doc); err != nil || len(doc.Data) != 1 {
					t.Fatalf("%s GET %s: %v %s", format.name, path, err, w.Body)
				}
				attrs = doc.Data[0].Attributes
			} else {
				var doc struct {
					Data struct {
						Attributes map[string]any `json:"attributes"`
					} `json:"data"`
				}
				if err := json.Unmarshal(w.Body.Bytes(), &doc); err != nil {
					t.Fatalf("%s GET %s: %v %s", format.name, path, err, w.Body)
				}
				attrs = doc.Data.Attributes
			}
			if attrs["status"] != "unavailable" || attrs["hostname"] != "b.example.com" || attrs["host"] != "sindri-b" ||
				!strings.Contains(attrs["database_url"].(string), "@b.example.com:6006/") {
				t.Errorf("%s GET %s: %v", format.name, path, attrs)
			}
		}
	}
}

// GET /status of a fleet host names it and counts the fleet's instances
// apart from its own; a single host's has neither attribute.
func TestStatusOfAFleetHost(t *testing.T) {
	f := newFake()
	f.status = engine.Status{Healthy: true, StorageDriver: "btrfs", Host: "sindri-a",
		InstancesByStatus:      map[string]int{"running": 1},
		FleetInstancesByStatus: map[string]int{"running": 2, "resetting": 1, "unavailable": 4}}
	h := newHostsServer(f, true)
	w := do(h, as("secret", "GET", "/status", ""))
	var doc struct {
		Data struct {
			Attributes map[string]any `json:"attributes"`
		} `json:"data"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &doc); err != nil || w.Code != 200 {
		t.Fatalf("GET /status: %d %v %s", w.Code, err, w.Body)
	}
	attrs := doc.Data.Attributes
	fleet, _ := attrs["fleet_instances"].(map[string]any)
	if attrs["host"] != "sindri-a" || fleet["running"] != 2.0 || fleet["creating"] != 1.0 || fleet["unavailable"] != 4.0 ||
		attrs["instances"].(map[string]any)["running"] != 1.0 {
		t.Errorf("status of a fleet host: %v", attrs)
	}
	f.status = engine.Status{Healthy: true, StorageDriver: "btrfs", InstancesByStatus: map[string]int{"running": 1}}
	if w := do(h, as("secret", "GET", "/status", "")); strings.Contains(w.Body.String(), "fleet_instances") || strings.Contains(w.Body.String(), `"host"`) {
		t.Errorf("status of a single host: %s", w.Body)
	}
}
