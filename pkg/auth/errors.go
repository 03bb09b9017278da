package auth

import (
	"net/http"

	"github.com/sindri-db/sindri/pkg/api/wire"
)

// MediaType is JSON:API's media type, used for API 5.4's error documents.
const MediaType = wire.JSONAPIMediaType

// apiError is one API error, written in the request's wire format by
// writeAPIError.
type apiError struct {
	status              int
	code, title, detail string
	// draupnir, if set, is what a Draupnir client (API 5.3 or older) gets
	// instead: Draupnir's own error for the case.
	draupnir *wire.DraupnirError
}

func (e *apiError) Error() string { return e.code + ": " + e.detail }

func badRequest(detail string) *apiError {
	return &apiError{status: http.StatusBadRequest, code: "bad_request", title: "Bad request", detail: detail}
}

// badBody is a 400 for a request body that is not the route's document;
// Draupnir answered those with its "Invalid JSON".
func badBody(detail string) *apiError {
	e := badRequest(detail)
	e.draupnir = &wire.DraupnirInvalidJSON
	return e
}

var errOAuthDisabled = &apiError{
	status: http.StatusNotImplemented, code: "oauth_not_configured", title: "OAuth login is not configured",
	detail: "This server has no [oauth] section with a client_id; use an API token or the shared secret.",
}

// writeAPIError answers r with e in r's wire format (wire.FormatOf): a
// JSON:API error document for API 5.4, Draupnir's bare error object for a
// Draupnir client.
func writeAPIError(w http.ResponseWriter, r *http.Request, e *apiError) {
	w.Header().Set("Cache-Control", "no-store")
	wire.WriteError(w, wire.FormatOf(r), wire.Error{
		Status: e.status, Code: e.code, Title: e.title, Detail: e.detail, Draupnir: e.draupnir,
	})
}

func methodNotAllowed(w http.ResponseWriter, r *http.Request, allowed string) {
	w.Header().Set("Allow", allowed)
	writeAPIError(w, r, &apiError{
		status: http.StatusMethodNotAllowed, code: "method_not_allowed", title: "Method not allowed",
		detail: r.Method + " is not allowed here; use " + allowed + ".",
	})
}
