package spec

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/procfs"

	"github.com/sindri-db/sindri/pkg/postgres"
	"github.com/sindri-db/sindri/pkg/postgres/pgtest"
)

// What BenchmarkDensity samples at each point.
const (
	densityListSamples = 300 // GET /instances as the upload user
	densityGetSamples  = 300 // GET /instances/{id} of a random instance
	// densityMinMemory is the memory the host must keep available: the
	// fill stops short of it (the machine is shared).
	densityMinMemory = 3 << 30
)

// densityPoint is one row of the curve: what BenchmarkDensity measured
// with Live instances running.
type densityPoint struct {
	Live                             int
	CreateP50, CreateP90, CreateP99  float64 // ms, client side
	ListP50, ListP99                 float64 // ms, client side, body read
	ListServerP50, ListServerP99     float64 // ms, sindrid's access log
	GetP50, GetP99                   float64 // ms, client side
	GetServerP50, GetServerP99       float64 // ms, sindrid's access log
	SindridRSS                       float64 // MB
	SindridThreads                   int
	InstancesPSS                     float64 // MB, every process of every instance
	PSSPerInstance                   float64 // MB
	PSSProcesses                     int
	IdleCPU                          float64 // % of one core: all below
	IdleSindrid, IdleInstances       float64
	IdleMetadata                     float64 // the embedded metadata Postgres
	LiveAfter                        int     // once the timed creates are made
	Answering                        int     // of LiveAfter, those whose database_url answers a SELECT
	LoadBefore, LoadAfter            float64 // the host's 1-minute load average around the idle minute
	MemAvailable                     float64 // MB, the host's
	ListBytes                        int
	idleRoles                        map[string]float64
	createSteps                      string  // each step's mean over the timed creates, from sindrid's metrics
	autovacuums                      int64   // autovacuum and autoanalyze runs so far, summed over the instances
	forksPerSecond                   float64 // the host's forks during the idle minute (every process's, not only the instances')
	createTimes, listTimes, getTimes []time.Duration
}

// densityCreate is one POST /instances of the run.
type densityCreate struct {
	liveBefore int
	ms         float64
	timed      bool // one of a point's densityTimedCreates
}

// densitySizes reads SINDRI_BENCH_DENSITY: the live-instance counts to
// measure at, ascending, comma separated.
func densitySizes(b *testing.B) []int {
	v := strings.TrimSpace(os.Getenv("SINDRI_BENCH_DENSITY"))
	if v == "" {
		v = "10,100,250,500,750,1000"
	}
	var sizes []int
	for _, f := range strings.Split(v, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 || len(sizes) > 0 && n <= sizes[len(sizes)-1] {
			b.Fatalf("SINDRI_BENCH_DENSITY=%q: want ascending positive instance counts separated by commas", v)
		}
		sizes = append(sizes, n)
	}
	return sizes
}

// densitySeconds reads a duration in seconds from the environment.
func densitySeconds(b *testing.B, name string, def int) time.Duration {
	v := strings.TrimSpace(os.Getenv(name))
	if v == "" {
		return time.Duration(def) * time.Second
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		b.Fatalf("%s=%q: want a number of seconds", name, v)
	}
	return time.Duration(n) * time.Second
}

