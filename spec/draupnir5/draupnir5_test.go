// Package draupnir5 drives a real sindrid as Draupnir's 5.3.x command-line
// client does, decoding its answers with the google/jsonapi version that
// client pins (v0.0.0-20160922220230-925ebf213646) and its OAuth token type
// (golang.org/x/oauth2 of 2017). It is a module of its own so that these
// old versions stay out of sindri's go.mod.
//
// The spec package's TestDraupnir starts sindrid and runs these
// tests with go test, passing the server in the environment (see
// TestMain); run alone, without it, they fail.
package draupnir5

import (
	"errors"
	"fmt"
	"html"
	"io"
	"math/rand"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/oauth2"
)

// The environment the spec package sets.
var env struct {
	url        string // sindrid's plain HTTP URL
	secret     string // its shared secret (the upload user)
	tarball    string // a tar.gz of a stopped data directory with table people (2 rows)
	hostname   string // its public_hostname
	oauthEmail string // the address its loopback OAuth provider logs in as
	psql       string // the psql binary
}

func TestMain(m *testing.M) {
	missing := []string{}
	for _, v := range []struct {
		name string
		dst  *string
	}{
		{"DRAUPNIR5_URL", &env.url}, {"DRAUPNIR5_SHARED_SECRET", &env.secret}, {"DRAUPNIR5_TARBALL", &env.tarball},
		{"DRAUPNIR5_HOSTNAME", &env.hostname}, {"DRAUPNIR5_OAUTH_EMAIL", &env.oauthEmail}, {"DRAUPNIR5_PSQL", &env.psql},
	} {
		*v.dst = os.Getenv(v.name)
		if *v.dst == "" {
			missing = append(missing, v.name)
		}
	}
	if len(missing) > 0 {
		fmt.Fprintf(os.Stderr, "draupnir5: %s not set: these tests run against the sindrid that the spec package's TestDraupnir starts (go test -run TestDraupnir ./spec, as root)\n",
			strings.Join(missing, ", "))
		os.Exit(2)
	}
	os.Exit(m.Run())
}

const clientVersion = "5.3.6"

func client(token string) Client {
	return NewClient(env.url, oauth2.Token{RefreshToken: token}, clientVersion)
}

// refusedAs checks that err is the client's error for an answer with
// status, that it prints as want ("Title (Detail)"; "" for any non-empty
// title and detail) and returns the decoded object.
func refusedAs(t *testing.T, what string, err error, status int, want string) APIError {
	t.Helper()
	var r *refusal
	if !errors.As(err, &r) {
		t.Fatalf("%s: want the server's refusal, got %v", what, err)
	}
	t.Logf("%s: the client prints %q", what, r.Error())
	if r.status != status || r.obj.Status != strconv.Itoa(status) {
		t.Errorf("%s: status %d (%q in the body), want %d", what, r.status, r.obj.Status, status)
	}
	if r.obj.Title == "" || r.obj.Detail == "" || r.obj.ID == "" || r.obj.Code == "" {
		t.Errorf("%s: incomplete error %+v: a Draupnir user reads %q", what, r.obj, r.Error())
	}
	if want != "" && r.Error() != want {
		t.Errorf("%s: prints %q, want %q", what, r.Error(), want)
	}
	return r.obj
}

// upload streams the tarball into a pending image with sindri's own
// route: Draupnir's clients upload over scp, which is not their API.
func upload(t *testing.T, id int) {
	t.Helper()
	f, err := os.Open(env.tarball)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	req, err := http.NewRequest(http.MethodPut, fmt.Sprintf("%s/images/%d/upload", env.url, id), f)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Draupnir-Version", "5.4.0")
	req.Header.Set("Authorization", "Bearer "+env.secret)
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("upload into image %d: %d", id, resp.StatusCode)
	}
}

// psqlAsEnv runs psql -Atc sql with the environment `draupnir env` prints
// for inst (its setupClientEnvironment): the credentials written to files,
// PGUSER=draupnir, PGSSLMODE=verify-ca.
func psqlAsEnv(t *testing.T, inst Instance, sql string) string {
	t.Helper()
	if inst.Credentials == nil {
		t.Fatal("database credentials are not available") // what the client says
	}
	dir := t.TempDir()
	files := map[string]string{
		"ca.crt": inst.Credentials.CACertificate, "client.crt": inst.Credentials.ClientCertificate, "client.key": inst.Credentials.ClientKey,
	}
	for name, content := range files {
		mode := os.FileMode(0o644)
		if name == "client.key" {
			mode = 0o600
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), mode); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(env.psql, "-Atc", sql)
	cmd.Env = append(os.Environ(),
		"PGHOST="+inst.Hostname, fmt.Sprintf("PGPORT=%d", inst.Port), "PGUSER=draupnir", "PGPASSWORD=", "PGDATABASE=postgres",
		"PGSSLMODE=verify-ca", "PGSSLROOTCERT="+filepath.Join(dir, "ca.crt"),
		"PGSSLCERT="+filepath.Join(dir, "client.crt"), "PGSSLKEY="+filepath.Join(dir, "client.key"), "PGCONNECT_TIMEOUT=10")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("psql with the env of instance %d: %v\n%s", inst.ID, err, out)
	}
	return strings.TrimSpace(string(out))
}

