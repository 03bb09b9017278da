package client

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestRequestsAndDecoding(t *testing.T) {
	var got struct {
		method, path, query, version, auth, contentType, body string
		length                                                int64
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got.method, got.path, got.query, got.body = r.Method, r.URL.Path, r.URL.RawQuery, string(b)
		got.version, got.auth, got.contentType = r.Header.Get("Draupnir-Version"), r.Header.Get("Authorization"), r.Header.Get("Content-Type")
		got.length = r.ContentLength
		w.Header().Set("Content-Type", "application/vnd.api+json")
		switch {
		case r.URL.Path == "/instances/7" && r.Method == http.MethodGet:
			io.WriteString(w, `{"data":{"type":"instances","id":"7","attributes":{"hostname":"localhost","image_id":3,"port":6001,
				"status":"running","expires_at":null,"protected":true,"created_at":"2026-11-01T12:00:00Z"},
				"relationships":{"credentials":{"data":{"type":"credentials","id":"7"}}}},
				"included":[{"type":"credentials","id":"7","attributes":{"ca_certificate":"CA","client_certificate":"CERT","client_key":"KEY"}}]}`)
		case r.URL.Path == "/images" && r.Method == http.MethodGet:
			io.WriteString(w, `{"data":[{"type":"images","id":"2","attributes":{"ready":true,"status":"ready"}},{"type":"images","id":"1","attributes":{"ready":false,"status":"failed","error":"boom"}}]}`)
		case r.URL.Path == "/images/5/upload":
			io.WriteString(w, `{"data":{"type":"images","id":"5","attributes":{"status":"pending"}}}`)
		case r.Method == http.MethodDelete:
			w.WriteHeader(http.StatusNoContent)
		case r.URL.Path == "/oops":
			w.WriteHeader(http.StatusBadGateway)
			io.WriteString(w, "<html>bad gateway</html>")
		default:
			w.WriteHeader(http.StatusNotFound)
			io.WriteString(w, `{"errors":[{"status":"404","code":"resource_not_found","title":"Resource not found","detail":"there is no instance 9"}]}`)
		}
	}))
	defer srv.Close()
	c, err := New(srv.URL+"/", "tok")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	inst, err := c.GetInstance(ctx, 7)
	if err != nil {
		t.Fatal(err)
	}
	if got.version != "5.4.0" || got.auth != "Bearer tok" {
		t.Errorf("headers: version %q auth %q", got.version, got.auth)
	}
	if inst.ID != 7 || inst.ImageID != 3 || inst.Port != 6001 || !inst.Protected || inst.ExpiresAt != nil ||
		inst.Credentials == nil || inst.Credentials.ClientKey != "KEY" || !inst.CreatedAt.Equal(time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)) {
		t.Errorf("instance: %+v %+v", inst, inst.Credentials)
	}

	images, err := c.ListImages(ctx)
	if err != nil || len(images) != 2 || images[0].ID != 2 || !images[0].Ready || images[1].Error != "boom" {
		t.Errorf("images: %+v %v", images, err)
	}

	if _, err := c.UploadImage(ctx, 5, strings.NewReader("tarball"), 7); err != nil {
		t.Fatal(err)
	}
	if got.method != "PUT" || got.body != "tarball" || got.length != 7 || got.contentType != "application/octet-stream" {
		t.Errorf("upload: %+v", got)
	}

	if err := c.DestroyImage(ctx, 4, true); err != nil || got.path != "/images/4" || got.query != "force=true" {
		t.Errorf("destroy: %v %+v", err, got)
	}

	if _, err := c.CreateInstance(ctx, 3, 30*time.Minute, true); err == nil {
		t.Error("create: no error")
	} else if got.body != `{"data":{"attributes":{"image_id":"3","protected":true,"ttl":"30m0s"},"type":"instances"}}` {
		t.Errorf("create body: %s", got.body)
	}

	_, err = c.GetInstance(ctx, 9)
	var apiErr *APIError
	if !errors.As(err, &apiErr) || apiErr.Status != 404 || apiErr.Code != "resource_not_found" ||
		err.Error() != "Resource not found: there is no instance 9" {
		t.Errorf("error: %#v", err)
	}

	req, _ := c.request(ctx, http.MethodGet, "/oops", nil)
	_, err = c.do(req)
	if !errors.As(err, &apiErr) || apiErr.Status != 502 || apiErr.Title != "Bad Gateway" {
		t.Errorf("non-JSON error: %#v", err)
	}
}

func TestConnectionError(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close()
	c, err := New(url, "")
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Status(context.Background())
	var connErr *ConnectionError
	var apiErr *APIError
	if !errors.As(err, &connErr) || errors.As(err, &apiErr) || err.Error() != "cannot reach "+url+": connection refused" {
		t.Errorf("error: %v", err)
	}
}

func TestNewRejectsBadURLs(t *testing.T) {
	for _, u := range []string{"", "localhost:8080", "ftp://x", "http://"} {
		if _, err := New(u, ""); err == nil {
			t.Errorf("New(%q): no error", u)
		}
	}
}