// BenchmarkDensity fills one host with instances of a small image (an
// initdb'd cluster with a table, about 40 MB), created one after another
// through the API of a real sindrid, and measures, at each count of live
// instances in SINDRI_BENCH_DENSITY (default 10,100,250,500,750,1000):
//
//   - after SINDRI_BENCH_DENSITY_SETTLE seconds (default 30) of quiet, the
//     CPU used over SINDRI_BENCH_DENSITY_IDLE seconds (default 60) by
//     sindrid, every instance's postgres processes and the embedded
//     metadata Postgres, as a percentage of one core (from /proc: each
//     process's time, and its reaped children's);
//   - sindrid's RSS and the total PSS of the instances' processes;
//   - GET /instances as the upload user (client side, and server side from
//     sindrid's access log) and GET /instances/{id};
//   - SINDRI_BENCH_DENSITY_CREATES (default 40) POST /instances one after
//     another, which are kept: they are the first of the fill towards the
//     next count (so the last point's are timed at N to N+39 live
//     instances);
//   - that every instance's database_url answers a SELECT.
//
// It writes density.csv (the table it prints), creates.csv (every
// create's duration against the instances live before it), density.svg
// (the curves) and sindrid.log into SINDRI_BENCH_OUT/density-LABEL
// (bench-out/ at the top of the checkout unless set; LABEL is
// SINDRI_BENCH_LABEL or the time). SINDRI_BENCH_SINDRID runs another
// sindrid binary, e.g. one built from another checkout, to measure before
// and after; SINDRI_BENCH_DENSITY_BEFORE names the density.csv of such a
// run, which the table at the end (and before-after.md) sets beside this
// run's. Otherwise sindrid is built with -tags
// sindri_pprof; when SINDRI_BENCH_DENSITY_PPROF is set, from that many
// live instances on CPU profiles of sindrid are taken during the idle
// minute and the requests (sindrid-idle-N.pprof, sindrid-active-N.pprof).
// None is by default: the profiler's sampling stretches the requests'
// tail it would be timing. Ports
// are [SINDRI_BENCH_DENSITY_MIN_PORT (default 20000), +count+100). The
// fill stops, saying so, when the host has less than 3 GiB of memory
// available.
//
// Run it with -benchtime 1x and a long timeout:
//
//	go test -run '^$' -bench Density -benchtime 1x -timeout 120m ./spec
//	SINDRI_BENCH_DENSITY=10,50 SINDRI_BENCH_DENSITY_SETTLE=5 SINDRI_BENCH_DENSITY_IDLE=10 go test -run '^$' -bench Density -benchtime 1x ./spec
func BenchmarkDensity(b *testing.B) {
	sizes := densitySizes(b)
	settle := densitySeconds(b, "SINDRI_BENCH_DENSITY_SETTLE", 30)
	idle := densitySeconds(b, "SINDRI_BENCH_DENSITY_IDLE", 60)
	pprofAt := math.MaxInt
	if v := os.Getenv("SINDRI_BENCH_DENSITY_PPROF"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			b.Fatalf("SINDRI_BENCH_DENSITY_PPROF=%q: want an instance count", v)
		}
		pprofAt = n
	}
	minPort := 20000
	if v := os.Getenv("SINDRI_BENCH_DENSITY_MIN_PORT"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1024 {
			b.Fatalf("SINDRI_BENCH_DENSITY_MIN_PORT=%q: want a port", v)
		}
		minPort = n
	}
	densityTimedCreates := 40
	if v := os.Getenv("SINDRI_BENCH_DENSITY_CREATES"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			b.Fatalf("SINDRI_BENCH_DENSITY_CREATES=%q: want a count of creates", v)
		}
		densityTimedCreates = n
	}
	var before []densityRow
	if path := os.Getenv("SINDRI_BENCH_DENSITY_BEFORE"); path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			b.Fatalf("SINDRI_BENCH_DENSITY_BEFORE: %v", err)
		}
		if before, err = readDensityCSV(string(data)); err != nil {
			b.Fatalf("SINDRI_BENCH_DENSITY_BEFORE=%s: %v", path, err)
		}
	}
	maxLive := sizes[len(sizes)-1]
	if minPort+maxLive+densityTimedCreates+100 > 65536 {
		b.Fatalf("ports [%d, %d) pass 65535", minPort, minPort+maxLive+densityTimedCreates+100)
	}

	label := os.Getenv("SINDRI_BENCH_LABEL")
	if label == "" {
		label = time.Now().Format("20060102-150405")
	}
	outRoot := os.Getenv("SINDRI_BENCH_OUT")
	if outRoot == "" {
		outRoot = filepath.Join("..", "bench-out")
	}
	out, err := filepath.Abs(filepath.Join(outRoot, "density-"+label))
	if err != nil {
		b.Fatal(err)
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		b.Fatal(err)
	}

	binary := os.Getenv("SINDRI_BENCH_SINDRID")
	if binary == "" {
		binary = filepath.Join(filepath.Dir(sindrid), "sindrid-pprof")
		if _, err := os.Stat(binary); err != nil {
			if out, err := exec.Command("go", "build", "-tags", "sindri_pprof", "-o", binary, "../cmd/sindrid").CombinedOutput(); err != nil {
				b.Fatalf("building sindrid with the profiler: %v\n%s", err, out)
			}
		}
	}
	if binary, err = filepath.Abs(binary); err != nil {
		b.Fatal(err)
	}
	pprofAddr := freePort(b)
	b.Setenv("SINDRI_PPROF_ADDR", pprofAddr)

	// Progress goes to stdout and density.log: a benchmark's own log is
	// cut to ten lines.
	progress, err := os.Create(filepath.Join(out, "density.log"))
	if err != nil {
		b.Fatal(err)
	}
	defer progress.Close()
	var sayMu sync.Mutex
	say := func(format string, args ...any) {
		sayMu.Lock()
		defer sayMu.Unlock()
		line := time.Now().Format("15:04:05 ") + fmt.Sprintf(format, args...) + "\n"
		fmt.Print(line)
		progress.WriteString(line)
	}

	logFile, err := os.Create(filepath.Join(out, "sindrid.log"))
	if err != nil {
		b.Fatal(err)
	}
	defer logFile.Close()
	access := &accessLog{file: logFile, durations: map[string]float64{}}
	s := startServerWith(b, serverOptions{
		base: pgtest.Dir(b), size: "32GiB", binary: binary, log: access,
		minPort: minPort, ports: maxLive + densityTimedCreates + 100,
		sharedBuffers: "32MB", expiryInterval: "30s", // sindrid's defaults
	})
	profiling := false
	if resp, err := http.Get("http://" + pprofAddr + "/debug/pprof/"); err == nil {
		resp.Body.Close()
		profiling = resp.StatusCode == 200
	}
	imageID := s.readyImage(b, "")
	var imageBytes int64
	filepath.Walk(filepath.Join(s.data, "images", "image-"+imageID), func(_ string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			imageBytes += fi.Size()
		}
		return nil
	})
	say("sindrid %s (profiler: %v); image %s: %.0f MB of files; ports [%d, %d); output in %s",
		binary, profiling, imageID, float64(imageBytes)/1e6, minPort, minPort+maxLive+densityTimedCreates+100, out)

	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
	// One buffer for every response, which a request's caller reads before
	// the next: a listing of a thousand instances is 415 kB, and reading
	// each into a new buffer had this process collect its garbage every
	// few listings, on the CPUs sindrid answers them on, and pause
	// reading the answers that sindrid's access log times.
	var responses bytes.Buffer
	request := func(method, path string, body any) (status int, data []byte, requestID string, elapsed time.Duration, err error) {
		var r io.Reader
		if body != nil {
			raw, err := json.Marshal(body)
			if err != nil {
				return 0, nil, "", 0, err
			}
			r = bytes.NewReader(raw)
		}
		req, err := http.NewRequest(method, "http://"+s.http+path, r)
		if err != nil {
			return 0, nil, "", 0, err
		}
		req.Header.Set("Draupnir-Version", apiVersion)
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+s.secret)
		t0 := time.Now()
		resp, err := client.Do(req)
		if err != nil {
			return 0, nil, "", 0, err
		}
		responses.Reset()
		_, err = responses.ReadFrom(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, responses.Bytes(), resp.Header.Get("X-Request-Id"), time.Since(t0), err
	}

	var ids []string
	urls := map[string]string{}
	var creates []densityCreate
	var points []densityPoint
	create := func(timed bool) (time.Duration, error) {
		status, data, _, elapsed, err := request("POST", "/instances", resourceBody("instances", map[string]any{"image_id": imageID}))
		if err != nil {
			return 0, err
		}
		if status != 201 {
			return 0, fmt.Errorf("POST /instances with %d live: %d %s", len(ids), status, data)
		}
		var doc struct {
			Data struct {
				ID         string `json:"id"`
				Attributes struct {
					DatabaseURL string `json:"database_url"`
				} `json:"attributes"`
			} `json:"data"`
		}
		if err := json.Unmarshal(data, &doc); err != nil || doc.Data.ID == "" {
			return 0, fmt.Errorf("POST /instances: 201 without an instance (%v): %s", err, data)
		}
		creates = append(creates, densityCreate{liveBefore: len(ids), ms: ms(elapsed), timed: timed})
		ids = append(ids, doc.Data.ID)
		urls[doc.Data.ID] = doc.Data.Attributes.DatabaseURL
		return elapsed, nil
	}
	write := func() {
		if err := os.WriteFile(filepath.Join(out, "density.csv"), []byte(densityCSV(points)), 0o644); err != nil {
			b.Error(err)
		}
		var c strings.Builder
		c.WriteString("live_before,ms,timed\n")
		for _, x := range creates {
			fmt.Fprintf(&c, "%d,%.2f,%v\n", x.liveBefore, x.ms, x.timed)
		}
		if err := os.WriteFile(filepath.Join(out, "creates.csv"), []byte(c.String()), 0o644); err != nil {
			b.Error(err)
		}
		if err := os.WriteFile(filepath.Join(out, "density.svg"), []byte(densitySVG(points, creates, label)), 0o644); err != nil {
			b.Error(err)
		}
	}
	defer func() {
		write()
		table := densityTable(points)
		say("instances live at the end: %d; outputs in %s\n%s", len(ids), out, table)
		if before != nil {
			compared := densityBeforeAfter(before, points)
			if err := os.WriteFile(filepath.Join(out, "before-after.md"), []byte(compared), 0o644); err != nil {
				b.Error(err)
			}
			say("before (%s) and after (this run):\n%s", os.Getenv("SINDRI_BENCH_DENSITY_BEFORE"), compared)
		}
	}()

	var profiles []string
	profile := func(name string, seconds int) func() {
		if !profiling {
			return func() {}
		}
		done := make(chan bool)
		go func() {
			ok := false
			defer func() { done <- ok }()
			resp, err := http.Get(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", pprofAddr, seconds))
			if err != nil {
				say("profile %s: %v", name, err)
				return
			}
			defer resp.Body.Close()
			data, err := io.ReadAll(resp.Body)
			if err != nil || resp.StatusCode != 200 {
				say("profile %s: %d %v", name, resp.StatusCode, err)
				return
			}
			if err := os.WriteFile(filepath.Join(out, name), data, 0o644); err != nil {
				say("profile %s: %v", name, err)
				return
			}
			ok = true
		}()
		return func() {
			if <-done {
				profiles = append(profiles, filepath.Join(out, name))
			}
		}
	}
	defer func() {
		for _, p := range profiles {
			top, err := exec.Command("go", "tool", "pprof", "-top", "-cum", "-nodecount=45", binary, p).CombinedOutput()
			if err != nil {
				say("go tool pprof %s: %v", p, err)
			}
			say("%s:\n%s", filepath.Base(p), top)
		}
	}()

	stopped := ""
	for _, target := range sizes {
		for len(ids) < target && stopped == "" {
			if len(ids)%50 == 0 {
				if avail := memAvailable(); avail < densityMinMemory {
					stopped = fmt.Sprintf("the fill stopped at %d live instances: the host has only %.0f MB of memory available", len(ids), float64(avail)/(1<<20))
					break
				}
			}
			if _, err := create(false); err != nil {
				stopped = err.Error()
			}
		}
		if stopped != "" {
			b.Errorf("%s", stopped)
			return
		}
		p := densityPoint{Live: len(ids)}
		say("%d live instances; settling for %s", p.Live, settle)
		time.Sleep(settle)

		// The idle minute: nothing asks sindrid anything.
		roots := map[int]string{s.pid: "sindrid"}
		if pf, err := postgres.ReadPIDFile(filepath.Join(s.data, "meta", "data")); err == nil {
			roots[pf.PID] = "metadata postgres"
		}
		var postmasters []int
		for _, id := range ids {
			pf, err := postgres.ReadPIDFile(filepath.Join(s.data, "volumes", "instance-"+id))
			if err != nil || !postgres.Running(pf.PID) {
				b.Errorf("instance %s has no live postmaster: %+v %v", id, pf, err)
				continue
			}
			roots[pf.PID] = "postmaster"
			postmasters = append(postmasters, pf.PID)
		}
		waitProfile := func() {}
		if p.Live >= pprofAt {
			waitProfile = profile(fmt.Sprintf("sindrid-idle-%d.pprof", p.Live), int(idle.Seconds()))
		}
		p.LoadBefore = pgtest.LoadAverage()
		forks := pgtest.Forks()
		before := pgtest.SampleCPU(roots)
		time.Sleep(idle)
		after := pgtest.SampleCPU(roots)
		p.forksPerSecond = float64(pgtest.Forks()-forks) / after.At.Sub(before.At).Seconds()
		p.LoadAfter = pgtest.LoadAverage()
		waitProfile()
		wall := after.At.Sub(before.At).Seconds()
		p.idleRoles = pgtest.CPUUsage(before, after)
		for role, sec := range p.idleRoles {
			pct := 100 * sec / wall
			p.idleRoles[role] = pct
			p.IdleCPU += pct
			switch {
			case strings.HasPrefix(role, "sindrid"):
				p.IdleSindrid += pct
			case strings.HasPrefix(role, "postmaster"):
				p.IdleInstances += pct
			default:
				p.IdleMetadata += pct
			}
		}

		p.SindridRSS = float64(pgtest.RSS(s.pid)) / (1 << 20)
		p.SindridThreads = threads(s.pid)
		pss, procs := pgtest.PSS(postmasters)
		p.InstancesPSS, p.PSSProcesses = float64(pss)/(1<<20), procs
		if len(postmasters) > 0 {
			p.PSSPerInstance = p.InstancesPSS / float64(len(postmasters))
		}
		p.MemAvailable = float64(memAvailable()) / (1 << 20)

		// The requests, with this process's garbage collector held off
		// until they are done: its work would run on the CPUs sindrid and
		// the instances use, and its pauses would be counted in the
		// answers' times.
		runtime.GC()
		gcPercent := debug.SetGCPercent(-1)
		waitProfile = func() {}
		if p.Live >= pprofAt {
			waitProfile = profile(fmt.Sprintf("sindrid-active-%d.pprof", p.Live), 20)
		}
		var serverList []time.Duration
		for range densityListSamples {
			status, data, rid, elapsed, err := request("GET", "/instances", nil)
			if err != nil || status != 200 {
				b.Fatalf("GET /instances: %d %v %.200s", status, err, data)
			}
			p.ListBytes = len(data)
			p.listTimes = append(p.listTimes, elapsed)
			if d, ok := access.duration(rid); ok {
				serverList = append(serverList, time.Duration(d*float64(time.Millisecond)))
			}
		}
		var serverGet []time.Duration
		for range densityGetSamples {
			id := ids[rand.IntN(len(ids))]
			status, data, rid, elapsed, err := request("GET", "/instances/"+id, nil)
			if err != nil || status != 200 {
				b.Fatalf("GET /instances/%s: %d %v %.200s", id, status, err, data)
			}
			p.getTimes = append(p.getTimes, elapsed)
			if d, ok := access.duration(rid); ok {
				serverGet = append(serverGet, time.Duration(d*float64(time.Millisecond)))
			}
		}
		stepsBefore := createStepTotals(s.http)
		for range densityTimedCreates {
			elapsed, err := create(true)
			if err != nil {
				stopped = err.Error()
				break
			}
			p.createTimes = append(p.createTimes, elapsed)
		}
		debug.SetGCPercent(gcPercent)
		waitProfile()
		p.createSteps = createStepMeans(stepsBefore, createStepTotals(s.http))
		for _, d := range [][]time.Duration{p.listTimes, p.getTimes, p.createTimes, serverList, serverGet} {
			slices.Sort(d)
		}
		p.ListP50, p.ListP99 = benchPercentile(p.listTimes, 0.5), benchPercentile(p.listTimes, 0.99)
		if len(serverList) > 0 {
			p.ListServerP50, p.ListServerP99 = benchPercentile(serverList, 0.5), benchPercentile(serverList, 0.99)
		} else {
			p.ListServerP50, p.ListServerP99 = math.NaN(), math.NaN()
		}
		p.GetP50, p.GetP99 = benchPercentile(p.getTimes, 0.5), benchPercentile(p.getTimes, 0.99)
		p.GetServerP50, p.GetServerP99 = math.NaN(), math.NaN()
		if len(serverGet) > 0 {
			p.GetServerP50, p.GetServerP99 = benchPercentile(serverGet, 0.5), benchPercentile(serverGet, 0.99)
		}
		p.CreateP50, p.CreateP90, p.CreateP99 = benchPercentile(p.createTimes, 0.5), benchPercentile(p.createTimes, 0.9), benchPercentile(p.createTimes, 0.99)

		// Every instance answers (those just made too).
		p.LiveAfter = len(ids)
		p.Answering, p.autovacuums = answering(ids, urls, say)
		points = append(points, p)
		write()

		roles := make([]string, 0, len(p.idleRoles))
		for role := range p.idleRoles {
			roles = append(roles, role)
		}
		slices.SortFunc(roles, func(x, y string) int { return int(1e6 * (p.idleRoles[y] - p.idleRoles[x])) })
		var lines []string
		for _, role := range roles {
			if p.idleRoles[role] >= 0.01 {
				lines = append(lines, fmt.Sprintf("  %-45s %6.2f %% of a core", role, p.idleRoles[role]))
			}
		}
		autovacuumsBefore := int64(0)
		if len(points) > 1 {
			autovacuumsBefore = points[len(points)-2].autovacuums
		}
		say("%d live: create steps (mean ms) %s; autovacuum and autoanalyze runs since the last point: %d; the host forked %.1f processes a second in the idle minute", p.Live, p.createSteps, p.autovacuums-autovacuumsBefore, p.forksPerSecond)
		say("%d live: create p50 %.1f ms p90 %.1f ms p99 %.1f ms; list p99 %.1f ms (server %.1f ms, %d kB); get p99 %.1f ms (server %.1f ms); sindrid RSS %.0f MB, %d threads; instances' PSS %.0f MB (%.1f MB each, %d processes); idle CPU %.2f %% (load %.2f → %.2f); %d/%d answer\n%s",
			p.Live, p.CreateP50, p.CreateP90, p.CreateP99, p.ListP99, p.ListServerP99, p.ListBytes/1000, p.GetP99, p.GetServerP99, p.SindridRSS, p.SindridThreads,
			p.InstancesPSS, p.PSSPerInstance, p.PSSProcesses, p.IdleCPU, p.LoadBefore, p.LoadAfter, p.Answering, len(ids), strings.Join(lines, "\n"))
		if p.Answering != len(ids) {
			b.Errorf("%d of %d instances answer a SELECT", p.Answering, len(ids))
		}
		if stopped != "" {
			b.Errorf("%s", stopped)
			return
		}
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// answering counts the instances whose database_url answers a SELECT,
// eight at a time, and logs the first failures. It also sums the
// autovacuum and autoanalyze runs each instance's database has seen.
func answering(ids []string, urls map[string]string, say func(string, ...any)) (int, int64) {
	var mu sync.Mutex
	n, logged := 0, 0
	var autovacuums int64
	work := make(chan string)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := range work {
				got, err := query(urls[id], "select 'up ' || (select coalesce(sum(autovacuum_count + autoanalyze_count), 0) from pg_stat_all_tables)")
				runs, parsed := int64(0), false
				if rest, ok := strings.CutPrefix(got, "up "); ok {
					runs, err = strconv.ParseInt(rest, 10, 64)
					parsed = err == nil
				}
				mu.Lock()
				if parsed {
					n++
					autovacuums += runs
				} else if logged < 5 {
					logged++
					say("instance %s does not answer: %q %v", id, got, err)
				}
				mu.Unlock()
			}
		}()
	}
	for _, id := range ids {
		work <- id
	}
	close(work)
	wg.Wait()
	return n, autovacuums
}

