package client

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/sindri-db/sindri/pkg/api/resource"
)

// Backup is a backups resource (resource.Backup): an archive of an
// instance or of an image, running, done or failed.
type Backup = resource.Backup

// The statuses of a backup.
const (
	BackupRunning = resource.BackupRunning
	BackupDone    = resource.BackupDone
	BackupFailed  = resource.BackupFailed
)

// BackupSource names what CreateBackup backs up: exactly one of an
// instance (of the caller's) and a ready image.
type BackupSource struct {
	InstanceID int64
	ImageID    int64
}

// ErrDigestMismatch is the error of a download whose bytes do not have
// the SHA-256 the server announced in Repr-Digest.
var ErrDigestMismatch = errors.New("the downloaded bytes do not match the server's SHA-256")

// ListBackups returns the caller's backups (all of them for the upload
// user), newest first.
func (c *Client) ListBackups(ctx context.Context) ([]Backup, error) {
	var out []Backup
	if err := c.list(ctx, "/backups", &out); err != nil {
		return nil, err
	}
	return out, nil
}

// GetBackup returns backup id.
func (c *Client) GetBackup(ctx context.Context, id int64) (*Backup, error) {
	return c.backup(ctx, http.MethodGet, fmt.Sprintf("/backups/%d", id), nil)
}

// CreateBackup starts a backup of src.InstanceID or src.ImageID (exactly
// one must be set; the server refuses both and neither). It returns once
// the server has taken its snapshot, with the backup running: changes
// made after the call are not in it. Poll GetBackup until the status is
// done or failed.
func (c *Client) CreateBackup(ctx context.Context, src BackupSource) (*Backup, error) {
	attrs := map[string]any{}
	if src.InstanceID != 0 {
		attrs["instance_id"] = strconv.FormatInt(src.InstanceID, 10)
	}
	if src.ImageID != 0 {
		attrs["image_id"] = strconv.FormatInt(src.ImageID, 10)
	}
	return c.backup(ctx, http.MethodPost, "/backups", document("backups", "", attrs))
}

// DeleteBackup deletes backup id (a running one is stopped first); what
// it was taken of, and images restored from it, stay.
func (c *Client) DeleteBackup(ctx context.Context, id int64) error {
	return c.noContent(ctx, http.MethodDelete, fmt.Sprintf("/backups/%d", id))
}

// DownloadBackup streams finished backup id's archive (a tar.zst) into w
// and returns the number of bytes written. It hashes the bytes as they
// go by and checks them against the SHA-256 in the answer's Repr-Digest
// header (RFC 9530): an answer without one, a short body, or a mismatch
// (ErrDigestMismatch) is an error once the bytes are written, so a
// caller that writes to a file should discard the file on any error.
func (c *Client) DownloadBackup(ctx context.Context, id int64, w io.Writer) (int64, error) {
	req, err := c.request(ctx, http.MethodGet, fmt.Sprintf("/backups/%d/download", id), nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Accept", "application/zstd, application/vnd.api+json")
	req.Header.Set("Want-Repr-Digest", "sha-256=10")
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, &ConnectionError{URL: c.base.String(), Err: err}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if err != nil {
			return 0, &ConnectionError{URL: c.base.String(), Err: err}
		}
		if resp.StatusCode >= 200 && resp.StatusCode <= 299 {
			return 0, fmt.Errorf("GET %s: HTTP %d, want 200", req.URL.Path, resp.StatusCode)
		}
		return 0, errorFrom(resp.StatusCode, body)
	}
	want, err := reprDigestSHA256(resp.Header.Values("Repr-Digest"))
	if err != nil {
		return 0, fmt.Errorf("GET %s: %w", req.URL.Path, err)
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(markWrites{w}, h), resp.Body)
	if err != nil {
		if rerr := ctx.Err(); rerr != nil {
			return n, rerr
		}
		var werr writeError
		if errors.As(err, &werr) {
			return n, werr.error
		}
		return n, &ConnectionError{URL: c.base.String(), Err: fmt.Errorf("after %d bytes: %w", n, err)}
	}
	if got := h.Sum(nil); !bytes.Equal(got, want) {
		return n, fmt.Errorf("backup %d: %w: got %x, want %x", id, ErrDigestMismatch, got, want)
	}
	return n, nil
}

// markWrites wraps the errors of the caller's writer in writeError, as
// io.Copy does not say which side failed.
type markWrites struct{ w io.Writer }

func (m markWrites) Write(p []byte) (int, error) {
	n, err := m.w.Write(p)
	if err != nil {
		err = writeError{err}
	}
	return n, err
}

type writeError struct{ error }

func (e writeError) Unwrap() error { return e.error }

// reprDigestSHA256 reads the sha-256 member of Repr-Digest, a structured
// field dictionary such as `sha-256=:BASE64:, sha-512=:BASE64:`.
func reprDigestSHA256(values []string) ([]byte, error) {
	if len(values) == 0 {
		return nil, errors.New("the server sent no Repr-Digest to check the download against")
	}
	for _, member := range strings.Split(strings.Join(values, ","), ",") {
		key, value, ok := strings.Cut(strings.TrimSpace(member), "=")
		if !ok || strings.ToLower(strings.TrimSpace(key)) != "sha-256" {
			continue
		}
		value, _, _ = strings.Cut(strings.TrimSpace(value), ";") // parameters
		inner, ok := strings.CutPrefix(value, ":")
		if inner, ok2 := strings.CutSuffix(inner, ":"); ok && ok2 {
			sum, err := base64.StdEncoding.DecodeString(inner)
			if err == nil && len(sum) == sha256.Size {
				return sum, nil
			}
		}
		return nil, fmt.Errorf("Repr-Digest: sha-256 value %q is not :BASE64: of 32 bytes", value)
	}
	return nil, fmt.Errorf("Repr-Digest %q has no sha-256", strings.Join(values, ", "))
}

func (c *Client) backup(ctx context.Context, method, path string, body any) (*Backup, error) {
	req, err := c.request(ctx, method, path, body)
	if err != nil {
		return nil, err
	}
	var b Backup
	if err := c.one(req, &b); err != nil {
		return nil, err
	}
	return &b, nil
}
