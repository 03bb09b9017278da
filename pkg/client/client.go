// Package client is a Go client of the sindri HTTP API (the Draupnir API
// version 5 plus sindri's additions, see /work/shared/api.md).
//
// Every method sends the Draupnir-Version header and the bearer token, and
// reads the answer's JSON:API document into the server's own resource
// types (package resource: Image, Instance, Backup, Status are those),
// with the decoder the server reads its requests with. An error the server
// answered with is an *APIError; an error reaching the server is a
// *ConnectionError.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/sindri-db/sindri/pkg/api/resource"
	"github.com/sindri-db/sindri/pkg/api/wire"
	"github.com/sindri-db/sindri/pkg/version"
)

// APIVersion is the Draupnir-Version this client sends.
const APIVersion = version.API

// Client talks to one sindri server.
type Client struct {
	base      *url.URL
	token     string
	http      *http.Client
	userAgent string
}

// Option configures a Client.
type Option func(*Client)

// WithHTTPClient makes the client use hc (its timeouts, transport, TLS).
func WithHTTPClient(hc *http.Client) Option {
	return func(c *Client) { c.http = hc }
}

// WithUserAgent sets the User-Agent header.
func WithUserAgent(ua string) Option {
	return func(c *Client) { c.userAgent = ua }
}

// New returns a client of the server at baseURL (such as
// "https://sindri.example.com") that authenticates with token.
func New(baseURL, token string, opts ...Option) (*Client, error) {
	u, err := url.Parse(strings.TrimRight(baseURL, "/"))
	if err != nil {
		return nil, fmt.Errorf("server URL %q: %w", baseURL, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("server URL %q: want http://HOST[:PORT] or https://HOST[:PORT]", baseURL)
	}
	c := &Client{base: u, token: token, http: &http.Client{}, userAgent: "sindri/" + version.Version}
	for _, o := range opts {
		o(c)
	}
	return c, nil
}

// BaseURL is the server's URL as given to New.
func (c *Client) BaseURL() string { return c.base.String() }

// APIError is an error document the server answered with.
type APIError struct {
	Status int    // HTTP status
	Code   string // machine-readable code, e.g. "resource_not_found"
	Title  string // short summary
	Detail string // this occurrence
}

func (e *APIError) Error() string {
	switch {
	case e.Title != "" && e.Detail != "":
		return e.Title + ": " + e.Detail
	case e.Title != "":
		return e.Title
	case e.Detail != "":
		return e.Detail
	}
	return fmt.Sprintf("HTTP %d %s", e.Status, http.StatusText(e.Status))
}

// ConnectionError is a failure to reach the server or to read its answer.
type ConnectionError struct {
	URL string // the server's base URL
	Err error
}

func (e *ConnectionError) Error() string {
	return fmt.Sprintf("cannot reach %s: %s", e.URL, causeText(e.Err))
}

func (e *ConnectionError) Unwrap() error { return e.Err }

// causeText is the innermost useful text of a transport error, such as
// "connection refused" or "no such host".
func causeText(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno.Error()
	}
	var dns *net.DNSError
	if errors.As(err, &dns) {
		return dns.Error()
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return "timed out"
	}
	var uerr *url.Error
	if errors.As(err, &uerr) {
		return uerr.Err.Error()
	}
	return err.Error()
}

// The resources, the server's own (package resource): their json tags
// are what `sindri --json` prints.
type (
	Image       = resource.Image
	Instance    = resource.Instance
	Credentials = resource.Credentials
	Status      = resource.Status
	LimitUse    = resource.LimitUse
)

// ListImages returns all images, newest first.
func (c *Client) ListImages(ctx context.Context) ([]Image, error) {
	var out []Image
	if err := c.list(ctx, "/images", &out); err != nil {
		return nil, err
	}
	return out, nil
}

// GetImage returns image id.
func (c *Client) GetImage(ctx context.Context, id int64) (*Image, error) {
	return c.image(ctx, http.MethodGet, fmt.Sprintf("/images/%d", id), nil)
}

// ImageOption sets an optional attribute of CreateImage's request.
type ImageOption func(attrs map[string]any)

// FromBackup makes CreateImage restore finished backup id (attribute
// backup_id; the upload user only): the backup's archive becomes the
// image's upload and the server starts finalising at once, without
// waiting for the request. FinaliseImage then joins that run.
func FromBackup(id int64) ImageOption {
	return func(attrs map[string]any) { attrs["backup_id"] = strconv.FormatInt(id, 10) }
}

