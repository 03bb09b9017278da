package api

import (
	"encoding/json"
	"net/http"
	"strconv"
	"sync"

	"github.com/sindri-db/sindri/pkg/api/resource"
)

// writeInstanceList writes instances (without credentials) as
// WriteResources would, byte for byte (attributes in jsonapi's order, by
// name; times in UTC to the second, a zero time left out, a nil
// expires_at null; strings escaped as encoding/json escapes them), for
// GET /instances: jsonapi's reflection and its map per resource took
// 20 ms and more to render a thousand of them.
// TestInstanceListRendersAsJSONAPI holds the two to the same bytes.
func writeInstanceList(w http.ResponseWriter, status int, instances []*resource.Instance) error {
	fragments := make([][]byte, len(instances))
	for i, inst := range instances {
		fragments[i] = appendInstance(nil, inst)
	}
	return writeInstanceFragments(w, status, fragments)
}

// writeInstanceFragments writes instances already rendered by
// appendInstance as one list, through a buffer of its own: a list of a
// thousand is 400 kB, not worth a copy of its own per request.
func writeInstanceFragments(w http.ResponseWriter, status int, fragments [][]byte) error {
	const open, end = `{"data":[`, "]}\n"
	n := len(open) + len(end) + max(len(fragments)-1, 0)
	for _, f := range fragments {
		n += len(f)
	}
	h := w.Header()
	h.Set("Content-Type", formatOf(w).MediaType())
	h.Set("Content-Length", strconv.Itoa(n))
	w.WriteHeader(status)
	bp := writeBuffers.Get().(*[]byte)
	defer writeBuffers.Put(bp)
	buf := append((*bp)[:0], open...)
	for i, f := range fragments {
		if len(buf)+len(f)+1 > cap(buf) {
			if _, err := w.Write(buf); err != nil {
				return err
			}
			buf = buf[:0]
		}
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = append(buf, f...)
	}
	buf = append(buf, end...)
	_, err := w.Write(buf)
	*bp = buf[:0]
	return err
}

// writeBuffers are writeInstanceFragments's buffers.
var writeBuffers = sync.Pool{New: func() any { b := make([]byte, 0, 32<<10); return &b }}

// appendInstance appends inst as one resource of writeInstanceList's
// list.
func appendInstance(buf []byte, inst *resource.Instance) []byte {
	buf = append(buf, `{"type":"instances","id":"`...)
	buf = strconv.AppendInt(buf, inst.ID, 10)
	buf = append(buf, `","attributes":{`...)
	if !inst.CreatedAt.IsZero() {
		buf = append(buf, `"created_at":"`...)
		buf = inst.CreatedAt.UTC().AppendFormat(buf, iso8601)
		buf = append(buf, `",`...)
	}
	buf = append(buf, `"database_url":`...)
	buf = appendJSONString(buf, inst.DatabaseURL)
	if inst.Error != "" {
		buf = append(buf, `,"error":`...)
		buf = appendJSONString(buf, inst.Error)
	}
	buf = append(buf, `,"expires_at":`...)
	if inst.ExpiresAt == nil {
		buf = append(buf, "null"...)
	} else {
		buf = append(buf, '"')
		buf = inst.ExpiresAt.UTC().AppendFormat(buf, iso8601)
		buf = append(buf, '"')
	}
	if inst.Host != "" {
		buf = append(buf, `,"host":`...)
		buf = appendJSONString(buf, inst.Host)
	}
	buf = append(buf, `,"hostname":`...)
	buf = appendJSONString(buf, inst.Hostname)
	buf = append(buf, `,"image_id":`...)
	buf = strconv.AppendInt(buf, inst.ImageID, 10)
	buf = append(buf, `,"password":`...)
	buf = appendJSONString(buf, inst.Password)
	buf = append(buf, `,"port":`...)
	buf = strconv.AppendInt(buf, int64(inst.Port), 10)
	buf = append(buf, `,"protected":`...)
	buf = strconv.AppendBool(buf, inst.Protected)
	buf = append(buf, `,"status":`...)
	buf = appendJSONString(buf, inst.Status)
	if !inst.UpdatedAt.IsZero() {
		buf = append(buf, `,"updated_at":"`...)
		buf = inst.UpdatedAt.UTC().AppendFormat(buf, iso8601)
		buf = append(buf, '"')
	}
	buf = append(buf, `,"username":`...)
	buf = appendJSONString(buf, inst.Username)
	buf = append(buf, "}}"...)
	return buf
}

// iso8601 is the layout of jsonapi's iso8601 tag.
const iso8601 = "2006-01-02T15:04:05Z"

// appendJSONString appends s as encoding/json writes a string: printable
// ASCII but the quote, the backslash and <, >, & (escaped for HTML) as it
// is; anything else through encoding/json itself.
func appendJSONString(buf []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			quoted, err := json.Marshal(s)
			if err != nil { // cannot fail for a string
				panic(err)
			}
			return append(buf, quoted...)
		}
	}
	buf = append(buf, '"')
	buf = append(buf, s...)
	return append(buf, '"')
}