var createStepLine = regexp.MustCompile(`^sindri_instance_create_step_seconds_(sum|count)\{step="([a-z]+)"\} (\S+)$`)

// createStepTotals reads sindrid's metrics: for each step of a creation,
// the seconds summed and the count so far (none from a sindrid without
// the metric).
func createStepTotals(addr string) map[string][2]float64 {
	totals := map[string][2]float64{}
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return totals
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		m := createStepLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		v, err := strconv.ParseFloat(m[3], 64)
		if err != nil {
			continue
		}
		t := totals[m[2]]
		if m[1] == "sum" {
			t[0] = v
		} else {
			t[1] = v
		}
		totals[m[2]] = t
	}
	return totals
}

// createStepMeans is each step's mean duration between two readings of
// createStepTotals, in the order of a creation.
func createStepMeans(before, after map[string][2]float64) string {
	var parts []string
	for _, step := range []string{"recorded", "credentials", "port", "cloned", "configured", "started", "accepting", "ready"} {
		a, b := after[step], before[step]
		if n := a[1] - b[1]; n > 0 {
			parts = append(parts, fmt.Sprintf("%s %.1f", step, 1000*(a[0]-b[0])/n))
		}
	}
	if len(parts) == 0 {
		return "(not measured by this sindrid)"
	}
	return strings.Join(parts, ", ")
}

