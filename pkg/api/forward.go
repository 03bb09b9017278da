package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sindri-db/sindri/pkg/api/resource"
	"github.com/sindri-db/sindri/pkg/engine"
	"github.com/sindri-db/sindri/pkg/fleet"
	"github.com/sindri-db/sindri/pkg/store"
	"github.com/sindri-db/sindri/pkg/version"
)

// HostRetryAfter is the Retry-After of 503 host_unavailable and
// no_host_available.
const HostRetryAfter = 10 * time.Second

// hostsFresh is how long the hosts read for routing are used before they
// are read again.
const hostsFresh = time.Second

// maxPeerErrorBytes bounds what is read of a peer's error document.
const maxPeerErrorBytes = 64 << 10

// Fleet routes requests between the hosts of a fleet: set in
// Handlers.Fleet, every host answers every request (see the package doc
// for which are answered where). It is also the engine's InstancePeers:
// CreateOn has an instance placed on another host built there.
type Fleet struct {
	// Self is this host's name.
	Self string
	// Auth signs the requests sent to the peers and checks theirs.
	Auth *fleet.PeerAuth
	// Transport reaches the peers' peer_url, verifying their TLS
	// certificates (nil: http.DefaultTransport).
	Transport http.RoundTripper
	// Hosts reads the fleet's hosts, each with its state now.
	Hosts func(ctx context.Context) ([]store.Host, error)
	// ImageHosts reads the hosts that hold a ready copy of an image.
	ImageHosts func(ctx context.Context, imageID int64) ([]string, error)
	// Placed builds the instances other hosts placed on this one.
	Placed PlacedService
	Logger *slog.Logger

	mu    sync.Mutex
	hosts map[string]store.Host
	read  time.Time
}

// PlacedService builds an instance another host of the fleet placed on
// this one (engine.InstanceService.CreatePlaced); no actor: the peer
// route is the hosts' only.
type PlacedService interface {
	CreatePlaced(ctx context.Context, id int64) (store.Instance, error)
}

var _ engine.InstancePeers = (*Fleet)(nil)

func (f *Fleet) logger() *slog.Logger {
	if f.Logger == nil {
		return slog.Default()
	}
	return f.Logger
}

func (f *Fleet) transport() http.RoundTripper {
	if f.Transport == nil {
		return http.DefaultTransport
	}
	return f.Transport
}

// host returns a host of the fleet as read at most hostsFresh ago.
func (f *Fleet) host(ctx context.Context, name string) (store.Host, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if h, ok := f.hosts[name]; ok && time.Since(f.read) < hostsFresh {
		return h, nil
	}
	hosts, err := f.Hosts(ctx)
	if err != nil {
		if errors.Is(err, store.ErrUnavailable) {
			err = fmt.Errorf("%w: %w", engine.ErrMetadataUnavailable, err)
		}
		return store.Host{}, err
	}
	f.hosts = make(map[string]store.Host, len(hosts))
	for _, h := range hosts {
		f.hosts[h.Name] = h
	}
	f.read = time.Now()
	h, ok := f.hosts[name]
	if !ok {
		return store.Host{}, fmt.Errorf("%w: host %q is not a host of this fleet", engine.ErrHostUnavailable, name)
	}
	return h, nil
}

