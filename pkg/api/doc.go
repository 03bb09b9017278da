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
// The configured [limits] refuse with 429 quota_exceeded (a per-user or
// global count or size) or 503 no_disk_space (the disk reserve), with a
// detail that names the limit's key and the current figure; GET /status
// shows each limit and its use under the attribute limits.
//
// While the metadata database is out of reach (engine.ErrMetadataUnavailable:
// its leader changing in a failover, or down), every request that needs it
// is answered 503 metadata_unavailable with Retry-After: 2, and may be sent
// again as it is: whatever it began is finished or undone by the engine.
// GET /health_check does not need it and keeps answering.
//
// The web console (pkg/console) is served by the same Server under /ui/,
// outside the versioned API: its routes are in Options.VersionExempt (so
// neither the version header nor a bearer token is asked for; it signs
// browsers in itself), it calls the same services, shows the resources as
// ImageResource, InstanceResource, BackupResource and StatusResource
// render them, and an error in the words AsError gives it.
package api