// memAvailable is the host's MemAvailable in bytes.
func memAvailable() uint64 {
	fs, err := procfs.NewDefaultFS()
	if err != nil {
		return math.MaxUint64
	}
	m, err := fs.Meminfo()
	if err != nil || m.MemAvailableBytes == nil {
		return math.MaxUint64
	}
	return *m.MemAvailableBytes
}

// accessLog keeps sindrid's output in a file and the duration of each
// request its access log records, by request id.
type accessLog struct {
	mu        sync.Mutex
	file      *os.File
	partial   []byte
	durations map[string]float64
}

var (
	logRequestID = regexp.MustCompile(`\brequest_id=(\S+)`)
	logDuration  = regexp.MustCompile(`\bduration_ms=([0-9.]+)`)
)

func (a *accessLog) Write(p []byte) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.file.Write(p)
	a.partial = append(a.partial, p...)
	for {
		i := bytes.IndexByte(a.partial, '\n')
		if i < 0 {
			break
		}
		line := a.partial[:i]
		if bytes.Contains(line, []byte(`msg="http request"`)) {
			id, d := logRequestID.FindSubmatch(line), logDuration.FindSubmatch(line)
			if id != nil && d != nil {
				if v, err := strconv.ParseFloat(string(d[1]), 64); err == nil {
					a.durations[string(id[1])] = v
				}
			}
		}
		a.partial = a.partial[i+1:]
	}
	return len(p), nil
}

