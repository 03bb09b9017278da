// Package api is sindri's HTTP server for the Draupnir API v5 (see the
// contract, api.md): a gorilla/mux router wrapped in the API's middleware
// (request ids, access log, panic recovery, the Draupnir-Version header,
// authentication, body limits), the routes of the contract's resources
// (Handlers), error rendering (the error table, WriteError), request
// decoding (DecodeJSON, DecodeResource, ParseID, PathID, ID), JSON:API
// rendering with google/jsonapi (WriteResource, WriteResources) and
// downloads (ServeContent).
//
// Handlers decode a request, call one service and render what it returns.
// The services (ImageService, InstanceService, BackupService,
// StatusService, SourceService) are interfaces the engine implements (engine.Services):
// they take the caller as an engine.Actor (the authenticated principal's
// owner and whether it is the upload user) and decide what the caller may
// see and do, reads included, so that no handler checks ownership and the
// handlers are tested over an in-memory fake. The resources rendered are
// package resource's, which the client (pkg/client) decodes too.
//
// A handler is a HandlerFunc: it returns its error, and the adapter
// writes it. Errors map to status, code and title in one table
// (errorClasses, errors.go), by the engine's classes (pkg/engine/
// errors.go): the engine gives the store's, the storage's and Postgres's
// errors those classes before they reach a handler, so this package
// imports neither pkg/storage nor pkg/postgres (TestLayering checks).
//
// The version header chooses the wire format (package wire):
//
//   - Draupnir-Version 5.4.x or a later 5.x, or no header at all: JSON:API.
//     Documents and errors are application/vnd.api+json; an error is
//     {"errors":[{"status","code","title","detail","source"}]}.
//   - Any other value (5.0-5.3, an older major, a value that is no
//     version): a Draupnir client, which gets Draupnir's format exactly.
//     Every response is application/json (204s too, set up front by the
//     middleware), success documents are the same JSON:API documents, and
//     an error is one bare object {"id","status","code","title","detail",
//     "source"}: Draupnir's own for the errors Draupnir had (by code:
//     unauthorized, resource_not_found, image_not_ready,
//     image_has_instances, internal_server_error,
//     missing_api_version_header; or set with Error.WithDraupnir or
//     WithDraupnirError, as POST /instances does for an unknown or bad
//     image_id and the body decoders for Draupnir's "Invalid JSON"), else
//     sindri's code (as id and code), title, detail and source.
//
// So every error must go through WriteError (a HandlerFunc's returned
// error does; pkg/auth, which cannot import this package, writes through
// wire.WriteError): a new code renders in both formats by itself. Never
// http.Error or a hand-written {"errors":…}. Successes go through
// WriteResource/WriteResources, which take the format the middleware
// recorded for the request (the list of GET /instances, a thousand
// resources on a dense host, through writeInstanceFragments, which writes
// the same bytes without reflection from each instance's rendering, kept
// while the instance is unchanged: see renderedInstances), and files
// through ServeContent.
//
// DecodeResource takes an empty or missing data.type as the route's own
// (Draupnir's clients send "type":"") and ignores an empty data.id.
//
// Sources (/sources, the upload user's only: 403 for others) are servers
// the engine makes images of on a schedule; a source's url is rendered
// without its password and its anonymisation_script not at all, both
// write-only. POST /sources/{id}/refresh answers 202 with the source
// refreshing. GET /images?source=NAME lists what a source made (404 for
// an unknown name), and images carry source_id.
//
// POST /images with instance_id makes a branch: an image of that
// instance's data, carrying its owner, which only the owner and the
// upload user see (404 for others).
//
// In a fleet (Handlers.Hosts set, sindrid configured with [fleet]),
// GET /hosts lists the hosts sharing the metadata database, the upload
// user's only (403 for others): each a hosts resource whose id is its
// name, with peer_url, public_hostname, storage_driver, total_bytes,
// free_bytes, reserve_bytes, instances (placed on it), running_instances,
// max_instances, memory_total_bytes, memory_available_bytes, state
// (active, draining, or down when its last_heartbeat_at is older than the
// down timeout) and last_heartbeat_at. Without a fleet there is no such
// route (404). In a fleet, an instance carries host, the name of the host
// it lives on, and hostname and database_url name that host's public
// hostname, and an image hosts, the names of the hosts holding a ready
// copy of it; on a single host both attributes are left out. An
// instance of a host that is down reads status "unavailable" (read from
// the hosts at each request, never stored): its real status shows again
// once its host's heartbeat does. GET /status of a fleet host counts its
// own instances, disk and backup archives, with the fleet's under
// fleet_instances (every host's instances, those of a down host as
// unavailable) and host naming it; images and the per-user limits are the
// fleet's.
//
// In a fleet (Handlers.Fleet set) every host answers every request, as
// follows (forward.go):
//
//   - POST /instances: the host asked places the instance in SQL
//     (store.PlaceInstance, the owner's quota counted fleet-wide). Placed
//     on itself, it builds it as a single host does. Placed on another,
//     it has that host build the row already placed, over the peer route
//     POST /fleet/instances/{id}/create, then reads the instance from the
//     metadata and answers 201 with it exactly as a local create does (its
//     own rendering: same status, headers, body and wire format, Draupnir
//     5.3 included). If that host refuses (a 4xx, or a 503 such as
//     no_free_port), its error is the answer, naming the host; if it is
//     down, cannot be reached or fails, the placed row is deleted (the
//     host undoes what it began when the peer request ends) and the
//     answer is 503 host_unavailable with Retry-After: 10. No host able to
//     take it is 503 no_host_available.
//   - Served from the metadata on any host: GET /instances and
//     GET /instances/{id} (credentials included), PATCH /instances/{id}
//     (expiry, protection), GET /backups and GET /backups/{id}.
//   - Forwarded to the host the instance or backup lives on (a reverse
//     proxy to its peer_url; the client's request as it came, its
//     Authorization, Draupnir-Version and X-Request-Id, with this host's
//     proof added so that the owner serves it instead of forwarding it
//     again; the owner's answer streamed back as it is, Range and HEAD
//     included): DELETE /instances/{id}, POST /instances/{id}/reset,
//     POST /backups (to the instance's host, or for an image to a host
//     holding a ready copy, this one first), DELETE /backups/{id} and
//     GET/HEAD /backups/{id}/download. Whose the instance or backup is, is
//     checked first, on the host asked (another's is 404 there). A down
//     owner is 503 host_unavailable at once, with Retry-After: 10 and a
//     message naming the host; one that cannot be reached, the same.
//     The engine itself refuses to destroy or reset another host's
//     instance (409 conflict, engine.ErrOtherHost): only its host acts
//     on it.
//   - The peers' routes (/fleet/) take a proof under the fleet secret
//     (fleet.PeerAuth), not a user's token: without a valid one, a user
//     with a valid token included, they are 403 not_a_peer. A request
//     to any route that carries a proof that does not verify is 403
//     not_a_peer too; it is never taken for a client's.
//   - GET /fleet/images/{id}/stream?format=F streams this host's copy of
//     a ready image in format F (btrfs-send or zfs-send, the host's own
//     driver's, or tar.zst), with the stream's byte count and CRC-32C as
//     the trailers Sindri-Stream-Bytes and Sindri-Stream-Crc32c; a
//     failure mid-stream aborts the connection (404 for an image without
//     a copy here, 422 image_not_ready, 400 for another format).
//
// The configured [limits] refuse with 429 quota_exceeded (a per-user or
// global count or size) or 503 no_disk_space (the disk reserve), with a
// detail that names the limit's key and the current figure; GET /status
// shows each limit and its use under the attribute limits.
//
// While the metadata database is out of reach (engine.ErrMetadataUnavailable:
// its leader changing in a failover, or down), every request that needs it
// is answered 503 metadata_unavailable with Retry-After: 2, and may be sent
// again as it is: whatever it began is finished or undone by the engine.
// sindrid's Options.ExplainError answers it 503 no_disk_space instead
// when the embedded metadata database is out of reach while the disk it
// keeps its data on is under the disk reserve: retrying does not help
// until space is freed.
// GET /health_check does not need it and keeps answering.
//
// The web console (pkg/console) is served by the same Server under /ui/,
// outside the versioned API: its routes are in Options.VersionExempt (so
// neither the version header nor a bearer token is asked for; it signs
// browsers in itself), it calls the same services, shows the resources as
// ImageResource, InstanceResource, BackupResource and StatusResource
// render them, and an error in the words AsError gives it.
package api
