package spec

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/sindri-db/sindri/pkg/postgres/pgtest"
)

// freePortBlock finds n consecutive ports below the ephemeral range
// (where the kernel picks other tests' ports) that nothing listens on.
func freePortBlock(t testing.TB, n int) int {
	t.Helper()
	for first := 23000; first+n <= 32768; first += n {
		free := true
		for p := first; p < first+n && free; p++ {
			ln, err := net.Listen("tcp", ":"+strconv.Itoa(p))
			if err != nil {
				free = false
				continue
			}
			ln.Close()
		}
		if free {
			return first
		}
	}
	t.Fatalf("no %d consecutive free ports in [23000, 32768)", n)
	return 0
}

// request is call without a testing.TB, for other goroutines than the
// test's: the status and body, or why there are none.
func (s *server) request(method, path string, body any) (int, []byte, error) {
	data, err := json.Marshal(body)
	if err != nil {
		return 0, nil, err
	}
	req, err := http.NewRequest(method, "http://"+s.http+path, bytes.NewReader(data))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Draupnir-Version", apiVersion)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+s.secret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	return resp.StatusCode, out, err
}

// createdInstance is what a POST /instances answered.
type createdInstance struct {
	id, url string
	port    int
	err     error
}

// postInstance is POST /instances without a testing.TB, for other
// goroutines than the test's.
func postInstance(s *server, imageID string) createdInstance {
	status, body, err := s.request("POST", "/instances", resourceBody("instances", map[string]any{"image_id": imageID}))
	if err != nil {
		return createdInstance{err: err}
	}
	if status != 201 {
		return createdInstance{err: fmt.Errorf("status %d: %s", status, body)}
	}
	var doc struct {
		Data struct {
			ID         string `json:"id"`
			Attributes struct {
				Port        int    `json:"port"`
				DatabaseURL string `json:"database_url"`
			} `json:"attributes"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &doc); err != nil || doc.Data.ID == "" {
		return createdInstance{err: fmt.Errorf("201 without an instance (%v): %s", err, body)}
	}
	return createdInstance{id: doc.Data.ID, url: doc.Data.Attributes.DatabaseURL, port: doc.Data.Attributes.Port}
}

// 200 POST /instances at once, with a port range exactly 200 wide: every
// one gets a 201 (no 500, no no_free_port: no port is lost to a race),
// each on a port of its own in the range, and each answers a SELECT on
// it. Then all are destroyed, and 200 at once again succeed: every port
// came back.
func TestTwoHundredCreatesAtOnce(t *testing.T) {
	const n = 200
	minPort := freePortBlock(t, n)
	s := startServerWith(t, serverOptions{base: pgtest.Dir(t), size: "8GiB", minPort: minPort, ports: n})
	imageID := s.readyImage(t, "")
	for round := 1; round <= 2; round++ {
		created := make([]createdInstance, n)
		var wg sync.WaitGroup
		ready := make(chan struct{})
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-ready
				created[i] = postInstance(s, imageID)
			}()
		}
		close(ready)
		wg.Wait()

		var failed []string
		ports := map[int]string{}
		for i, c := range created {
			switch {
			case c.err != nil:
				failed = append(failed, fmt.Sprintf("request %d: %v", i, c.err))
			case c.port < minPort || c.port >= minPort+n:
				failed = append(failed, fmt.Sprintf("instance %s on port %d, outside [%d, %d)", c.id, c.port, minPort, minPort+n))
			case ports[c.port] != "":
				failed = append(failed, fmt.Sprintf("instances %s and %s both on port %d", ports[c.port], c.id, c.port))
			default:
				ports[c.port] = c.id
			}
		}
		if len(failed) > 0 {
			t.Fatalf("round %d: %d of %d POST /instances at once failed:\n%s", round, len(failed), n, strings.Join(failed, "\n"))
		}

		// Each answers, on its own port (eight clients at a time).
		var mu sync.Mutex
		work := make(chan createdInstance)
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for c := range work {
					got, err := query(c.url, "select current_setting('port')")
					if err != nil || got != strconv.Itoa(c.port) {
						mu.Lock()
						failed = append(failed, fmt.Sprintf("instance %s (port %d): %q %v", c.id, c.port, got, err))
						mu.Unlock()
					}
				}
			}()
		}
		for _, c := range created {
			work <- c
		}
		close(work)
		wg.Wait()
		if len(failed) > 0 {
			slices.Sort(failed)
			t.Fatalf("round %d: %d of %d instances do not answer on their port:\n%s", round, len(failed), n, strings.Join(failed, "\n"))
		}

		for _, c := range created {
			if status, body := s.call(t, "DELETE", "/instances/"+c.id, s.secret, nil); status != 204 {
				t.Fatalf("DELETE /instances/%s: %d %s", c.id, status, body)
			}
		}
		t.Logf("round %d: %d instances made at once, each answering on a port of its own, then destroyed", round, n)
	}
}
