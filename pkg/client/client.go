// Package client is a Go client of the sindri HTTP API (the Draupnir API
// version 5 plus sindri's additions, see /work/shared/api.md).
//
// Every method sends the Draupnir-Version header and the bearer token, and
// reads JSON:API documents. An error the server answered with is an
// *APIError; an error reaching the server is a *ConnectionError.
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

// Image is an images resource.
type Image struct {
	ID         int64     `json:"id"`
	Name       string    `json:"name,omitempty"`
	BackedUpAt time.Time `json:"backed_up_at"`
	Ready      bool      `json:"ready"`
	Status     string    `json:"status"`
	Error      string    `json:"error,omitempty"`
	PGVersion  string    `json:"pg_version,omitempty"`
	SizeBytes  int64     `json:"size_bytes"`
	BackupID   int64     `json:"backup_id,omitempty"` // the backup it was restored from
	// Anonymised: an anonymisation script ran on the image's data and the
	// scrub after it finished. An image without is the data as uploaded.
	Anonymised bool      `json:"anonymised"`
	CreatedAt  time.Time `json:"created_at"`
	UpdatedAt  time.Time `json:"updated_at"`
}

// Instance is an instances resource; Credentials is set by the calls whose
// answer includes them (GetInstance, CreateInstance, ResetInstance,
// UpdateInstance).
type Instance struct {
	ID          int64        `json:"id"`
	Hostname    string       `json:"hostname"`
	ImageID     int64        `json:"image_id"`
	Port        int          `json:"port"`
	Status      string       `json:"status"`
	Error       string       `json:"error,omitempty"`
	Username    string       `json:"username"`
	Password    string       `json:"password"`
	DatabaseURL string       `json:"database_url"`
	ExpiresAt   *time.Time   `json:"expires_at"`
	Protected   bool         `json:"protected"`
	CreatedAt   time.Time    `json:"created_at"`
	UpdatedAt   time.Time    `json:"updated_at"`
	Credentials *Credentials `json:"credentials,omitempty"`
}

// Credentials are the PEM files of a TLS login as role draupnir.
type Credentials struct {
	CACertificate     string `json:"ca_certificate"`
	ClientCertificate string `json:"client_certificate"`
	ClientKey         string `json:"client_key"`
}

// Status is the statuses resource of GET /status.
type Status struct {
	Status                string         `json:"status"`
	Problems              []string       `json:"problems,omitempty"`
	Version               string         `json:"version"`
	APIVersion            string         `json:"api_version"`
	StorageDriver         string         `json:"storage_driver"`
	TotalBytes            int64          `json:"total_bytes"`
	FreeBytes             int64          `json:"free_bytes"`
	UsedByInstancesBytes  int64          `json:"used_by_instances_bytes"`
	Images                map[string]int `json:"images"`
	Instances             map[string]int `json:"instances"`
	ExpectedCloningTimeMS int64          `json:"expected_cloning_time_ms"`
}