// FromInstance makes CreateImage a branch of instance id (attribute
// instance_id; an instance of the caller's): an image of its data as it
// is now, which the server finalises at once; FinaliseImage waits for it.
// Only its owner and the upload user see the branch.
func FromInstance(id int64) ImageOption {
	return func(attrs map[string]any) {
		attrs["instance_id"] = strconv.FormatInt(id, 10)
		delete(attrs, "backed_up_at") // now, on the server's clock
	}
}

// CreateImage creates an image record and its empty upload volume;
// name and anonymisationScript may be empty.
func (c *Client) CreateImage(ctx context.Context, backedUpAt time.Time, name, anonymisationScript string, opts ...ImageOption) (*Image, error) {
	attrs := map[string]any{"backed_up_at": backedUpAt.UTC().Format(time.RFC3339)}
	if name != "" {
		attrs["name"] = name
	}
	if anonymisationScript != "" {
		attrs["anonymisation_script"] = anonymisationScript
	}
	for _, o := range opts {
		o(attrs)
	}
	return c.image(ctx, http.MethodPost, "/images", document("images", "", attrs))
}

// UploadImage streams a tarball of a data directory (tar, tar.gz, tar.zst)
// of size bytes (or -1 if unknown) into image id's upload volume.
func (c *Client) UploadImage(ctx context.Context, id int64, r io.Reader, size int64) (*Image, error) {
	req, err := c.request(ctx, http.MethodPut, fmt.Sprintf("/images/%d/upload", id), io.NopCloser(r))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	if size >= 0 {
		req.ContentLength = size
		if size == 0 {
			req.Body = http.NoBody
		}
	}
	var img Image
	if err := c.one(req, &img); err != nil {
		return nil, err
	}
	return &img, nil
}

// FinaliseImage prepares, anonymises and snapshots image id; it returns
// once the image is ready (or failed, as an *APIError).
func (c *Client) FinaliseImage(ctx context.Context, id int64) (*Image, error) {
	return c.image(ctx, http.MethodPost, fmt.Sprintf("/images/%d/done", id), nil)
}

// DestroyImage destroys image id; with force (the upload user only) its
// instances too.
func (c *Client) DestroyImage(ctx context.Context, id int64, force bool) error {
	path := fmt.Sprintf("/images/%d", id)
	if force {
		path += "?force=true"
	}
	return c.noContent(ctx, http.MethodDelete, path)
}

// ListInstances returns the caller's instances (all of them for the upload
// user), without credentials.
func (c *Client) ListInstances(ctx context.Context) ([]Instance, error) {
	var out []Instance
	if err := c.list(ctx, "/instances", &out); err != nil {
		return nil, err
	}
	return out, nil
}

// GetInstance returns instance id with its credentials.
func (c *Client) GetInstance(ctx context.Context, id int64) (*Instance, error) {
	return c.instance(ctx, http.MethodGet, fmt.Sprintf("/instances/%d", id), nil)
}

// CreateInstance clones image imageID and starts Postgres on it; ttl 0
// means the server's default lifetime.
func (c *Client) CreateInstance(ctx context.Context, imageID int64, ttl time.Duration, protected bool) (*Instance, error) {
	attrs := map[string]any{"image_id": strconv.FormatInt(imageID, 10)}
	if ttl > 0 {
		attrs["ttl"] = ttl.String()
	}
	if protected {
		attrs["protected"] = true
	}
	return c.instance(ctx, http.MethodPost, "/instances", document("instances", "", attrs))
}

// DestroyInstance stops and destroys instance id.
func (c *Client) DestroyInstance(ctx context.Context, id int64) error {
	return c.noContent(ctx, http.MethodDelete, fmt.Sprintf("/instances/%d", id))
}

// ResetInstance throws away instance id's changes: back to its image's
// data, same port and credentials.
func (c *Client) ResetInstance(ctx context.Context, id int64) (*Instance, error) {
	return c.instance(ctx, http.MethodPost, fmt.Sprintf("/instances/%d/reset", id), nil)
}

// UpdateInstance changes instance id's expiry, its protection, or both
// (a nil pointer leaves that attribute alone).
func (c *Client) UpdateInstance(ctx context.Context, id int64, expiresAt *time.Time, protected *bool) (*Instance, error) {
	attrs := map[string]any{}
	if expiresAt != nil {
		attrs["expires_at"] = expiresAt.UTC().Format(time.RFC3339)
	}
	if protected != nil {
		attrs["protected"] = *protected
	}
	return c.instance(ctx, http.MethodPatch, fmt.Sprintf("/instances/%d", id), document("instances", strconv.FormatInt(id, 10), attrs))
}