// duration is the logged duration of a request in ms; the line may come
// a moment after the response.
func (a *accessLog) duration(requestID string) (float64, bool) {
	for deadline := time.Now().Add(time.Second); ; time.Sleep(5 * time.Millisecond) {
		a.mu.Lock()
		d, ok := a.durations[requestID]
		a.mu.Unlock()
		if ok || time.Now().After(deadline) {
			return d, ok
		}
	}
}

var densityColumns = []string{"live", "create_p50_ms", "create_p90_ms", "create_p99_ms", "list_p50_ms", "list_p99_ms", "list_server_p50_ms", "list_server_p99_ms",
	"get_p50_ms", "get_p99_ms", "get_server_p50_ms", "get_server_p99_ms", "sindrid_rss_mb", "sindrid_threads", "instances_pss_mb", "pss_per_instance_mb",
	"pss_processes", "idle_cpu_pct", "idle_sindrid_pct", "idle_instances_pct",
	"idle_metadata_pct", "live_after", "answering", "load1_before", "load1_after", "mem_available_mb", "list_bytes"}

func (p densityPoint) values() []float64 {
	return []float64{float64(p.Live), p.CreateP50, p.CreateP90, p.CreateP99, p.ListP50, p.ListP99, p.ListServerP50, p.ListServerP99,
		p.GetP50, p.GetP99, p.GetServerP50, p.GetServerP99, p.SindridRSS, float64(p.SindridThreads), p.InstancesPSS, p.PSSPerInstance,
		float64(p.PSSProcesses), p.IdleCPU, p.IdleSindrid, p.IdleInstances,
		p.IdleMetadata, float64(p.LiveAfter), float64(p.Answering), p.LoadBefore, p.LoadAfter, p.MemAvailable, float64(p.ListBytes)}
}