func recent(ts time.Time) bool {
	return time.Since(ts) < time.Hour && time.Since(ts) > -time.Minute
}

// TestDraupnirClient runs every command of the 5.3.x client in a user's
// order: images create/finalise/list/get, instances create/list/get/
// destroy, env then psql, new, authenticate, and each refusal.
func TestDraupnirClient(t *testing.T) {
	admin := client(env.secret)
	backedUpAt := time.Date(2016, 1, 2, 3, 4, 5, 0, time.UTC)

	t.Logf("POST /instances body: %s", bodyOf(&createInstanceRequest{ImageID: "1"}))
	t.Logf("POST /images body: %s", bodyOf(&createImageRequest{BackedUpAt: backedUpAt, Anon: "x"}))
	t.Logf("POST /access_tokens body: %s", bodyOf(&createAccessTokenRequest{State: "1"}))

	// draupnir images create 2016-01-02T03:04:05Z anon.sql; the upload;
	// draupnir images finalise N.
	var ready Image
	t.Run("images create and finalise", func(t *testing.T) {
		img, err := admin.CreateImage(backedUpAt, []byte("DELETE FROM people WHERE id = 2;"))
		if err != nil {
			t.Fatalf("images create: %v", err)
		}
		if img.ID <= 0 || img.Ready || !img.BackedUpAt.Equal(backedUpAt) || !recent(img.CreatedAt) || !recent(img.UpdatedAt) {
			t.Fatalf("images create: %+v", img)
		}
		upload(t, img.ID)
		ready, err = admin.FinaliseImage(img.ID)
		if err != nil {
			t.Fatalf("images finalise: %v", err)
		}
		if ready.ID != img.ID || !ready.Ready || !ready.BackedUpAt.Equal(backedUpAt) {
			t.Fatalf("images finalise: %+v", ready)
		}
	})
	if ready.ID == 0 {
		t.Fatal("no ready image")
	}
	// A newer image that is not ready: `new` must pass it over.
	pending, err := admin.CreateImage(backedUpAt.Add(time.Hour), nil)
	if err != nil {
		t.Fatalf("images create (pending): %v", err)
	}

	t.Run("images list and get", func(t *testing.T) {
		images, err := admin.ListImages()
		if err != nil {
			t.Fatalf("images list: %v", err)
		}
		found := map[int]Image{}
		for _, img := range images {
			found[img.ID] = img
		}
		if got := found[ready.ID]; !got.Ready || !got.BackedUpAt.Equal(backedUpAt) || !recent(got.CreatedAt) || !recent(got.UpdatedAt) {
			t.Errorf("images list: image %d is %+v", ready.ID, got)
		}
		if got, ok := found[pending.ID]; !ok || got.Ready {
			t.Errorf("images list: image %d is %+v", pending.ID, got)
		}
		got, err := admin.GetImage(strconv.Itoa(ready.ID))
		if err != nil || got.ID != ready.ID || !got.Ready || !got.BackedUpAt.Equal(backedUpAt) || !got.UpdatedAt.Equal(ready.UpdatedAt) {
			t.Errorf("GetImage: %+v %v", got, err)
		}
	})

	// draupnir authenticate: the browser leg and POST /access_tokens with
	// Draupnir's state (a decimal rand.Int31), at the same time.
	var token oauth2.Token
	t.Run("authenticate", func(t *testing.T) {
		state := fmt.Sprintf("%d", rand.Int31())
		browser := make(chan error, 1)
		go func() { browser <- confirmLogin(state) }()
		var err error
		token, err = client("").CreateAccessToken(state)
		if err != nil {
			t.Fatalf("authenticate: %v", err)
		}
		if err := <-browser; err != nil {
			t.Errorf("browser: %v", err)
		}
		if token.RefreshToken == "" || token.AccessToken == "" || token.TokenType != "Bearer" {
			t.Fatalf("token %+v", token)
		}
	})
	if token.RefreshToken == "" {
		t.Fatal("no token")
	}
	user := NewClient(env.url, token, clientVersion)

	// draupnir instances create N, then eval $(draupnir env M) && psql.
	var mine Instance
	t.Run("instances create, get and env", func(t *testing.T) {
		img, err := user.GetImage(strconv.Itoa(ready.ID))
		if err != nil {
			t.Fatalf("instances create: GetImage: %v", err)
		}
		mine, err = user.CreateInstance(img)
		if err != nil {
			t.Fatalf("instances create: %v", err)
		}
		if mine.ID <= 0 || mine.ImageID != ready.ID || mine.Port == 0 || mine.Hostname != env.hostname || !recent(mine.CreatedAt) ||
			mine.Credentials == nil || mine.Credentials.ID != mine.ID ||
			!strings.HasPrefix(mine.Credentials.ClientKey, "-----BEGIN") || !strings.HasPrefix(mine.Credentials.CACertificate, "-----BEGIN CERTIFICATE") {
			t.Fatalf("instances create: %+v", mine)
		}
		got, err := user.GetInstance(strconv.Itoa(mine.ID))
		if err != nil {
			t.Fatalf("env: %v", err)
		}
		if got.ID != mine.ID || got.Port != mine.Port || got.Credentials == nil || *got.Credentials != *mine.Credentials {
			t.Fatalf("env: %+v", got)
		}
		// The anonymisation script ran: one of the two rows is left.
		if out := psqlAsEnv(t, got, "select current_user || ' ' || count(*) from people"); out != "draupnir 1" {
			t.Errorf("psql: %q, want %q", out, "draupnir 1")
		}
	})

	t.Run("instances list", func(t *testing.T) {
		list, err := user.ListInstances()
		if err != nil {
			t.Fatalf("instances list: %v", err)
		}
		if len(list) != 1 || list[0].ID != mine.ID || list[0].Port != mine.Port || list[0].ImageID != ready.ID || !recent(list[0].CreatedAt) {
			t.Errorf("instances list as %s: %+v", env.oauthEmail, list)
		}
	})

	// eval $(draupnir new) && psql, as the upload user.
	var made Instance
	t.Run("new", func(t *testing.T) {
		img, err := admin.GetLatestImage()
		if err != nil || img.ID != ready.ID {
			t.Fatalf("new: GetLatestImage: %+v %v (the newest ready image is %d)", img, err, ready.ID)
		}
		made, err = admin.CreateInstance(img)
		if err != nil {
			t.Fatalf("new: %v", err)
		}
		if out := psqlAsEnv(t, made, "select 1"); out != "1" {
			t.Errorf("psql: %q", out)
		}
	})

	t.Run("refusals", func(t *testing.T) {
		const (
			unauthorized = "Unauthorized (You do not have permission to view this resource)"
			notFound     = "Resource Not Found (The resource you requested could not be found)"
		)
		_, err := client("not-a-token").ListImages()
		refusedAs(t, "a wrong token", err, 401, unauthorized)
		_, err = client("").ListInstances()
		refusedAs(t, "not authenticated", err, 401, unauthorized)
		_, err = client("not-a-token").CreateInstance(ready)
		refusedAs(t, "instances create with a wrong token", err, 401, unauthorized)

		_, err = admin.GetImage("999999")
		refusedAs(t, "an unknown image", err, 404, notFound)
		_, err = admin.GetImage("abc")
		refusedAs(t, "an image id that is no number", err, 404, notFound)
		_, err = user.GetInstance("999999")
		refusedAs(t, "env of an unknown instance", err, 404, notFound)
		_, err = client("not-a-token").GetInstance(strconv.Itoa(mine.ID))
		refusedAs(t, "env with a wrong token", err, 401, unauthorized)
		_, err = user.GetInstance(strconv.Itoa(made.ID))
		refusedAs(t, "env of another user's instance", err, 404, notFound)
		err = user.DestroyInstance(Instance{ID: 999999})
		refusedAs(t, "destroy of an unknown instance", err, 404, notFound)
		err = user.DestroyInstance(made)
		refusedAs(t, "destroy of another user's instance", err, 404, notFound)
		_, err = user.CreateInstance(Image{ID: 999999})
		refusedAs(t, "instances create of an unknown image", err, 404, "Image Not Found (The image you specified could not be found)")
		_, err = user.CreateInstance(Image{ID: 0})
		if obj := refusedAs(t, "instances create of image 0", err, 400, "Bad Request (The image ID provided is not valid)"); obj.Source.Parameter != "image_id" {
			t.Errorf("source %+v", obj.Source)
		}
		_, err = user.CreateInstance(pending)
		if obj := refusedAs(t, "instances create of an image not ready", err, 422, "Image Not Ready (The specified image is not ready to be used)"); obj.ID != "unprocessable_entity" || obj.Source.Parameter != "image_id" {
			t.Errorf("not Draupnir's UnreadyImageError: %+v", obj)
		}
		_, err = admin.FinaliseImage(999999)
		refusedAs(t, "images finalise of an unknown image", err, 404, notFound)
		_, err = user.CreateImage(backedUpAt, nil)
		if obj := refusedAs(t, "images create by a user", err, 403, ""); obj.Code != "forbidden" {
			t.Errorf("%+v", obj)
		}
		err = admin.DestroyImage(ready)
		refusedAs(t, "images destroy of an image with instances", err, 422, "Image Has Instances (Cannot delete an image that has instances)")

		// Draupnir's integration suite's "old client" (0.0.0), an older
		// major, and a client built without its version ("").
		for _, v := range []string{"4.2.0", "0.0.0", ""} {
			_, err := NewClient(env.url, oauth2.Token{RefreshToken: env.secret}, v).ListImages()
			refusedAs(t, "a client of version "+strconv.Quote(v), err, 400,
				fmt.Sprintf("Invalid API Version (Specified API version (%s) does not match server version (5.4.0))", v))
		}
		_, err = NewClient(env.url, oauth2.Token{}, "4.2.0").CreateAccessToken("123")
		refusedAs(t, "authenticate with an old client", err, 400, "")
	})

	// draupnir instances destroy N: GetInstance, then DELETE.
	t.Run("instances destroy", func(t *testing.T) {
		for _, c := range []struct {
			who  Client
			inst Instance
		}{{user, mine}, {admin, made}} {
			inst, err := c.who.GetInstance(strconv.Itoa(c.inst.ID))
			if err != nil {
				t.Fatalf("instances destroy %d: %v", c.inst.ID, err)
			}
			if err := c.who.DestroyInstance(inst); err != nil {
				t.Fatalf("instances destroy %d: %v", inst.ID, err)
			}
			_, err = c.who.GetInstance(strconv.Itoa(inst.ID))
			refusedAs(t, "a destroyed instance", err, 404, "")
		}
		if list, err := user.ListInstances(); err != nil || len(list) != 0 {
			t.Errorf("instances list after destroy: %+v %v", list, err)
		}
	})

	t.Run("images destroy", func(t *testing.T) {
		for _, img := range []Image{pending, ready} {
			if err := admin.DestroyImage(img); err != nil {
				t.Errorf("images destroy %d: %v", img.ID, err)
			}
		}
		_, err := admin.GetImage(strconv.Itoa(ready.ID))
		refusedAs(t, "a destroyed image", err, 404, "")
	})
}

