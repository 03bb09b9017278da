package spec

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/browser"
	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"
	"github.com/jackc/pgx/v5"

	"github.com/sindri-db/sindri/pkg/auth/authtest"
	"github.com/sindri-db/sindri/pkg/testenv"
)

// chrome is one person's browser: a headless Chromium of its own (its own
// cookies), driven with chromedp.
type chrome struct {
	t           *testing.T
	ctx         context.Context
	base        string // sindrid's console origin, http://127.0.0.1:PORT
	screenshots string // where screenshots go
}

// Screen sizes of the screenshots: a laptop and a phone.
var (
	laptop = [2]int64{1366, 900}
	phone  = [2]int64{390, 844}
)

func newChrome(t *testing.T, base, screenshots string) *chrome {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("no chromium: run make deps (scripts/deps installs Debian's chromium): %v", err)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(path), chromedp.NoSandbox,
		chromedp.WindowSize(int(laptop[0]), int(laptop[1])), chromedp.UserDataDir(t.TempDir()))
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(alloc)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	c := &chrome{t: t, ctx: ctx, base: base, screenshots: screenshots}
	// The first action starts the browser, which lives as long as the
	// context it runs in: this one, not a step's.
	if err := chromedp.Do(ctx, chromedp.Navigate("about:blank")); err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
	// The copy buttons write the clipboard; the test reads it back.
	origin := base
	for _, name := range []string{"clipboard-read", "clipboard-write"} {
		_, err := cdp.Call(ctx, chromedp.FromContext(ctx).Browser, browser.SetPermission, browser.SetPermissionParams{
			Permission: &browser.PermissionDescriptor{Name: name}, Setting: browser.PermissionSettingGranted, Origin: origin})
		if err != nil {
			t.Fatalf("granting %s: %v", name, err)
		}
	}
	return c
}

// do runs actions, each step bounded.
func (c *chrome) do(actions ...chromedp.Action[chromedp.Void]) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(c.ctx, 60*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		c.t.Fatalf("browser: %v (at %s)", err, c.location())
	}
}

func run[T any](c *chrome, a chromedp.Action[T]) T {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(c.ctx, 60*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		c.t.Fatalf("browser: %v (at %s)", err, c.location())
	}
	return v
}

func (c *chrome) location() string {
	ctx, cancel := context.WithTimeout(c.ctx, 5*time.Second)
	defer cancel()
	l, _ := chromedp.Run(ctx, chromedp.Location())
	return l
}

func (c *chrome) open(path string) { c.t.Helper(); c.do(chromedp.Navigate(c.base + path)) }

func (c *chrome) text(sel string) string {
	c.t.Helper()
	return strings.TrimSpace(run(c, chromedp.Text(chromedp.CSS(sel))))
}

func (c *chrome) attr(sel, name string) string {
	c.t.Helper()
	return run(c, chromedp.AttributeValue(chromedp.CSS(sel), name)).Value
}

func eval[T any](c *chrome, js string) T {
	c.t.Helper()
	return run(c, chromedp.Evaluate[T](js, chromedp.EvalAwaitPromise))
}

// try is eval that reports failure instead of failing the test: while a
// page is being replaced, there is no document to ask.
func try[T any](c *chrome, js string) (T, bool) {
	ctx, cancel := context.WithTimeout(c.ctx, 10*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](js, chromedp.EvalAwaitPromise))
	return v, err == nil
}

// page is the whole page's text.
func (c *chrome) page() string { c.t.Helper(); return eval[string](c, "document.body.innerText") }

// click clicks sel and waits for the page the click leads to.
func (c *chrome) click(sel string) {
	c.t.Helper()
	c.toNewPage(sel, chromedp.Click(chromedp.CSS(sel), chromedp.NodeVisible))
}

// press types keys into sel (with the keyboard: kb.Enter submits a form
// or presses a button) and waits for the page that leads to.
func (c *chrome) press(sel, keys string) {
	c.t.Helper()
	c.toNewPage(sel, chromedp.SendKeys(chromedp.CSS(sel), keys))
}