// ListImages returns all images, newest first.
func (c *Client) ListImages(ctx context.Context) ([]Image, error) {
	var out []Image
	err := c.list(ctx, "/images", "images", func(r resource) error {
		var img Image
		if err := r.decode(&img, &img.ID); err != nil {
			return err
		}
		out = append(out, img)
		return nil
	})
	return out, err
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
	if err := c.one(req, "images", &img, &img.ID); err != nil {
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
	err := c.list(ctx, "/instances", "instances", func(r resource) error {
		var inst Instance
		if err := r.decode(&inst, &inst.ID); err != nil {
			return err
		}
		out = append(out, inst)
		return nil
	})
	return out, err
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
	var id string
	if err := c.one(req, "statuses", &st, &id); err != nil {
		return nil, err
	}
	return &st, nil
}

// --- JSON:API plumbing ---

type resource struct {
	Type          string          `json:"type"`
	ID            string          `json:"id"`
	Attributes    json.RawMessage `json:"attributes"`
	Relationships map[string]struct {
		Data json.RawMessage `json:"data"`
	} `json:"relationships"`
}

// decode reads the attributes into v and the id into id (*int64 or *string).
func (r resource) decode(v any, id any) error {
	if len(r.Attributes) > 0 {
		if err := json.Unmarshal(r.Attributes, v); err != nil {
			return fmt.Errorf("decoding %s %s: %w", r.Type, r.ID, err)
		}
	}
	switch p := id.(type) {
	case *int64:
		n, err := strconv.ParseInt(r.ID, 10, 64)
		if err != nil {
			return fmt.Errorf("decoding %s: id %q is not a number", r.Type, r.ID)
		}
		*p = n
	case *string:
		*p = r.ID
	}
	return nil
}

type payload struct {
	Data     json.RawMessage `json:"data"`
	Included []resource      `json:"included"`
	Errors   []struct {
		Status string `json:"status"`
		Code   string `json:"code"`
		Title  string `json:"title"`
		Detail string `json:"detail"`
	} `json:"errors"`
}

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

// do sends req and returns the decoded document of a 2xx answer; any
// other answer is an *APIError.
func (c *Client) do(req *http.Request) (*payload, error) {
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, &ConnectionError{URL: c.base.String(), Err: err}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, &ConnectionError{URL: c.base.String(), Err: err}
	}
	var doc payload
	jsonErr := error(nil)
	if len(bytes.TrimSpace(body)) > 0 {
		jsonErr = json.Unmarshal(body, &doc)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, errorFrom(resp.StatusCode, body)
	}
	if jsonErr != nil {
		return nil, fmt.Errorf("%s %s: the server's answer is not JSON: %w", req.Method, req.URL.Path, jsonErr)
	}
	return &doc, nil
}

// errorFrom is the *APIError of a non-2xx answer with body: its first
// JSON:API error, or the status text and the start of the body.
func errorFrom(status int, body []byte) *APIError {
	apiErr := &APIError{Status: status}
	var doc payload
	if json.Unmarshal(body, &doc) == nil && len(doc.Errors) > 0 {
		e := doc.Errors[0]
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

func (c *Client) list(ctx context.Context, path, typ string, each func(resource) error) error {
	req, err := c.request(ctx, http.MethodGet, path, nil)
	if err != nil {
		return err
	}
	doc, err := c.do(req)
	if err != nil {
		return err
	}
	var rs []resource
	if err := json.Unmarshal(doc.Data, &rs); err != nil {
		return fmt.Errorf("GET %s: data is not a list of resources: %w", path, err)
	}
	for _, r := range rs {
		if r.Type != typ {
			return fmt.Errorf("GET %s: a resource of type %q, want %q", path, r.Type, typ)
		}
		if err := each(r); err != nil {
			return err
		}
	}
	return nil
}

// one sends req and decodes its single primary resource of type typ.
func (c *Client) one(req *http.Request, typ string, v any, id any) error {
	_, err := c.oneDoc(req, typ, v, id)
	return err
}

func (c *Client) oneDoc(req *http.Request, typ string, v any, id any) (*payload, error) {
	doc, err := c.do(req)
	if err != nil {
		return nil, err
	}
	var r resource
	if err := json.Unmarshal(doc.Data, &r); err != nil || r.Type == "" {
		return nil, fmt.Errorf("%s %s: data is not one resource", req.Method, req.URL.Path)
	}
	if r.Type != typ {
		return nil, fmt.Errorf("%s %s: a resource of type %q, want %q", req.Method, req.URL.Path, r.Type, typ)
	}
	return doc, r.decode(v, id)
}

func (c *Client) image(ctx context.Context, method, path string, body any) (*Image, error) {
	req, err := c.request(ctx, method, path, body)
	if err != nil {
		return nil, err
	}
	var img Image
	if err := c.one(req, "images", &img, &img.ID); err != nil {
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
	doc, err := c.oneDoc(req, "instances", &inst, &inst.ID)
	if err != nil {
		return nil, err
	}
	id := strconv.FormatInt(inst.ID, 10)
	for _, inc := range doc.Included {
		if inc.Type == "credentials" && inc.ID == id {
			var cr Credentials
			if err := inc.decode(&cr, nil); err != nil {
				return nil, err
			}
			inst.Credentials = &cr
		}
	}
	return &inst, nil
}
