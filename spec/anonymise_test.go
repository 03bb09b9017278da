package spec

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestImagesSayWhetherAnonymisedAndHideFailures: every user sees whether
// an image was anonymised, in GET /images and GET /images/{id}; only the
// upload user sees why a finalise failed (an anonymisation script's error
// can quote the data), every other user that it failed.
func TestImagesSayWhetherAnonymisedAndHideFailures(t *testing.T) {
	s := startServer(t, "")
	ada := s.token(t, "ada")
	anonymised := s.readyImage(t, "update people set email = 'person' || id || '@example.com';")
	plain := s.readyImage(t, "")

	// A script whose error quotes a row.
	status, body := s.call(t, "POST", "/images", s.secret, resourceBody("images", map[string]any{
		"backed_up_at":         "2026-11-01T12:00:00Z",
		"anonymisation_script": "do $$ begin raise exception 'cannot anonymise %', (select email from people where id = 1); end $$;"}))
	if status != 201 {
		t.Fatalf("POST /images: %d %s", status, body)
	}
	failed := decode(t, body).one(t).ID
	if status, body := s.call(t, "PUT", "/images/"+failed+"/upload", s.secret, pgTarball(t), "Content-Type", "application/octet-stream"); status != 200 {
		t.Fatalf("upload: %d %s", status, body)
	}
	status, body = s.call(t, "POST", "/images/"+failed+"/done", s.secret, nil)
	expectErrorDetail(t, "done with a failing script", status, body, 422, "image_finalise_failed", "cannot anonymise a@x")

	images := func(token string) map[string]map[string]any {
		t.Helper()
		status, body := s.call(t, "GET", "/images", token, nil)
		if status != 200 {
			t.Fatalf("GET /images: %d %s", status, body)
		}
		var list []resource
		if err := json.Unmarshal(decode(t, body).Data, &list); err != nil {
			t.Fatal(err)
		}
		byID := map[string]map[string]any{}
		for _, r := range list {
			byID[r.ID] = r.Attributes
		}
		for _, id := range []string{anonymised, plain, failed} {
			status, body := s.call(t, "GET", "/images/"+id, token, nil)
			if status != 200 {
				t.Fatalf("GET /images/%s: %d %s", id, status, body)
			}
			one := decode(t, body).one(t).Attributes
			if one["anonymised"] != byID[id]["anonymised"] || one["error"] != byID[id]["error"] {
				t.Errorf("image %s: GET /images/%s shows anonymised %v, error %v; the list %v, %v", id, id,
					one["anonymised"], one["error"], byID[id]["anonymised"], byID[id]["error"])
			}
		}
		return byID
	}
	for who, token := range map[string]string{"the upload user": s.secret, "ada": ada} {
		got := images(token)
		if got[anonymised]["anonymised"] != true || got[plain]["anonymised"] != false || got[failed]["anonymised"] != false {
			t.Errorf("%s sees anonymised: with a script %v, without %v, failed %v; want true, false, false", who,
				got[anonymised]["anonymised"], got[plain]["anonymised"], got[failed]["anonymised"])
		}
		if got[failed]["status"] != "failed" {
			t.Errorf("%s sees the failed image %s", who, got[failed]["status"])
		}
	}
	if errText, _ := images(s.secret)[failed]["error"].(string); !strings.Contains(errText, "cannot anonymise a@x") {
		t.Errorf("the upload user sees the failed image's error %q; want the script's whole error", errText)
	}
	errText, _ := images(ada)[failed]["error"].(string)
	if errText == "" || strings.Contains(errText, "a@x") || strings.Contains(errText, "anonymise") {
		t.Errorf("ada sees the failed image's error %q; want a generic reason, without the script's text", errText)
	}
}