// Status returns the server's status.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	req, err := c.request(ctx, http.MethodGet, "/status", nil)
	if err != nil {
		return nil, err
	}
	var st Status
	if err := c.one(req, &st); err != nil {
		return nil, err
	}
	return &st, nil
}

// --- JSON:API plumbing: requests are built here, answers decoded by
// package resource, the decoder the server reads requests with ---

func document(typ, id string, attrs map[string]any) any {
	data := map[string]any{"type": typ, "attributes": attrs}
	if id != "" {
		data["id"] = id
	}
	return map[string]any{"data": data}
}

func (c *Client) request(ctx context.Context, method, path string, body any) (*http.Request, error) {
	var r io.Reader
	switch b := body.(type) {
	case nil:
	case io.ReadCloser:
		r = b
	default:
		data, err := json.Marshal(b)
		if err != nil {
			return nil, err
		}
		r = bytes.NewReader(data)
	}
	u := *c.base
	p, q, _ := strings.Cut(path, "?")
	u.Path = strings.TrimRight(u.Path, "/") + p
	u.RawQuery = q
	req, err := http.NewRequestWithContext(ctx, method, u.String(), r)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Draupnir-Version", APIVersion)
	req.Header.Set("Accept", "application/vnd.api+json")
	if r != nil {
		req.Header.Set("Content-Type", "application/vnd.api+json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	if c.userAgent != "" {
		req.Header.Set("User-Agent", c.userAgent)
	}
	return req, nil
}

// do sends req and returns the body of a 2xx answer; any other answer is
// an *APIError.
func (c *Client) do(req *http.Request) ([]byte, error) {
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, &ConnectionError{URL: c.base.String(), Err: err}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, &ConnectionError{URL: c.base.String(), Err: err}
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, errorFrom(resp.StatusCode, body)
	}
	return body, nil
}

// errorFrom is the *APIError of a non-2xx answer with body: its first
// JSON:API error, or the status text and the start of the body.
func errorFrom(status int, body []byte) *APIError {
	apiErr := &APIError{Status: status}
	if e, ok := wire.ReadError(body); ok {
		apiErr.Code, apiErr.Title, apiErr.Detail = e.Code, e.Title, e.Detail
		return apiErr
	}
	apiErr.Title = http.StatusText(status)
	apiErr.Detail = strings.TrimSpace(string(body))
	if len(apiErr.Detail) > 200 {
		apiErr.Detail = apiErr.Detail[:200] + "…"
	}
	return apiErr
}

func (c *Client) noContent(ctx context.Context, method, path string) error {
	req, err := c.request(ctx, method, path, nil)
	if err != nil {
		return err
	}
	_, err = c.do(req)
	return err
}

// list GETs path and decodes its list of resources into out, a pointer to
// a slice of resources.
func (c *Client) list(ctx context.Context, path string, out any) error {
	req, err := c.request(ctx, http.MethodGet, path, nil)
	if err != nil {
		return err
	}
	body, err := c.do(req)
	if err != nil {
		return err
	}
	if err := resource.UnmarshalList(body, out); err != nil {
		return fmt.Errorf("GET %s: %w", path, err)
	}
	return nil
}

// one sends req and decodes its one primary resource into v, a pointer to
// a resource (and its included credentials, for an instance).
func (c *Client) one(req *http.Request, v any) error {
	body, err := c.do(req)
	if err != nil {
		return err
	}
	if err := resource.Unmarshal(body, v); err != nil {
		return fmt.Errorf("%s %s: %w", req.Method, req.URL.Path, err)
	}
	return nil
}

func (c *Client) image(ctx context.Context, method, path string, body any) (*Image, error) {
	req, err := c.request(ctx, method, path, body)
	if err != nil {
		return nil, err
	}
	var img Image
	if err := c.one(req, &img); err != nil {
		return nil, err
	}
	return &img, nil
}

func (c *Client) instance(ctx context.Context, method, path string, body any) (*Instance, error) {
	req, err := c.request(ctx, method, path, body)
	if err != nil {
		return nil, err
	}
	var inst Instance
	if err := c.one(req, &inst); err != nil {
		return nil, err
	}
	return &inst, nil
}
