package spec

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sindri-db/sindri/pkg/postgres"
	"github.com/sindri-db/sindri/pkg/postgres/pgtest"
)

// statusOf reads GET /status: its status and problems.
func (s *server) statusOf(t *testing.T) (string, string) {
	t.Helper()
	code, body := s.call(t, "GET", "/status", s.secret, nil)
	if code != 200 {
		t.Fatalf("GET /status: %d %s", code, body)
	}
	attr := decode(t, body).one(t).Attributes
	var problems []string
	if list, ok := attr["problems"].([]any); ok {
		for _, p := range list {
			problems = append(problems, fmt.Sprint(p))
		}
	}
	return fmt.Sprint(attr["status"]), strings.Join(problems, "\n")
}

// sindrid restarted with a database_url that names an empty database
// (a typo, a fresh server) finds a protected instance's volume that this
// store knows nothing of: it removes, stops and starts nothing, and
// /status says why. Restarted on the right database, all is as it was.
func TestWrongDatabaseURLRemovesNothing(t *testing.T) {
	s := startServer(t, "")
	imageID := s.readyImage(t, "")
	inst, creds := s.createInstance(t, s.secret, imageID, map[string]any{"protected": true})
	volume := filepath.Join(s.data, "volumes", "instance-"+inst.ID)
	before, err := postgres.Status(volume)
	if err != nil || !before.Alive {
		t.Fatalf("instance postmaster: %+v %v", before, err)
	}
	if err := s.stop(); err != nil {
		t.Fatal(err)
	}

	other := pgtest.StartInstance(t)
	cfg, err := os.ReadFile(s.config)
	if err != nil {
		t.Fatal(err)
	}
	wrong := filepath.Join(filepath.Dir(s.config), "wrong-database.toml")
	if err := os.WriteFile(wrong, append([]byte(fmt.Sprintf("database_url = %q\n", other.SocketURL())), cfg...), 0o600); err != nil {
		t.Fatal(err)
	}
	s.stop = start(t, wrong, s.http)
	status, problems := s.statusOf(t)
	if status != "degraded" || !strings.Contains(problems, "accounts for 0 of the 2 volumes") ||
		!strings.Contains(problems, "instance-"+inst.ID+" (of installation") || !strings.Contains(problems, "database_url") {
		t.Fatalf("/status on the wrong database: %s, problems %q", status, problems)
	}
	code, body := s.call(t, "GET", "/instances", s.secret, nil)
	var listed []json.RawMessage
	if json.Unmarshal(decode(t, body).Data, &listed); code != 200 || len(listed) != 0 {
		t.Fatalf("GET /instances on the wrong database: %d %s", code, body)
	}
	if err := s.stop(); err != nil { // past reconcile at start, and the expiry every second
		t.Fatal(err)
	}
	after, err := postgres.Status(volume)
	if err != nil || !after.Alive || after.PID != before.PID {
		t.Fatalf("the instance's postmaster after sindrid ran on the wrong database: %+v %v, want pid %d", after, err, before.PID)
	}
	if got, err := query(certConnString(t, inst, creds), "select 'kept'"); err != nil || got != "kept" {
		t.Fatalf("the instance after sindrid ran on the wrong database: %q %v", got, err)
	}

	s.stop = start(t, s.config, s.http)
	if status, problems := s.statusOf(t); status != "ok" {
		t.Fatalf("/status back on the right database: %s, problems %q", status, problems)
	}
	code, body = s.call(t, "GET", "/instances/"+inst.ID, s.secret, nil)
	if code != 200 || decode(t, body).one(t).Attributes["status"] != "running" {
		t.Fatalf("GET /instances/%s back on the right database: %d %s", inst.ID, code, body)
	}
	if got, err := query(inst.Attributes["database_url"].(string), "select 'up'"); err != nil || got != "up" {
		t.Fatalf("the instance back on the right database: %q %v", got, err)
	}
}