// CreateOn has instance inst, placed on another host, built there: it
// sends POST /fleet/instances/{id}/create to the host's peer_url with
// this host's proof, and returns once the host answers. A refusal of the
// host (a 4xx, or a 503 such as no_free_port) is returned as that host's
// error, naming it; a host that cannot be reached, or fails otherwise,
// is engine.ErrHostUnavailable.
func (f *Fleet) CreateOn(ctx context.Context, inst store.Instance) error {
	h, err := f.host(ctx, inst.Host)
	if err != nil {
		return err
	}
	if h.State == store.HostDown {
		return fmt.Errorf("%w: instance %d was placed on host %q, which is down; it was not created: send the request again",
			engine.ErrHostUnavailable, inst.ID, h.Name)
	}
	u := strings.TrimSuffix(h.PeerURL, "/") + "/fleet/instances/" + strconv.FormatInt(inst.ID, 10) + "/create"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, nil)
	if err != nil {
		return fmt.Errorf("%w: host %q has a bad peer_url: %w", engine.ErrHostUnavailable, h.Name, err)
	}
	req.Header.Set(VersionHeader, version.API)
	if id := RequestID(ctx); id != "" {
		req.Header.Set(RequestIDHeader, id)
	}
	f.Auth.Sign(req)
	res, err := f.transport().RoundTrip(req)
	if err != nil {
		f.logger().Error("fleet: creating an instance on another host", "instance_id", inst.ID, "host", h.Name, "peer_url", h.PeerURL, "err", err)
		return fmt.Errorf("%w: host %q, where instance %d was placed, cannot be reached; it was not created: send the request again",
			engine.ErrHostUnavailable, h.Name, inst.ID)
	}
	defer res.Body.Close()
	if res.StatusCode == http.StatusCreated {
		io.Copy(io.Discard, io.LimitReader(res.Body, 1<<20))
		return nil
	}
	body, _ := io.ReadAll(io.LimitReader(res.Body, maxPeerErrorBytes))
	// The host's refusal stands; a refused proof (401, 403) is the
	// fleet's configuration, not the client's fault.
	if e := decodePeerError(res, body); e != nil && e.Status != http.StatusUnauthorized && e.Status != http.StatusForbidden &&
		(e.Status < 500 || e.Status == http.StatusServiceUnavailable) {
		e.Detail = fmt.Sprintf("host %q: %s", h.Name, e.Detail)
		return e
	}
	f.logger().Error("fleet: another host failed to create an instance", "instance_id", inst.ID, "host", h.Name,
		"status", res.StatusCode, "body", string(body))
	return fmt.Errorf("%w: host %q, where instance %d was placed, failed to create it (HTTP %d); it was not created: send the request again",
		engine.ErrHostUnavailable, h.Name, inst.ID, res.StatusCode)
}

// decodePeerError reads a peer's JSON:API error document; nil if the
// body is none.
func decodePeerError(res *http.Response, body []byte) *Error {
	var doc struct {
		Errors []struct {
			Status string `json:"status"`
			Code   string `json:"code"`
			Title  string `json:"title"`
			Detail string `json:"detail"`
		} `json:"errors"`
	}
	if json.Unmarshal(body, &doc) != nil || len(doc.Errors) == 0 || doc.Errors[0].Code == "" {
		return nil
	}
	d := doc.Errors[0]
	e := NewError(res.StatusCode, d.Code, d.Title, d.Detail)
	if secs, err := strconv.Atoi(res.Header.Get("Retry-After")); err == nil && secs > 0 {
		e.RetryAfter = time.Duration(secs) * time.Second
	}
	return e
}

// hostUnavailable is the answer for a request of what, which lives on
// host h, when h is down or cannot be reached.
func hostUnavailable(h store.Host, what, why string) error {
	return fmt.Errorf("%w: %s lives on host %q, which %s; try again once it is back", engine.ErrHostUnavailable, what, h.Name, why)
}

// forward serves r on host name: a reverse proxy to its peer_url, the
// client's request as it came (its authentication, version header,
// request id and body) with this host's proof added, so that the host
// serves it rather than forwarding it again. The answer, status, headers
// and body, is the host's, streamed (downloads and their ranges
// included).
func (f *Fleet) forward(w http.ResponseWriter, r *http.Request, name, what string) error {
	h, err := f.host(r.Context(), name)
	if err != nil {
		return err
	}
	if h.State == store.HostDown {
		return hostUnavailable(h, what, fmt.Sprintf("is down (no heartbeat since %s)", h.HeartbeatAt.UTC().Format(time.RFC3339)))
	}
	target, err := url.Parse(h.PeerURL)
	if err != nil {
		return hostUnavailable(h, what, "has a bad peer_url")
	}
	// The host's answer brings its own version header, request id and
	// content type: this host's would be sent twice.
	saved := w.Header().Clone()
	clear(w.Header())
	var failed error
	proxy := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.SetXForwarded()
			f.Auth.Sign(pr.Out)
		},
		Transport:     f.transport(),
		FlushInterval: -1,
		ErrorHandler:  func(_ http.ResponseWriter, _ *http.Request, err error) { failed = err },
	}
	proxy.ServeHTTP(w, r)
	if failed != nil {
		clear(w.Header())
		for k, v := range saved {
			w.Header()[k] = v
		}
		ctx := r.Context()
		LoggerFrom(ctx).LogAttrs(ctx, slog.LevelError, "fleet: forwarding a request to another host",
			slog.String("host", h.Name), slog.String("peer_url", h.PeerURL), slog.String("error", failed.Error()))
		return hostUnavailable(h, what, "cannot be reached")
	}
	return nil
}

