package auth

import (
	"encoding/json"
	"net/http"
	"strconv"
)

// MediaType is JSON:API's media type, used for error documents.
const MediaType = "application/vnd.api+json"

// apiError is one JSON:API error object.
type apiError struct {
	status              int
	code, title, detail string
}

func (e *apiError) Error() string { return e.code + ": " + e.detail }

type errorDocument struct {
	Errors []errorObject `json:"errors"`
}

type errorObject struct {
	Status string `json:"status"`
	Code   string `json:"code"`
	Title  string `json:"title"`
	Detail string `json:"detail,omitempty"`
}

func badRequest(detail string) *apiError {
	return &apiError{status: http.StatusBadRequest, code: "bad_request", title: "Bad request", detail: detail}
}

var errOAuthDisabled = &apiError{
	status: http.StatusNotImplemented, code: "oauth_not_configured", title: "OAuth login is not configured",
	detail: "This server has no [oauth] section with a client_id; use an API token or the shared secret.",
}

// writeAPIError answers with a JSON:API error document.
func writeAPIError(w http.ResponseWriter, e *apiError) {
	h := w.Header()
	h.Set("Content-Type", MediaType)
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(e.status)
	json.NewEncoder(w).Encode(errorDocument{Errors: []errorObject{{
		Status: strconv.Itoa(e.status), Code: e.code, Title: e.title, Detail: e.detail,
	}}})
}

func methodNotAllowed(w http.ResponseWriter, r *http.Request, allowed string) {
	w.Header().Set("Allow", allowed)
	writeAPIError(w, &apiError{
		status: http.StatusMethodNotAllowed, code: "method_not_allowed", title: "Method not allowed",
		detail: r.Method + " is not allowed here; use " + allowed + ".",
	})
}
