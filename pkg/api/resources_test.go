package api

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sindri-db/sindri/pkg/auth"
	"github.com/sindri-db/sindri/pkg/engine"
	"github.com/sindri-db/sindri/pkg/store"
)

func TestImageStatusStaysInTheContract(t *testing.T) {
	for in, want := range map[store.ImageStatus]string{
		store.ImagePending: "pending", store.ImageFinalising: "finalising", store.ImageReady: "ready",
		store.ImageFailed: "failed", store.ImageDestroying: "failed",
	} {
		got := imageResource(store.Image{ID: 1, Status: in, Error: ""})
		if got.Status != want || got.Ready != (in == store.ImageReady) {
			t.Errorf("a %s image shows %q (ready %v), want %q", in, got.Status, got.Ready, want)
		}
		if in == store.ImageDestroying && got.Error == "" {
			t.Errorf("a destroying image shows failed without saying why")
		}
	}
}

func TestContractStatus(t *testing.T) {
	for in, want := range map[store.InstanceStatus]string{
		store.InstanceCreating:   "creating",
		store.InstanceRunning:    "running",
		store.InstanceStopped:    "stopped",
		store.InstanceFailed:     "failed",
		store.InstanceResetting:  "creating",
		store.InstanceDestroying: "stopped",
	} {
		if got := contractStatus(in); got != want {
			t.Errorf("%s: %q, want %q", in, got, want)
		}
		h := &Handlers{PublicHostname: "localhost"}
		if got := h.instanceResource(store.Instance{ID: 1, Status: in}, false).Status; got != want {
			t.Errorf("instance resource of a %s instance: %q, want %q", in, got, want)
		}
	}
}

// The classes the engine gives the store's, the storage's and Postgres's
// errors (engine.classify; its test shows which error gets which) render
// as the API always rendered those errors.
func TestEngineClassesOfLowerErrors(t *testing.T) {
	for _, c := range []struct {
		err    error
		status int
		code   string
	}{
		// The metadata store refused a value (a check constraint, a NUL in
		// text) or a duplicate: the request's fault, not the server's.
		{fmt.Errorf("store: create image: %w: %w", engine.ErrInvalid, errors.New("SQLSTATE 22021")), 400, CodeBadRequest},
		{fmt.Errorf("store: create token: %w: %w", engine.ErrConflict, errors.New("SQLSTATE 23505")), 409, CodeConflict},
		// UploadImage: our write failed for want of space, a 503.
		{fmt.Errorf("image 3: writing the upload after 10 bytes: %w: %w", engine.ErrDiskFull, &os.PathError{Op: "write", Path: "/x", Err: syscall.ENOSPC}), 503, CodeNoDiskSpace},
		// UploadImage: the client went away, a 400.
		{fmt.Errorf("%w after 10 bytes: %w", engine.ErrUploadInterrupted, io.ErrUnexpectedEOF), 400, CodeBadRequest},
		{fmt.Errorf("image 3: %w", engine.ErrPGVersionMissing), 422, "pg_version_not_installed"},
		{fmt.Errorf("the image has clones: %w", engine.ErrImageHasInstances), 422, CodeImageHasInstances},
	} {
		e, _ := AsError(c.err, "rid")
		if e.Status != c.status || e.Code != c.code || e.Title == "" {
			t.Errorf("%v: %d %s %q, want %d %s", c.err, e.Status, e.Code, e.Title, c.status, c.code)
		}
	}
}

// A limit's refusal shows its message, which names the limit and the
// figure, as the detail: a 429 as any 4xx, and a 503 for the disk reserve
// too, unlike other 5xx.
func TestLimitRefusalsShowTheirMessage(t *testing.T) {
	quota := &engine.LimitError{Key: "limits.instances_per_user", Used: 20, Limit: 20,
		Msg: "you have 20 instances, the limit (limits.instances_per_user) is 20: destroy one first"}
	disk := &engine.LimitError{Key: "limits.disk_reserve", Used: 1 << 20, Limit: 1 << 30, Disk: true,
		Msg: "a new instance refused: 1.0 MiB (1048576 bytes) of 20 GiB is free, under the disk reserve (limits.disk_reserve = 5%, 1.0 GiB)"}
	for _, c := range []struct {
		err    error
		status int
		code   string
		detail string
	}{
		{quota, 429, CodeQuotaExceeded, quota.Msg},
		{disk, 503, CodeNoDiskSpace, disk.Msg},
		{fmt.Errorf("image 3: writing the upload after 10 bytes: %w", disk), 503, CodeNoDiskSpace, "image 3: writing the upload after 10 bytes: " + disk.Msg},
	} {
		e, internal := AsError(c.err, "rid")
		if e.Status != c.status || e.Code != c.code || e.Detail != c.detail || internal {
			t.Errorf("%v: %d %s %q (internal %v), want %d %s %q", c.err, e.Status, e.Code, e.Detail, internal, c.status, c.code, c.detail)
		}
	}
	// Owners the engine exempts as the upload user are the API's.
	if engine.UploadOwner != auth.UploadOwner {
		t.Fatalf("engine.UploadOwner %q, auth.UploadOwner %q", engine.UploadOwner, auth.UploadOwner)
	}
}