// routed serves a request where what it acts on lives: locate names the
// host ("" or this host: here) and what the request is of, for the
// messages; a request a peer forwarded is served here. Without a fleet
// it is next.
func (h *Handlers) routed(locate func(*http.Request) (host, what string, err error), next HandlerFunc) HandlerFunc {
	if h.Fleet == nil {
		return next
	}
	return func(w http.ResponseWriter, r *http.Request) error {
		if fromPeer(r) != "" {
			return next(w, r)
		}
		host, what, err := locate(r)
		if err != nil {
			return err
		}
		if host == "" || host == h.Fleet.Self {
			return next(w, r)
		}
		return h.Fleet.forward(w, r, host, what)
	}
}

// onInstanceHost serves a request of instance {id} on its host. Another's
// instance is a 404 here, as the handler would answer.
func (h *Handlers) onInstanceHost(next HandlerFunc) HandlerFunc {
	return h.routed(func(r *http.Request) (string, string, error) {
		id, err := PathID(r, "id")
		if err != nil {
			return "", "", err
		}
		inst, err := h.Instances.Get(r.Context(), actor(r), id)
		if err != nil {
			return "", "", err
		}
		return inst.Host, fmt.Sprintf("instance %d", id), nil
	}, next)
}

// onBackupHost serves a request of backup {id} on the host that holds its
// archive.
func (h *Handlers) onBackupHost(next HandlerFunc) HandlerFunc {
	return h.routed(func(r *http.Request) (string, string, error) {
		id, err := PathID(r, "id")
		if err != nil {
			return "", "", err
		}
		b, err := h.Backups.Get(r.Context(), actor(r), id)
		if err != nil {
			return "", "", err
		}
		return b.Host, fmt.Sprintf("backup %d", id), nil
	}, next)
}

// onBackupSourceHost serves POST /backups where its source lives: an
// instance's host, or for an image this host if it holds a ready copy,
// else the first live host that does. A body that does not decode is the
// handler's to refuse, here.
func (h *Handlers) onBackupSourceHost(next HandlerFunc) HandlerFunc {
	return h.routed(func(r *http.Request) (string, string, error) {
		data, err := io.ReadAll(r.Body)
		if err != nil {
			return "", "", err
		}
		r.Body = io.NopCloser(bytes.NewReader(data))
		var attrs struct {
			InstanceID *ID `json:"instance_id"`
			ImageID    *ID `json:"image_id"`
		}
		if _, err := resource.DecodeRequest(data, "backups", &attrs); err != nil || (attrs.InstanceID == nil) == (attrs.ImageID == nil) {
			return "", "", nil
		}
		ctx := r.Context()
		if attrs.InstanceID != nil {
			inst, err := h.Instances.Get(ctx, actor(r), int64(*attrs.InstanceID))
			if err != nil {
				return "", "", nil // the handler's 404
			}
			return inst.Host, fmt.Sprintf("instance %d", inst.ID), nil
		}
		id := int64(*attrs.ImageID)
		hosts, err := h.Fleet.ImageHosts(ctx, id)
		if err != nil || len(hosts) == 0 || slices.Contains(hosts, h.Fleet.Self) {
			return "", "", nil
		}
		for _, name := range hosts {
			if host, err := h.Fleet.host(ctx, name); err == nil && host.State != store.HostDown {
				return name, fmt.Sprintf("image %d", id), nil
			}
		}
		return hosts[0], fmt.Sprintf("image %d", id), nil
	}, next)
}

// createPlaced is POST /fleet/instances/{id}/create: a peer has this host
// build an instance it placed here. The answer is 201 with the instance.
func (h *Handlers) createPlaced(w http.ResponseWriter, r *http.Request) error {
	id, err := PathID(r, "id")
	if err != nil {
		return err
	}
	inst, err := h.Fleet.Placed.CreatePlaced(r.Context(), id)
	if err != nil {
		return err
	}
	WriteResource(w, http.StatusCreated, h.instanceResource(inst, true))
	return nil
}