var hiddenField = regexp.MustCompile(`<input type="hidden" name="([a-z]+)" value="([^"]*)">`)

// confirmLogin plays the person at the browser: it opens the login link
// (retrying while sindrid says no command waits yet, as the page asks),
// signs in at the provider, and confirms on sindrid's confirmation page,
// which a Draupnir client's user checks by the address and time it shows.
func confirmLogin(state string) error {
	jar, _ := cookiejar.New(nil)
	browser := &http.Client{Timeout: time.Minute, Jar: jar}
	get := func(u string) (*http.Response, string, error) {
		resp, err := browser.Get(u)
		if err != nil {
			return nil, "", err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		return resp, string(body), err
	}
	deadline := time.Now().Add(30 * time.Second)
	resp, body, err := get(fmt.Sprintf("%s/authenticate?state=%s", env.url, state))
	for err == nil && resp.StatusCode == http.StatusAccepted && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		resp, body, err = get(resp.Request.URL.String())
	}
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, `name="decision" value="confirm"`) {
		return fmt.Errorf("the browser ended on %s with %d, not the confirmation page: %s", resp.Request.URL, resp.StatusCode, body)
	}
	form := url.Values{"decision": {"confirm"}}
	for _, m := range hiddenField.FindAllStringSubmatch(body, -1) {
		form.Set(m[1], html.UnescapeString(m[2]))
	}
	action, _ := resp.Request.URL.Parse("oauth_callback")
	done, err := browser.PostForm(action.String(), form)
	if err != nil {
		return err
	}
	done.Body.Close()
	if done.StatusCode != http.StatusOK {
		return fmt.Errorf("confirming the login: %d", done.StatusCode)
	}
	return nil
}