// densityRow is a row of a density.csv, by column name: an older run's
// may lack the newer columns (NaN).
type densityRow map[string]float64

func (r densityRow) get(column string) float64 {
	if v, ok := r[column]; ok {
		return v
	}
	return math.NaN()
}

func readDensityCSV(text string) ([]densityRow, error) {
	lines := strings.Split(strings.TrimSpace(text), "\n")
	if len(lines) < 2 {
		return nil, fmt.Errorf("no rows")
	}
	header := strings.Split(lines[0], ",")
	var rows []densityRow
	for _, line := range lines[1:] {
		cells := strings.Split(line, ",")
		if len(cells) != len(header) {
			return nil, fmt.Errorf("a row of %d cells under %d columns", len(cells), len(header))
		}
		row := densityRow{}
		for i, c := range cells {
			v, err := strconv.ParseFloat(c, 64)
			if err != nil {
				return nil, fmt.Errorf("column %s: %w", header[i], err)
			}
			row[header[i]] = v
		}
		rows = append(rows, row)
	}
	return rows, nil
}

// densityBeforeAfter is a Markdown table of the points that both runs
// measured at the same count of live instances: before → after.
func densityBeforeAfter(before []densityRow, after []densityPoint) string {
	var b strings.Builder
	b.WriteString("| live | POST /instances p50 / p90 / p99 | GET /instances server p50 / p99 | GET /instances/{id} p50 / p99 | idle CPU (all; sindrid; instances) | PSS per instance | sindrid RSS |\n")
	b.WriteString("| ---: | --- | --- | --- | --- | --- | --- |\n")
	for _, p := range after {
		i := slices.IndexFunc(before, func(r densityRow) bool { return int(r.get("live")) == p.Live })
		if i < 0 {
			continue
		}
		r := before[i]
		pssBefore := r.get("pss_per_instance_mb")
		if math.IsNaN(pssBefore) && r.get("live") > 0 {
			pssBefore = r.get("instances_pss_mb") / r.get("live")
		}
		fmt.Fprintf(&b, "| %d | %.0f / %.0f / %.0f → %.0f / %.0f / %.0f ms | %.1f / %.1f → %.1f / %.1f ms | %.1f / %.1f → %.1f / %.1f ms | %.1f; %.1f; %.1f → %.1f; %.1f; %.1f %% | %.1f → %.1f MB | %.0f → %.0f MB |\n",
			p.Live, r.get("create_p50_ms"), r.get("create_p90_ms"), r.get("create_p99_ms"), p.CreateP50, p.CreateP90, p.CreateP99,
			r.get("list_server_p50_ms"), r.get("list_server_p99_ms"), p.ListServerP50, p.ListServerP99,
			r.get("get_p50_ms"), r.get("get_p99_ms"), p.GetP50, p.GetP99,
			r.get("idle_cpu_pct"), r.get("idle_sindrid_pct"), r.get("idle_instances_pct"), p.IdleCPU, p.IdleSindrid, p.IdleInstances,
			pssBefore, p.PSSPerInstance, r.get("sindrid_rss_mb"), p.SindridRSS)
	}
	return b.String()
}

