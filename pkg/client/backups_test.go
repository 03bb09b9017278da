package client

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
)

func TestBackups(t *testing.T) {
	var body string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		body = string(b)
		switch {
		case r.URL.Path == "/backups" && r.Method == http.MethodGet:
			io.WriteString(w, `{"data":[{"type":"backups","id":"3","attributes":{"image_id":2,"status":"running","size_bytes":0,
				"created_at":"2026-11-01T12:00:00Z"}},{"type":"backups","id":"1","attributes":{"instance_id":4,"status":"done",
				"size_bytes":1234,"sha256":"ab12","created_at":"2026-11-01T11:00:00Z"}}]}`)
		case r.URL.Path == "/backups" && r.Method == http.MethodPost:
			w.WriteHeader(http.StatusAccepted)
			io.WriteString(w, `{"data":{"type":"backups","id":"5","attributes":{"instance_id":4,"status":"running"}}}`)
		case r.URL.Path == "/images" && r.Method == http.MethodPost:
			w.WriteHeader(http.StatusCreated)
			io.WriteString(w, `{"data":{"type":"images","id":"6","attributes":{"status":"pending","backup_id":5}}}`)
		case r.URL.Path == "/backups/5" && r.Method == http.MethodDelete:
			w.WriteHeader(http.StatusNoContent)
		default:
			w.WriteHeader(http.StatusNotFound)
			io.WriteString(w, `{"errors":[{"status":"404","code":"resource_not_found","title":"Resource not found","detail":"there is no backup 9"}]}`)
		}
	}))
	defer srv.Close()
	c, _ := New(srv.URL, "tok")
	ctx := context.Background()

	list, err := c.ListBackups(ctx)
	if err != nil || len(list) != 2 || list[0].ID != 3 || list[0].ImageID != 2 || list[0].Status != BackupRunning ||
		list[1].InstanceID != 4 || list[1].SizeBytes != 1234 || list[1].SHA256 != "ab12" || list[1].CreatedAt.Hour() != 11 {
		t.Errorf("ListBackups: %+v %v", list, err)
	}
	b, err := c.CreateBackup(ctx, BackupSource{InstanceID: 4})
	if err != nil || b.ID != 5 || b.Status != BackupRunning {
		t.Errorf("CreateBackup: %+v %v", b, err)
	}
	if body != `{"data":{"attributes":{"instance_id":"4"},"type":"backups"}}` {
		t.Errorf("CreateBackup body: %s", body)
	}
	c.CreateBackup(ctx, BackupSource{ImageID: 2})
	if body != `{"data":{"attributes":{"image_id":"2"},"type":"backups"}}` {
		t.Errorf("CreateBackup of an image, body: %s", body)
	}
	img, err := c.CreateImage(ctx, list[0].CreatedAt, "", "", FromBackup(5))
	if err != nil || img.BackupID != 5 {
		t.Errorf("CreateImage(FromBackup): %+v %v", img, err)
	}
	if body != `{"data":{"attributes":{"backed_up_at":"2026-11-01T12:00:00Z","backup_id":"5"},"type":"images"}}` {
		t.Errorf("CreateImage(FromBackup) body: %s", body)
	}
	if err := c.DeleteBackup(ctx, 5); err != nil {
		t.Errorf("DeleteBackup: %v", err)
	}
	_, err = c.GetBackup(ctx, 9)
	var apiErr *APIError
	if !errors.As(err, &apiErr) || err.Error() != "Resource not found: there is no backup 9" {
		t.Errorf("GetBackup of an unknown id: %v", err)
	}
}

func TestDownloadBackup(t *testing.T) {
	archive := bytes.Repeat([]byte("sindri backup "), 100000) // 1.4 MB: several reads
	sum := sha256.Sum256(archive)
	good := "sha-256=:" + base64.StdEncoding.EncodeToString(sum[:]) + ":"
	wrong := sha256.Sum256([]byte("something else"))
	var digest string
	var short bool
	var wantDigest string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		wantDigest = r.Header.Get("Want-Repr-Digest")
		if r.URL.Path == "/backups/7/download" {
			w.WriteHeader(http.StatusConflict)
			io.WriteString(w, `{"errors":[{"status":"409","code":"backup_not_done","title":"Backup not done","detail":"backup 7 is running"}]}`)
			return
		}
		w.Header().Set("Content-Type", "application/zstd")
		if digest != "" {
			w.Header().Set("Repr-Digest", digest)
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(archive)))
		if short {
			w.Write(archive[:len(archive)/2])
			panic(http.ErrAbortHandler) // the connection drops
		}
		w.Write(archive)
	}))
	defer srv.Close()
	c, _ := New(srv.URL, "tok")
	ctx := context.Background()

	for _, d := range []string{good, "sha-512=:AAAA:, " + good, good + ";x=1"} {
		digest = d
		var out bytes.Buffer
		n, err := c.DownloadBackup(ctx, 1, &out)
		if err != nil || n != int64(len(archive)) || !bytes.Equal(out.Bytes(), archive) {
			t.Errorf("Repr-Digest %q: %d bytes, %v", d, n, err)
		}
	}
	if wantDigest != "sha-256=10" {
		t.Errorf("Want-Repr-Digest %q", wantDigest)
	}

	digest = "sha-256=:" + base64.StdEncoding.EncodeToString(wrong[:]) + ":"
	n, err := c.DownloadBackup(ctx, 1, io.Discard)
	if !errors.Is(err, ErrDigestMismatch) || n != int64(len(archive)) {
		t.Errorf("a wrong digest: %d, %v", n, err)
	}

	for _, d := range []string{"", "sha-512=:AAAA:", "sha-256=:bm90IDMyIGJ5dGVz:", "sha-256=abc"} {
		digest = d
		if _, err := c.DownloadBackup(ctx, 1, io.Discard); err == nil || errors.Is(err, ErrDigestMismatch) {
			t.Errorf("Repr-Digest %q: %v, want an error about the header", d, err)
		}
	}

	digest, short = good, true
	n, err = c.DownloadBackup(ctx, 1, io.Discard)
	var connErr *ConnectionError
	if !errors.As(err, &connErr) || n >= int64(len(archive)) {
		t.Errorf("a body cut short: %d, %v", n, err)
	}
	short = false

	_, err = c.DownloadBackup(ctx, 7, io.Discard)
	var apiErr *APIError
	if !errors.As(err, &apiErr) || apiErr.Code != "backup_not_done" || err.Error() != "Backup not done: backup 7 is running" {
		t.Errorf("a refusal: %v", err)
	}

	boom := errors.New("disk full")
	_, err = c.DownloadBackup(ctx, 1, failingWriter{boom})
	if !errors.Is(err, boom) || errors.As(err, &connErr) || strings.Contains(err.Error(), "cannot reach") {
		t.Errorf("a failing writer: %v", err)
	}
}

type failingWriter struct{ err error }

func (f failingWriter) Write([]byte) (int, error) { return 0, f.err }