func TestStatusLimits(t *testing.T) {
	yours := int64(2)
	st := engine.Status{FreeBytes: 700, DiskReserveBytes: 500, Limits: []engine.LimitUse{
		{Name: "instances_per_user", Limit: 20, Used: 7, Yours: &yours},
		{Name: "running_backups", Limit: 4, Used: 1},
	}}
	got := limitUses(st)
	if l := got["instances_per_user"]; l.Limit != 20 || *l.Used != 7 || *l.Yours != 2 || l.Free != nil {
		t.Errorf("instances_per_user %+v", l)
	}
	if l := got["running_backups"]; l.Limit != 4 || *l.Used != 1 || l.Yours != nil {
		t.Errorf("running_backups %+v", l)
	}
	if l := got["disk_reserve"]; l.Limit != 500 || *l.Free != 700 || l.Used != nil {
		t.Errorf("disk_reserve %+v", l)
	}
}

func TestDecodeRefusesNUL(t *testing.T) {
	type attrs struct {
		Name   string         `json:"name"`
		Script string         `json:"anonymisation_script"`
		Extra  map[string]any `json:"extra"`
	}
	for _, c := range []struct {
		body, where string // where "" means accepted
	}{
		{`{"data":{"type":"images","attributes":{"name":"a\u0000b"}}}`, `attribute "name"`},
		{`{"data":{"type":"images","attributes":{"name":"ok","anonymisation_script":"\u0000"}}}`, `attribute "anonymisation_script"`},
		{`{"data":{"type":"images","attributes":{"extra":{"list":["x","\u0000"]}}}}`, `attribute "extra.list[1]"`},
		{`{"data":{"type":"images","attributes":{"extra":{"k\u0000":1}}}}`, `attribute "extra.k\x00"`},
		{`{"data":{"type":"images","attributes":{"name":"a\\u0000b"}}}`, ""}, // a backslash, then u0000
		{`{"data":{"type":"images","attributes":{"name":"plain"}}}`, ""},
	} {
		w, r := jsonRequest("application/json", c.body)
		var a attrs
		_, err := DecodeResource(w, r, "images", &a)
		if c.where == "" {
			if err != nil {
				t.Errorf("%s: %v", c.body, err)
			}
			continue
		}
		e := apiErr(t, err, 400, CodeBadRequest)
		if !strings.Contains(e.Detail, c.where) || !strings.Contains(e.Detail, "NUL") {
			t.Errorf("%s: detail %q, want it to name %s and NUL", c.body, e.Detail, c.where)
		}
	}

	w, r := jsonRequest("application/json", `{"state":"x\u0000"}`)
	var v struct {
		State string `json:"state"`
	}
	e := apiErr(t, DecodeJSON(w, r, &v), 400, CodeBadRequest)
	if !strings.Contains(e.Detail, `field "state"`) || !strings.Contains(e.Detail, "NUL") {
		t.Errorf("DecodeJSON: detail %q", e.Detail)
	}
}

func TestDecodeRefusesTimesBeyondRFC3339(t *testing.T) {
	type attrs struct {
		BackedUpAt *time.Time `json:"backed_up_at"`
		ExpiresAt  time.Time  `json:"expires_at"`
	}
	for body, want := range map[string]string{
		`{"backed_up_at":"9999-12-31T23:59:59-23:59"}`: `"backed_up_at"`,
		`{"expires_at":"0000-01-01T00:00:00+01:00"}`:   `"expires_at"`,
		`{"backed_up_at":"9999-12-31T23:59:59Z"}`:      "",
		`{"backed_up_at":"0000-01-01T00:00:00Z"}`:      "",
		`{"expires_at":"2026-01-01T00:00:00+14:00"}`:   "",
	} {
		w, r := jsonRequest("application/json", `{"data":{"type":"instances","attributes":`+body+`}}`)
		var a attrs
		_, err := DecodeResource(w, r, "instances", &a)
		if want == "" {
			if err != nil {
				t.Errorf("%s: %v", body, err)
			}
			continue
		}
		if e := apiErr(t, err, 400, CodeBadRequest); !strings.Contains(e.Detail, want) {
			t.Errorf("%s: detail %q does not name %s", body, e.Detail, want)
		}
	}
}

func TestStatusCountsUseTheContractsWords(t *testing.T) {
	got := contractCounts(map[string]int{"destroying": 2, "stopped": 1, "resetting": 1, "running": 3},
		func(s string) string { return contractStatus(store.InstanceStatus(s)) })
	want := map[string]int{"stopped": 3, "creating": 1, "running": 3}
	if len(got) != len(want) {
		t.Fatalf("counts %v, want %v", got, want)
	}
	for k, n := range want {
		if got[k] != n {
			t.Fatalf("counts %v, want %v", got, want)
		}
	}
}
