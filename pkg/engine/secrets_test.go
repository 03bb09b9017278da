package engine_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/sindri-db/sindri/pkg/engine"
	"github.com/sindri-db/sindri/pkg/store"
)

// A pulled image's source_url is sealed while the pull is pending and
// gone once the image is ready; its form without the password stays.
func TestPullKeepsNoSourcePasswordOnceDone(t *testing.T) {
	w := newWorld(t, 5)
	e := engine.New(w.options())
	src := replicationSource(t) // trusts the socket: the password is not checked, only carried
	const password = "Pull-S3cret"
	url := fmt.Sprintf("postgres://postgres:%s@/postgres?host=%s&port=%d", password, src.SocketDir, src.Port)
	img, err := e.CreateImage(ctx, engine.ImageRequest{BackedUpAt: time.Now(), SourceURL: url})
	if err != nil {
		t.Fatal(err)
	}
	row := func() string {
		t.Helper()
		return mustSQL(t, w.dbURL, fmt.Sprintf("select concat_ws(' | ', source_url, source_url_redacted) from images where id = %d", img.ID))
	}
	if r := row(); strings.Contains(r, password) || !strings.HasPrefix(r, "sindri:v1:") {
		t.Fatalf("pending image's row: %q", r)
	}
	if got, err := e.FinaliseImage(ctx, img.ID); err != nil || got.Status != store.ImageReady {
		t.Fatalf("finalise: %+v, %v", got, err)
	}
	redacted := fmt.Sprintf("postgres://postgres@/postgres?host=%s&port=%d", src.SocketDir, src.Port)
	if r := row(); r != redacted {
		t.Fatalf("ready image's row: %q, want only %q", r, redacted)
	}
}
