package wire

import (
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
)

func TestFormatOf(t *testing.T) {
	for _, tc := range []struct {
		values []string // nil: no header
		want   Format
	}{
		{nil, JSONAPI},
		{[]string{"5.4.0"}, JSONAPI},
		{[]string{"5.4.9"}, JSONAPI},
		{[]string{"5.9.0"}, JSONAPI},
		{[]string{"5.4.0", "5.3.6"}, JSONAPI},
		{[]string{"5.3.6"}, Draupnir},
		{[]string{"5.3.0"}, Draupnir},
		{[]string{"5.0.0"}, Draupnir},
		{[]string{"4.9.0"}, Draupnir},
		{[]string{"6.0.0"}, Draupnir},
		{[]string{"0.0.0"}, Draupnir}, // Draupnir's integration suite's "old client"
		{[]string{"5.3.6", "5.4.0"}, Draupnir},
		// Not versions: only a Draupnir client sends those (an empty one
		// when built without its version); a sindri client sends 5.4.0.
		{[]string{""}, Draupnir},
		{[]string{"5.4"}, Draupnir},
		{[]string{"v5.4.0"}, Draupnir},
		{[]string{"5.04.0"}, Draupnir},
		{[]string{"5.4.0-rc1"}, Draupnir},
		{[]string{"garbage"}, Draupnir},
	} {
		r := httptest.NewRequest("GET", "/images", nil)
		for _, v := range tc.values {
			r.Header.Add(VersionHeader, v)
		}
		if got := FormatOf(r); got != tc.want {
			t.Errorf("%q: %v, want %v", tc.values, got, tc.want)
		}
	}
}

// The bytes a client reads, in each format.
func TestErrorBody(t *testing.T) {
	for _, tc := range []struct {
		name    string
		e       Error
		jsonAPI string
		draup   string
	}{
		{
			name:    "Draupnir's own error for the code",
			e:       Error{Status: 401, Code: "unauthorized", Title: "Unauthorized", Detail: "missing or invalid bearer token"},
			jsonAPI: `{"errors":[{"status":"401","code":"unauthorized","title":"Unauthorized","detail":"missing or invalid bearer token"}]}`,
			draup:   `{"id":"unauthorized","status":"401","code":"unauthorized","title":"Unauthorized","detail":"You do not have permission to view this resource","source":{}}`,
		},
		{
			name:    "image not ready, with Draupnir's source",
			e:       Error{Status: 422, Code: "image_not_ready", Title: "Image not ready", Detail: "image 3 is pending"},
			jsonAPI: `{"errors":[{"status":"422","code":"image_not_ready","title":"Image not ready","detail":"image 3 is pending"}]}`,
			draup:   `{"id":"unprocessable_entity","status":"422","code":"unprocessable_entity","title":"Image Not Ready","detail":"The specified image is not ready to be used","source":{"parameter":"image_id"}}`,
		},
		{
			name:    "a code Draupnir did not have",
			e:       Error{Status: 429, Code: "quota_exceeded", Title: "Quota exceeded", Detail: "you have 5 instances, the limit is 5", Source: Source{Pointer: "/data"}},
			jsonAPI: `{"errors":[{"status":"429","code":"quota_exceeded","title":"Quota exceeded","detail":"you have 5 instances, the limit is 5","source":{"pointer":"/data"}}]}`,
			draup:   `{"id":"quota_exceeded","status":"429","code":"quota_exceeded","title":"Quota exceeded","detail":"you have 5 instances, the limit is 5","source":{"pointer":"/data"}}`,
		},
		{
			name:    "an explicit Draupnir error wins over the code's",
			e:       Error{Status: 404, Code: "resource_not_found", Title: "Resource not found", Detail: "there is no image 9", Draupnir: &DraupnirImageNotFound},
			jsonAPI: `{"errors":[{"status":"404","code":"resource_not_found","title":"Resource not found","detail":"there is no image 9"}]}`,
			draup:   `{"id":"resource_not_found","status":"404","code":"resource_not_found","title":"Image Not Found","detail":"The image you specified could not be found","source":{}}`,
		},
		{
			name:    "invalid version names both",
			e:       Error{Status: 400, Code: "invalid_api_version", Title: "Invalid API version", Detail: "…", Draupnir: DraupnirInvalidAPIVersion("0.0.0", "5.4.0")},
			jsonAPI: `{"errors":[{"status":"400","code":"invalid_api_version","title":"Invalid API version","detail":"…"}]}`,
			draup:   `{"id":"invalid_api_version","status":"400","code":"invalid_api_version","title":"Invalid API Version","detail":"Specified API version (0.0.0) does not match server version (5.4.0)","source":{}}`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := string(tc.e.Body(JSONAPI)); got != tc.jsonAPI+"\n" {
				t.Errorf("JSON:API:\n got %s\nwant %s", got, tc.jsonAPI)
			}
			if got := string(tc.e.Body(Draupnir)); got != tc.draup+"\n" {
				t.Errorf("Draupnir:\n got %s\nwant %s", got, tc.draup)
			}
		})
	}
}

func TestWriteError(t *testing.T) {
	e := Error{Status: 404, Code: "resource_not_found", Title: "Resource not found", Detail: "there is no instance 7"}
	for _, f := range []Format{JSONAPI, Draupnir} {
		w := httptest.NewRecorder()
		WriteError(w, f, e)
		body := e.Body(f)
		if w.Code != http.StatusNotFound || w.Body.String() != string(body) {
			t.Errorf("%v: %d %s", f, w.Code, w.Body)
		}
		h := w.Header()
		if h.Get("Content-Type") != f.MediaType() || h.Get("Content-Length") != strconv.Itoa(len(body)) || h.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("%v: headers %v", f, h)
		}
	}
	if JSONAPI.MediaType() != "application/vnd.api+json" || Draupnir.MediaType() != "application/json" {
		t.Errorf("media types %q %q", JSONAPI.MediaType(), Draupnir.MediaType())
	}
}
