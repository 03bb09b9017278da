package client

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strconv"

	"github.com/sindri-db/sindri/pkg/api/resource"
)

// Source is a sources resource (resource.Source): a server the server
// makes images of on a schedule. Its URL comes back without the password.
type Source = resource.Source

// The statuses of a source.
const (
	SourceIdle       = resource.SourceIdle
	SourceRefreshing = resource.SourceRefreshing
	SourceStreaming  = resource.SourceStreaming
	SourceFailed     = resource.SourceFailed
)

// SourceInput is a new source; Mode "" is basebackup, Keep 0 the
// server's default, Schedule "" refreshed only when asked.
type SourceInput struct {
	Name                string
	URL                 string
	Mode                string
	Schedule            string
	AnonymisationScript string
	Keep                int
}

// SourcePatch changes a source; nil leaves a field as it is. URL replaces
// the whole url, its password included.
type SourcePatch struct {
	Name                *string
	URL                 *string
	Mode                *string
	Schedule            *string
	AnonymisationScript *string
	Keep                *int
}

// ListSources returns every source (the upload user only).
func (c *Client) ListSources(ctx context.Context) ([]Source, error) {
	var out []Source
	if err := c.list(ctx, "/sources", &out); err != nil {
		return nil, err
	}
	return out, nil
}

// GetSource returns source id.
func (c *Client) GetSource(ctx context.Context, id int64) (*Source, error) {
	return c.source(ctx, http.MethodGet, fmt.Sprintf("/sources/%d", id), nil)
}

// CreateSource records a source.
func (c *Client) CreateSource(ctx context.Context, in SourceInput) (*Source, error) {
	attrs := map[string]any{"name": in.Name, "url": in.URL}
	for k, v := range map[string]string{"mode": in.Mode, "schedule": in.Schedule, "anonymisation_script": in.AnonymisationScript} {
		if v != "" {
			attrs[k] = v
		}
	}
	if in.Keep != 0 {
		attrs["keep"] = in.Keep
	}
	return c.source(ctx, http.MethodPost, "/sources", document("sources", "", attrs))
}

// UpdateSource changes source id.
func (c *Client) UpdateSource(ctx context.Context, id int64, p SourcePatch) (*Source, error) {
	attrs := map[string]any{}
	for k, v := range map[string]*string{"name": p.Name, "url": p.URL, "mode": p.Mode, "schedule": p.Schedule, "anonymisation_script": p.AnonymisationScript} {
		if v != nil {
			attrs[k] = *v
		}
	}
	if p.Keep != nil {
		attrs["keep"] = *p.Keep
	}
	return c.source(ctx, http.MethodPatch, fmt.Sprintf("/sources/%d", id), document("sources", strconv.FormatInt(id, 10), attrs))
}

// DeleteSource deletes source id; the images it made stay.
func (c *Client) DeleteSource(ctx context.Context, id int64) error {
	return c.noContent(ctx, http.MethodDelete, fmt.Sprintf("/sources/%d", id))
}

// RefreshSource starts a refresh of source id now; the source comes back
// refreshing. Poll GetSource for the outcome (idle with a new
// LastImageID, or failed with Error).
func (c *Client) RefreshSource(ctx context.Context, id int64) (*Source, error) {
	return c.source(ctx, http.MethodPost, fmt.Sprintf("/sources/%d/refresh", id), nil)
}

// ListImagesOfSource returns the images source name made, newest first.
func (c *Client) ListImagesOfSource(ctx context.Context, name string) ([]Image, error) {
	var out []Image
	if err := c.list(ctx, "/images?source="+url.QueryEscape(name), &out); err != nil {
		return nil, err
	}
	return out, nil
}

func (c *Client) source(ctx context.Context, method, path string, body any) (*Source, error) {
	req, err := c.request(ctx, method, path, body)
	if err != nil {
		return nil, err
	}
	var src Source
	if err := c.one(req, &src); err != nil {
		return nil, err
	}
	return &src, nil
}