// threads is how many threads pid runs.
func threads(pid int) int {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "Threads:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	return 0
}

func densityCSV(points []densityPoint) string {
	var b strings.Builder
	b.WriteString(strings.Join(densityColumns, ",") + "\n")
	for _, p := range points {
		var cells []string
		for _, v := range p.values() {
			cells = append(cells, strconv.FormatFloat(v, 'f', -1, 64))
		}
		b.WriteString(strings.Join(cells, ",") + "\n")
	}
	return b.String()
}

// densityTable is the curve as a Markdown table.
func densityTable(points []densityPoint) string {
	var b strings.Builder
	b.WriteString("| live | POST /instances p50 / p90 / p99 | GET /instances p50 / p99 (server p50 / p99) | GET /instances/{id} p50 / p99 (server p50 / p99) | sindrid RSS, threads | instances' PSS (each) | idle CPU: all (sindrid, instances, metadata) | load |\n")
	b.WriteString("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, p := range points {
		fmt.Fprintf(&b, "| %d | %.1f / %.1f / %.1f ms | %.1f / %.1f ms (%.1f / %.1f ms) | %.1f / %.1f ms (%.1f / %.1f ms) | %.0f MB, %d | %.0f MB (%.1f MB) | %.1f %% (%.1f, %.1f, %.1f) | %.1f |\n",
			p.Live, p.CreateP50, p.CreateP90, p.CreateP99, p.ListP50, p.ListP99, p.ListServerP50, p.ListServerP99, p.GetP50, p.GetP99, p.GetServerP50, p.GetServerP99,
			p.SindridRSS, p.SindridThreads, p.InstancesPSS, p.PSSPerInstance, p.IdleCPU, p.IdleSindrid, p.IdleInstances, p.IdleMetadata, (p.LoadBefore+p.LoadAfter)/2)
	}
	return b.String()
}

