// Package api is sindri's HTTP foundation for the Draupnir API v5 (see the
// contract, api.md): a gorilla/mux router wrapped in the API's middleware
// (request ids, access log, panic recovery, the Draupnir-Version header,
// authentication, body limits), JSON:API error documents (Error, WriteError,
// RegisterClass), request decoding (DecodeJSON, DecodeResource, ParseID,
// PathID, ID) and JSON:API rendering with google/jsonapi (WriteResource,
// WriteResources). Resource handlers are registered on Server.Router().
package api
