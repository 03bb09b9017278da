package spec

import (
	"strconv"
	"testing"
)

// A branch through the real sindrid and the CLI: write into an instance,
// branch it, clone the branch and see the write; another user cannot see
// the branch, nor clone it.
func TestBranchesEndToEnd(t *testing.T) {
	s := startServer(t, "")
	imageID := s.readyImage(t, "")
	ada := newCLIUser(t, "http://"+s.http, s.token(t, "ada"))
	bob := newCLIUser(t, "http://"+s.http, s.token(t, "bob"))

	var inst cliInstance
	ada.okJSON(&inst, "instances", "create", imageID)
	if _, err := query(inst.DatabaseURL, "insert into people values (10, 'written in the instance') returning 'ok'"); err != nil {
		t.Fatal(err)
	}
	var branch struct {
		cliImage
		Owner      string `json:"owner"`
		InstanceID int64  `json:"instance_id"`
	}
	ada.okJSON(&branch, "images", "create", "--from-instance", strconv.FormatInt(inst.ID, 10), "--name", "mine", "--wait")
	if branch.Status != "ready" || branch.Owner != "token:ada" || branch.InstanceID != inst.ID || branch.Name != "mine" {
		t.Fatalf("images create --from-instance --wait: %+v", branch)
	}
	bid := strconv.FormatInt(branch.ID, 10)
	var clone cliInstance
	ada.okJSON(&clone, "instances", "create", bid)
	if got, err := query(clone.DatabaseURL, "select email from people where id = 10"); err != nil || got != "written in the instance" {
		t.Fatalf("the clone of the branch: %q, %v", got, err)
	}
	// The instance itself runs on.
	if got, err := query(inst.DatabaseURL, "select count(*)::text from people where id = 10"); err != nil || got != "1" {
		t.Fatalf("the instance after its branch: %q, %v", got, err)
	}

	var seen []cliImage
	bob.okJSON(&seen, "images", "list")
	for _, img := range seen {
		if img.ID == branch.ID {
			t.Fatalf("bob lists ada's branch: %+v", seen)
		}
	}
	bob.fails(1, []string{"no image " + bid}, "images", "get", bid)
	bob.fails(1, []string{"no image " + bid}, "instances", "create", bid)
	bob.fails(1, []string{"no instance"}, "images", "create", "--from-instance", strconv.FormatInt(inst.ID, 10))
	admin := newCLIUser(t, "http://"+s.http, s.secret)
	admin.ok("images", "get", bid)
	ada.fails(2, []string{"--from-instance takes no --anonymisation-script"}, "images", "create", "--from-instance", "1", "--anonymisation-script", "/dev/null")
}
