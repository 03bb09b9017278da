// Package api is sindri's HTTP foundation for the Draupnir API v5 (see the
// contract, api.md): a gorilla/mux router wrapped in the API's middleware
// (request ids, access log, panic recovery, the Draupnir-Version header,
// authentication, body limits), JSON:API error documents (Error, WriteError,
// RegisterClass, RegisterPublicClass), request decoding (DecodeJSON, DecodeResource, ParseID,
// PathID, ID) and JSON:API rendering with google/jsonapi (WriteResource,
// WriteResources). Resource handlers are registered on Server.Router().
//
// The configured [limits] refuse with 429 quota_exceeded (a per-user or
// global count or size) or 503 no_disk_space (the disk reserve), with a
// detail that names the limit's key and the current figure; GET /status
// shows each limit and its use under the attribute limits.
package api