// densitySVG draws the curve: six charts against the live instances.
func densitySVG(points []densityPoint, creates []densityCreate, label string) string {
	type series struct {
		name, color string
		xs, ys      []float64
		dots        bool
	}
	type chart struct {
		title, unit string
		series      []series
		limit       float64 // a dashed goal line, 0 for none
	}
	line := func(name, color string, f func(densityPoint) float64) series {
		s := series{name: name, color: color}
		for _, p := range points {
			if v := f(p); !math.IsNaN(v) {
				s.xs, s.ys = append(s.xs, float64(p.Live)), append(s.ys, v)
			}
		}
		return s
	}
	all := series{name: "each create", color: "#bbb", dots: true}
	for _, c := range creates {
		all.xs, all.ys = append(all.xs, float64(c.liveBefore)), append(all.ys, c.ms)
	}
	charts := []chart{
		{title: "POST /instances", unit: "ms", series: []series{all,
			line("p50", "#1f77b4", func(p densityPoint) float64 { return p.CreateP50 }),
			line("p90", "#ff7f0e", func(p densityPoint) float64 { return p.CreateP90 }),
			line("p99", "#d62728", func(p densityPoint) float64 { return p.CreateP99 })}},
		{title: "GET /instances (upload user), GET /instances/{id}", unit: "ms", limit: 5, series: []series{
			line("list p99, client", "#d62728", func(p densityPoint) float64 { return p.ListP99 }),
			line("list p99, server", "#ff7f0e", func(p densityPoint) float64 { return p.ListServerP99 }),
			line("get p99", "#2ca02c", func(p densityPoint) float64 { return p.GetP99 })}},
		{title: "sindrid's RSS", unit: "MB", series: []series{
			line("sindrid", "#9467bd", func(p densityPoint) float64 { return p.SindridRSS })}},
		{title: "PSS of every instance's processes, and per instance", unit: "MB", series: []series{
			line("instances", "#8c564b", func(p densityPoint) float64 { return p.InstancesPSS }),
			line("per instance × 100", "#e377c2", func(p densityPoint) float64 { return 100 * p.PSSPerInstance })}},
		{title: "Idle CPU over a minute", unit: "% of one core", limit: 15, series: []series{
			line("all", "#000", func(p densityPoint) float64 { return p.IdleCPU }),
			line("sindrid", "#1f77b4", func(p densityPoint) float64 { return p.IdleSindrid }),
			line("instances", "#ff7f0e", func(p densityPoint) float64 { return p.IdleInstances }),
			line("metadata Postgres", "#2ca02c", func(p densityPoint) float64 { return p.IdleMetadata })}},
		{title: "The shared host's load average during that minute", unit: "1-minute", series: []series{
			line("load", "#7f7f7f", func(p densityPoint) float64 { return (p.LoadBefore + p.LoadAfter) / 2 })}},
	}
	const w, h, pad = 480, 300, 50
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="11">`+"\n", 2*w, 3*h+30)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/><text x="10" y="18" font-size="14">sindri: one host filling with instances (%s)</text>`+"\n", xmlEscape(label))
	xMax := 1.0
	for _, p := range points {
		xMax = max(xMax, float64(p.LiveAfter))
	}
	for _, c := range creates {
		xMax = max(xMax, float64(c.liveBefore+1))
	}
	xMax = niceCeil(xMax)
	for i, c := range charts {
		ox, oy := float64((i%2)*w), float64(30+(i/2)*h)
		yMax := c.limit
		for _, s := range c.series {
			for _, y := range s.ys {
				yMax = max(yMax, y)
			}
		}
		yMax = niceCeil(max(yMax, 1e-9))
		x0, y0, x1, y1 := ox+pad, oy+h-35, ox+w-15, oy+25
		px := func(x float64) float64 { return x0 + (x1-x0)*x/xMax }
		py := func(y float64) float64 { return y0 - (y0-y1)*y/yMax }
		fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" font-size="12" font-weight="bold">%s (%s)</text>`+"\n", x0, oy+15, xmlEscape(c.title), xmlEscape(c.unit))
		for k := 0; k <= 5; k++ {
			yv, xv := yMax*float64(k)/5, xMax*float64(k)/5
			fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#eee"/><text x="%.1f" y="%.1f" text-anchor="end">%s</text>`+"\n",
				x0, py(yv), x1, py(yv), x0-4, py(yv)+4, tick(yv))
			fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", px(xv), y0+14, tick(xv))
		}
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#333"/><line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#333"/>`+"\n",
			x0, y0, x1, y0, x0, y0, x0, y1)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">live instances</text>`+"\n", (x0+x1)/2, y0+28)
		if c.limit > 0 {
			fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#999" stroke-dasharray="4 3"/><text x="%.1f" y="%.1f" text-anchor="end" fill="#999">goal %s</text>`+"\n",
				x0, py(c.limit), x1, py(c.limit), x1, py(c.limit)-3, tick(c.limit))
		}
		legend := 0
		for _, s := range c.series {
			if s.dots {
				for k := range s.xs {
					fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="1.2" fill="%s"/>`, px(s.xs[k]), py(s.ys[k]), s.color)
				}
				b.WriteString("\n")
			} else if len(s.xs) > 0 {
				var pts []string
				for k := range s.xs {
					pts = append(pts, fmt.Sprintf("%.1f,%.1f", px(s.xs[k]), py(s.ys[k])))
					fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="2.5" fill="%s"/>`, px(s.xs[k]), py(s.ys[k]), s.color)
				}
				fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="1.5" points="%s"/>`+"\n", s.color, strings.Join(pts, " "))
			}
			fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="10" height="3" fill="%s"/><text x="%.1f" y="%.1f">%s</text>`+"\n",
				x0+10, y1+4+float64(legend)*13, s.color, x0+24, y1+8+float64(legend)*13, xmlEscape(s.name))
			legend++
		}
	}
	b.WriteString("</svg>\n")
	return b.String()
}

// niceCeil rounds v up to 1, 2 or 5 times a power of ten.
func niceCeil(v float64) float64 {
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if v <= m*p {
			return m * p
		}
	}
	return 10 * p
}

func tick(v float64) string { return strconv.FormatFloat(v, 'g', 4, 64) }

func xmlEscape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&quot;").Replace(s)
}