// toNewPage runs action on sel and waits for the page it leads to.
func (c *chrome) toNewPage(sel string, action chromedp.Action[chromedp.Void]) {
	c.t.Helper()
	before := eval[float64](c, "performance.timeOrigin")
	c.do(action)
	deadline := time.Now().Add(60 * time.Second)
	for {
		origin, ok1 := try[float64](c, "performance.timeOrigin")
		state, ok2 := try[string](c, "document.readyState")
		if ok1 && ok2 && origin != before && state == "complete" {
			break
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("clicking %s led to no new page", sel)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// mark marks the page; unmarked reports whether it was reloaded since.
func (c *chrome) mark() { c.t.Helper(); eval[bool](c, "window.sindriTestMark = true") }
func (c *chrome) unmarked() bool {
	c.t.Helper()
	return !eval[bool](c, "window.sindriTestMark === true")
}

// waitFor waits until js is true on the page.
func (c *chrome) waitFor(what, js string) {
	c.t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for {
		if ok, _ := try[bool](c, js); ok {
			break
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("waited 90s for %s; the page says:\n%s", what, c.page())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// shoot saves the page as name-laptop.png and name-phone.png.
func (c *chrome) shoot(name string) {
	c.t.Helper()
	for _, size := range []struct {
		label string
		wh    [2]int64
	}{{"laptop", laptop}, {"phone", phone}} {
		opts := []chromedp.EmulateViewportOption{}
		if size.label == "phone" {
			opts = append(opts, chromedp.EmulateMobile)
		}
		c.do(chromedp.EmulateViewport(size.wh[0], size.wh[1], opts...))
		png := run(c, chromedp.FullScreenshot(100))
		if err := os.WriteFile(filepath.Join(c.screenshots, name+"-"+size.label+".png"), png, 0o644); err != nil {
			c.t.Fatal(err)
		}
	}
	c.do(chromedp.EmulateViewport(laptop[0], laptop[1]))
}

// postFromPage sends a POST from the page's own JavaScript with the
// page's CSRF token (a signed-in user trying another's URL) and returns
// the status.
func (c *chrome) postFromPage(path string) int {
	c.t.Helper()
	return int(eval[float64](c, fmt.Sprintf(`fetch(%q, {method: "POST", redirect: "manual",
		body: new URLSearchParams({csrf: document.querySelector('input[name=csrf]').value, protected: "true"})}).then(r => r.status)`, path)))
}

func TestConsoleInABrowser(t *testing.T) {
	testenv.RequireRoot(t, "sindrid mounts a loopback BTRFS and runs Postgres")
	shots := t.ArtifactDir()
	t.Logf("screenshots in %s", shots)
	p := authtest.NewProvider(t)
	s := startOAuthServer(t, p)
	base := "http://" + s.http
	imageID := s.readyImage(t, "")

	// Carol's instance, made with the API: nobody else's console shows it.
	carol := s.token(t, "carol")
	carolInst, _ := s.createInstance(t, carol, imageID, nil)

	t.Run("oauth", func(t *testing.T) {
		ada := newChrome(t, base, shots)
		ada.open("/ui/instances")
		if loc := ada.location(); !strings.HasPrefix(loc, base+"/ui/login") {
			t.Fatalf("signed out, /ui/instances went to %s, want the sign-in page", loc)
		}
		ada.shoot("signin")
		p.LoginEmail("ada@example.com")
		ada.click("#oauth-signin")
		if who := ada.text("#signed-in-as"); who != "ada@example.com" {
			t.Fatalf("signed in as %q", who)
		}
		if loc := ada.location(); loc != base+"/ui/" {
			t.Fatalf("after signing in: %s, want the overview", loc)
		}

		// The overview's figures are /status's.
		status, body := s.call(t, "GET", "/status", s.secret, nil)
		if status != 200 {
			t.Fatalf("GET /status: %d %s", status, body)
		}
		st := decode(t, body).one(t).Attributes
		for sel, key := range map[string]string{"#status data": "status", "#version data": "version",
			"#storage-driver data": "storage_driver", "#total data": "total_bytes"} {
			want := fmt.Sprint(st[key])
			if n, ok := st[key].(float64); ok {
				want = strconv.FormatFloat(n, 'f', -1, 64)
			}
			if got := ada.attr(sel, "value"); got != want {
				t.Errorf("overview %s = %q, /status %s = %q", sel, got, key, want)
			}
		}
		for _, kind := range []string{"images", "instances", "backups"} {
			for state, n := range st[kind].(map[string]any) {
				sel := fmt.Sprintf(`#counts-%s data[data-status=%q]`, kind, state)
				if got := ada.attr(sel, "value"); got != fmt.Sprint(n) {
					t.Errorf("overview: %s %s = %q, /status says %v", kind, state, got, n)
				}
			}
		}
		ada.shoot("overview")

		// An image finalising shows on the images page, and becomes ready
		// there, with its new-instance button, without a reload.
		status, body = s.call(t, "POST", "/images", s.secret, resourceBody("images", map[string]any{"backed_up_at": "2026-11-20T12:00:00Z", "name": "live"}))
		if status != 201 {
			t.Fatalf("POST /images: %d %s", status, body)
		}
		liveImage := decode(t, body).one(t).ID
		if status, body := s.call(t, "PUT", "/images/"+liveImage+"/upload", s.secret, pgTarball(t), "Content-Type", "application/octet-stream"); status != 200 {
			t.Fatalf("upload: %d %s", status, body)
		}
		finalised := make(chan int, 1)
		go func() {
			status, _ := s.call(t, "POST", "/images/"+liveImage+"/done", s.secret, nil)
			finalised <- status
		}()
		for deadline := time.Now().Add(30 * time.Second); ; {
			_, body := s.call(t, "GET", "/images/"+liveImage, s.secret, nil)
			if st := decode(t, body).one(t).Attributes["status"]; st == "finalising" {
				break
			} else if st != "pending" || time.Now().After(deadline) {
				t.Fatalf("image %s is %v, want finalising", liveImage, st)
			}
			time.Sleep(20 * time.Millisecond)
		}
		ada.open("/ui/images")
		ada.mark()
		row := fmt.Sprintf("#image-%s", liveImage)
		if st := ada.attr(row, "data-status"); st != "finalising" {
			t.Fatalf("image %s on the page: %q, want finalising (it is, says the API)", liveImage, st)
		}
		ada.waitFor("the image to become ready", fmt.Sprintf(`document.querySelector(%q).dataset.status === "ready" && !!document.querySelector("#new-instance-%s")`, row, liveImage))
		if ada.unmarked() {
			t.Fatal("the images page was reloaded to show the ready image")
		}
		if status := <-finalised; status != 200 {
			t.Fatalf("finalise: %d", status)
		}
		ada.shoot("images")

		instanceFlow(t, ada, s, liveImage, true)
		nowhere(t, ada, s, carolInst.ID, carol)
	})

	t.Run("pasted token", func(t *testing.T) {
		bob := newChrome(t, base, t.ArtifactDir())
		bob.open("/ui/")
		// With the keyboard only: the first Tab reaches the skip link,
		// Enter in the token field submits the form.
		bob.do(chromedp.KeyEvent(kb.Tab))
		if cls := eval[string](bob, "document.activeElement.className"); cls != "skip" {
			t.Fatalf("the first Tab focuses %q, want the skip link", cls)
		}
		bob.press("#token", s.token(t, "bob")+kb.Enter)
		if who := bob.text("#signed-in-as"); who != "token:bob" {
			t.Fatalf("signed in as %q", who)
		}
		instanceFlow(t, bob, s, imageID, false)
		nowhere(t, bob, s, carolInst.ID, carol)
	})
}

// instanceFlow creates an instance from the images page and watches it
// run, copies its DATABASE_URL and connects with it, protects it, resets
// it and destroys it, each with the console's buttons, and checks that a
// form posted from another origin changes nothing.
func instanceFlow(t *testing.T, c *chrome, s *server, imageID string, screenshots bool) {
	c.open("/ui/images")
	c.click("#new-instance-" + imageID)
	if loc := c.location(); loc != c.base+"/ui/instances" {
		t.Fatalf("after New instance: %s, want the instances page", loc)
	}
	c.mark()
	first, _ := try[string](c, `document.querySelector("[data-operation]")?.textContent.trim() ?? "no operation shown"`)
	c.waitFor("the new instance to run", `(() => { const d = document.querySelector('[data-operation="done"]');
		return !!d && document.querySelector("#instance-" + d.dataset.instance)?.dataset.status === "running" })()`)
	if c.unmarked() {
		t.Fatal("the instances page was reloaded to show the instance running")
	}
	id := c.attr(`[data-operation="done"]`, "data-instance")
	t.Logf("instance %s: the instances page first said %q", id, first)
	// The disk it wrote is measured in the background: a later view
	// shows it.
	c.waitFor("the disk written to be measured", fmt.Sprintf(`(async () => {
		const html = await (await fetch("/ui/instances")).text();
		const row = new DOMParser().parseFromString(html, "text/html").querySelector("#instance-%s .written data");
		return !!row && Number(row.value) > 0 })()`, id))
	if screenshots {
		c.open("/ui/instances")
		c.shoot("instances")
	}

	c.click(fmt.Sprintf(`a[href="/ui/instances/%s"]`, id))
	if st := c.text("#instance-status"); st != "running" {
		t.Fatalf("instance page status %q", st)
	}
	for _, sel := range []string{"#psql", "#database-url", "#env"} {
		if v := run(c, chromedp.Value(chromedp.CSS(sel))); v == "" {
			t.Fatalf("%s is empty", sel)
		}
	}
	if env := run(c, chromedp.Value(chromedp.CSS("#env"))); env != "eval $(sindri env "+id+")" {
		t.Fatalf("env line %q", env)
	}
	c.do(chromedp.Click(chromedp.CSS("#copy-database-url")))
	c.waitFor("the copy button to say Copied", `document.querySelector("#copy-database-url").dataset.copied === "1"`)
	url := eval[string](c, "navigator.clipboard.readText()")
	if want := run(c, chromedp.Value(chromedp.CSS("#database-url"))); url != want || !strings.HasPrefix(url, "postgres://") {
		t.Fatalf("the clipboard holds %q, the page shows %q", url, want)
	}
	if n, err := query(url, "select count(*)::text from people"); err != nil || n != "2" {
		t.Fatalf("connecting with the copied DATABASE_URL: %q, %v", n, err)
	}
	if err := execSQL(url, "create table written_here (x int)"); err != nil {
		t.Fatalf("writing into the instance: %v", err)
	}

	// A form on another origin (another port of this host: same site, so
	// the session cookie goes along) posting the destroy changes nothing.
	evil := evilSite(t, c.base+"/ui/instances/"+id+"/destroy")
	c.do(chromedp.Navigate(evil))
	c.waitFor("the forged form's answer", `document.readyState === "complete" && location.href.startsWith(`+strconv.Quote(c.base)+`)`)
	if txt := c.page(); !strings.Contains(txt, "nothing was changed") {
		t.Fatalf("the forged destroy's answer: %s", txt)
	}
	if status, body := s.call(t, "GET", "/instances/"+id, s.secret, nil); status != 200 {
		t.Fatalf("after the forged form, instance %s: %d %s", id, status, body)
	}

	c.open("/ui/instances/" + id)
	c.click("#protect")
	if txt := c.text("#expires"); txt != "never: protected" {
		t.Fatalf("after Protect the page says expires %q", txt)
	}
	_, body := s.call(t, "GET", "/instances/"+id, s.secret, nil)
	if decode(t, body).one(t).Attributes["protected"] != true {
		t.Fatalf("after Protect the API says %s", body)
	}
	c.click("#unprotect")
	_, body = s.call(t, "GET", "/instances/"+id, s.secret, nil)
	if decode(t, body).one(t).Attributes["protected"] != false {
		t.Fatalf("after Unprotect the API says %s", body)
	}

	c.click("#reset")
	if !strings.Contains(c.page(), "Every change made in it since it was created is thrown away") {
		t.Fatalf("reset asks no confirmation: %s", c.page())
	}
	c.click("#confirm")
	if !strings.Contains(c.page(), "Instance "+id+" was reset") {
		t.Fatalf("after the reset: %s", c.page())
	}
	if _, err := query(url, "select count(*)::text from written_here"); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("after the reset the table written is still there (or the URL changed): %v", err)
	}
	if screenshots {
		c.shoot("instance")
		// A backup of it, written while the page watches, downloaded and
		// deleted.
		c.click("#backup")
		c.open("/ui/backups")
		c.mark()
		c.waitFor("the backup to be written", `!!document.querySelector('#backups tr[data-status="done"]')`)
		if c.unmarked() {
			t.Fatal("the backups page was reloaded to show the backup done")
		}
		c.shoot("backups")
		link := c.attr(`#backups tr[data-status="done"] a[download]`, "href")
		if got := eval[string](c, fmt.Sprintf(`fetch(%q).then(r => r.status + " " + r.headers.get("content-type"))`, link)); got != "200 application/zstd" {
			t.Fatalf("download %s: %s", link, got)
		}
		c.click(`#backups tr[data-status="done"] a.danger-link`)
		c.shoot("confirm")
		c.click("#confirm")
		if !strings.Contains(c.page(), "was deleted") {
			t.Fatalf("after deleting the backup: %s", c.page())
		}
		c.open("/ui/instances/" + id)
	}

	c.click("#destroy")
	if !strings.Contains(c.page(), "This cannot be undone") {
		t.Fatalf("destroy asks no confirmation: %s", c.page())
	}
	if status, _ := s.call(t, "GET", "/instances/"+id, s.secret, nil); status != 200 {
		t.Fatal("the confirmation page destroyed the instance already")
	}
	c.press("#confirm", kb.Enter) // the keyboard confirms as well as the mouse
	if !strings.Contains(c.page(), "Instance "+id+" was destroyed") {
		t.Fatalf("after the destroy: %s", c.page())
	}
	if status, body := s.call(t, "GET", "/instances/"+id, s.secret, nil); status != 404 {
		t.Fatalf("after the destroy, the API has instance %s: %d %s", id, status, body)
	}
}

// nowhere checks that another user's instance shows nowhere in c's
// console, and that c cannot act on it.
func nowhere(t *testing.T, c *chrome, s *server, id, ownerToken string) {
	c.open("/ui/instances")
	if strings.Contains(eval[string](c, "document.documentElement.outerHTML"), "instance-"+id+`"`) {
		t.Fatalf("another user's instance %s is on the instances page", id)
	}
	c.open("/ui/instances/" + id)
	if !strings.Contains(c.page(), "there is no instance "+id) {
		t.Fatalf("another user's instance page: %s", c.page())
	}
	c.open("/ui/")
	for _, action := range []string{"destroy", "reset", "protection"} {
		if status := c.postFromPage("/ui/instances/" + id + "/" + action); status != 404 {
			t.Fatalf("POST %s of another user's instance with a CSRF token: %d, want 404", action, status)
		}
	}
	_, body := s.call(t, "GET", "/instances/"+id, ownerToken, nil)
	if attrs := decode(t, body).one(t).Attributes; attrs["status"] != "running" || attrs["protected"] != false {
		t.Fatalf("another user touched instance %s: %v", id, attrs)
	}
}

// evilSite serves, on another port, a page whose form posts to target by
// itself, as a malicious page would; it returns the page's URL.
func evilSite(t *testing.T, target string) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprintf(w, `<!doctype html><form id="f" method="post" action="%s"><input name="protected" value="true"></form>
<script>document.getElementById("f").submit()</script>`, target)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "http://" + ln.Addr().String() + "/"
}

func execSQL(connString, sql string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, connString)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, sql)
	return err
}
