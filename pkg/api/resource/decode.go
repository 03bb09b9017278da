package resource

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"
)

// DecodeError is a document that cannot be read as what was asked for,
// with a detail for the person who sent it.
type DecodeError struct {
	// Conflict: the resource object is of another type than the one
	// wanted (JSON:API's 409 Conflict); otherwise the document is
	// malformed (400 Bad Request).
	Conflict bool
	// Pointer is the JSON pointer of the member at fault, such as
	// "/data/attributes/image_id"; "" for the document as a whole.
	Pointer string
	Detail  string
}

func (e *DecodeError) Error() string { return e.Detail }

func malformed(format string, args ...any) *DecodeError {
	return &DecodeError{Detail: fmt.Sprintf(format, args...)}
}

func badAttribute(name, format string, args ...any) *DecodeError {
	return &DecodeError{Pointer: Pointer(name), Detail: fmt.Sprintf(format, args...)}
}

var pointerEscaper = strings.NewReplacer("~", "~0", "/", "~1")

// DecodeJSON decodes data, one JSON value, into v (encoding/json rules:
// unknown object members are ignored). A *DecodeError says what is wrong:
// malformed JSON (with line and column), trailing data, a value of the
// wrong type (naming the field), or a string holding NUL (\u0000, which
// PostgreSQL text cannot store; naming the field). A programming error (v
// not a pointer) is returned as it is.
func DecodeJSON(data []byte, v any) error {
	if err := json.Unmarshal(data, v); err != nil {
		return jsonError(data, err)
	}
	if path, ok := findNUL(data); ok {
		what := "the document"
		if path != "" {
			what = fmt.Sprintf("field %q", path)
		}
		return malformed("%s must not contain a NUL character (\\u0000)", what)
	}
	return nil
}

// DecodeRequest reads a request document {"data":{"type":T,"id":…,
// "attributes":{…}}} and decodes its attributes strictly into attrs, a
// pointer to a struct with encoding/json tags (time.Time takes RFC 3339;
// ID takes ids sent as strings or numbers). It returns data.id ("" when
// absent; a JSON number as its digits), for the caller to compare with the
// URL. Errors are *DecodeError:
//
//   - the document not an object, or data missing, null or not an object:
//     malformed.
//   - type missing, null or "": taken as typ (Draupnir's clients send
//     "type":""). Another type: Conflict, pointing at /data/type.
//   - id "" or null: returned as "" (Draupnir's clients send "id":"").
//   - an attribute attrs does not have (a nil attrs has none), or of the
//     wrong type (the detail names the type expected), a string holding NUL
//     (\u0000), a time outside the years 0000-9999 in UTC: malformed,
//     pointing at the attribute.
//   - attributes absent or null: attrs is left as is. relationships, links
//     and meta are ignored.
func DecodeRequest(data []byte, typ string, attrs any) (id string, err error) {
	raw, err := primaryData(data)
	if err != nil {
		return "", err
	}
	if raw == nil {
		return "", malformed(`the document has no primary data; expected {"data":{"type":%q,"attributes":{...}}}`, typ)
	}
	obj, err := readObject(raw, "data", typ)
	if err != nil {
		return "", err
	}
	if err := obj.decodeAttributes(attrs, true); err != nil {
		return "", err
	}
	return obj.id, nil
}

// Unmarshal decodes a document whose primary data is one resource object
// into v, a pointer to a resource struct: its `jsonapi:"primary,TYPE"`
// field says the type wanted and takes the id (an int64 or a string), its
// json tags name the attributes (unknown ones are ignored), and each
// `jsonapi:"relation,NAME"` field (a pointer to a resource struct) is
// filled from the included resource the relationship names.
func Unmarshal(data []byte, v any) error {
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.IsNil() || rv.Elem().Kind() != reflect.Struct {
		return fmt.Errorf("resource.Unmarshal: want a pointer to a struct, got %T", v)
	}
	doc, err := readDocument(data)
	if err != nil {
		return err
	}
	if doc.data == nil {
		return malformed("the document has no primary data")
	}
	return doc.fill(doc.data, "data", rv.Elem())
}

// UnmarshalList decodes a document whose primary data is a list of
// resource objects into list, a pointer to a slice of resource structs
// (or of pointers to them), as Unmarshal does each. An empty list leaves
// an empty, non-nil slice.
func UnmarshalList(data []byte, list any) error {
	rv := reflect.ValueOf(list)
	if rv.Kind() != reflect.Pointer || rv.IsNil() || rv.Elem().Kind() != reflect.Slice {
		return fmt.Errorf("resource.UnmarshalList: want a pointer to a slice, got %T", list)
	}
	elem := rv.Elem().Type().Elem()
	byPointer := elem.Kind() == reflect.Pointer
	if byPointer {
		elem = elem.Elem()
	}
	if elem.Kind() != reflect.Struct {
		return fmt.Errorf("resource.UnmarshalList: want a slice of structs, got %T", list)
	}
	doc, err := readDocument(data)
	if err != nil {
		return err
	}
	var raws []json.RawMessage
	if doc.data == nil || doc.data[0] != '[' || json.Unmarshal(doc.data, &raws) != nil {
		return malformed("data must be a list of resource objects")
	}
	out := reflect.MakeSlice(rv.Elem().Type(), 0, len(raws))
	for i, raw := range raws {
		v := reflect.New(elem)
		if err := doc.fill(raw, fmt.Sprintf("data[%d]", i), v.Elem()); err != nil {
			return err
		}
		if byPointer {
			out = reflect.Append(out, v)
		} else {
			out = reflect.Append(out, v.Elem())
		}
	}
	rv.Elem().Set(out)
	return nil
}

// primaryData is the data member of the document data, trimmed; nil when
// it is absent or null.
func primaryData(data []byte) (json.RawMessage, error) {
	var doc struct {
		Data json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		var typErr *json.UnmarshalTypeError
		if errors.As(err, &typErr) && typErr.Field == "" {
			return nil, malformed("the document must be a JSON object with a data member, got JSON %s", typErr.Value)
		}
		return nil, jsonError(data, err)
	}
	raw := bytes.TrimSpace(doc.Data)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return nil, nil
	}
	return raw, nil
}

// object is a resource object as read: its type and id, and its
// attributes and relationships undecoded.
type object struct {
	typ, id       string
	attributes    json.RawMessage
	relationships json.RawMessage
}

// readObject reads raw, found at where ("data", "included[2]"), as a
// resource object of type typ: a missing, null or empty type is typ,
// another a conflict.
func readObject(raw json.RawMessage, where, typ string) (object, error) {
	if len(raw) == 0 || raw[0] != '{' {
		return object{}, malformed("%s must be a single resource object", where)
	}
	var res struct {
		Type          *string         `json:"type"`
		ID            json.RawMessage `json:"id"`
		Attributes    json.RawMessage `json:"attributes"`
		Relationships json.RawMessage `json:"relationships"`
	}
	if err := json.Unmarshal(raw, &res); err != nil {
		var typErr *json.UnmarshalTypeError
		if errors.As(err, &typErr) {
			return object{}, malformed("%s.%s must be %s, got JSON %s", where, typErr.Field, jsonKind(typErr.Type), typErr.Value)
		}
		return object{}, jsonError(raw, err)
	}
	if res.Type != nil && *res.Type != "" && *res.Type != typ {
		e := &DecodeError{Conflict: true, Detail: fmt.Sprintf("%s.type is %q, but this endpoint takes %q", where, *res.Type, typ)}
		if where == "data" {
			e.Pointer = "/data/type"
		}
		return object{}, e
	}
	id, err := idText(res.ID, where)
	if err != nil {
		return object{}, err
	}
	return object{typ: typ, id: id, attributes: res.Attributes, relationships: res.Relationships}, nil
}

// idText is the id of the resource object at where: a JSON string, or a
// number as its digits; "" when absent or null.
func idText(raw json.RawMessage, where string) (string, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return "", nil
	}
	switch raw[0] {
	case '"':
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return "", malformed("%s.id: %s", where, err)
		}
		return s, nil
	case '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9':
		return string(raw), nil
	}
	return "", malformed("%s.id must be a string", where)
}

// decodeAttributes decodes o's attributes into v, a pointer to a struct,
// by its json tags: strictly for a request (unknown attributes, NUL
// characters and times outside the years 0000-9999 refused), leniently
// for a response (unknown attributes ignored). A nil v takes no
// attributes.
func (o object) decodeAttributes(v any, strict bool) error {
	raw := bytes.TrimSpace(o.attributes)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return nil
	}
	if raw[0] != '{' {
		return malformed("data.attributes must be an object")
	}
	if v == nil {
		v = &struct{}{}
	}
	if err := decodeInto(raw, v, strict); err != nil {
		var inv *json.InvalidUnmarshalError
		if errors.As(err, &inv) {
			return err
		}
		return attributeError(raw, reflect.TypeOf(v), err, strict)
	}
	if !strict {
		return nil
	}
	if path, ok := findNUL(raw); ok {
		return malformed("attribute %q must not contain a NUL character (\\u0000)", path)
	}
	return checkTimes(v)
}

func decodeInto(data []byte, v any, strict bool) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	if strict {
		dec.DisallowUnknownFields()
	}
	return dec.Decode(v)
}

// document is a response document: its primary data (nil when absent or
// null) and its included resource objects.
type document struct {
	data     json.RawMessage
	included []json.RawMessage
}

func readDocument(data []byte) (*document, error) {
	raw, err := primaryData(data)
	if err != nil {
		return nil, err
	}
	var doc struct {
		Included []json.RawMessage `json:"included"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, malformed("included must be a list of resource objects")
	}
	return &document{data: raw, included: doc.Included}, nil
}

// find is the included resource object of type typ and id.
func (d *document) find(typ, id string) (json.RawMessage, bool) {
	for _, raw := range d.included {
		var ident struct {
			Type string          `json:"type"`
			ID   json.RawMessage `json:"id"`
		}
		if json.Unmarshal(raw, &ident) != nil || ident.Type != typ {
			continue
		}
		if got, err := idText(ident.ID, "included"); err == nil && got == id {
			return raw, true
		}
	}
	return nil, false
}

// fill decodes the resource object raw, found at where, into v, a
// resource struct (see Unmarshal).
func (d *document) fill(raw json.RawMessage, where string, v reflect.Value) error {
	shape, err := shapeOf(v.Type())
	if err != nil {
		return err
	}
	obj, err := readObject(bytes.TrimSpace(raw), where, shape.typ)
	if err != nil {
		return err
	}
	if err := obj.decodeAttributes(v.Addr().Interface(), false); err != nil {
		return fmt.Errorf("decoding %s %s: %w", obj.typ, obj.id, err)
	}
	id := v.Field(shape.id)
	switch id.Kind() {
	case reflect.Int64:
		n, err := strconv.ParseInt(obj.id, 10, 64)
		if err != nil {
			return fmt.Errorf("decoding %s: id %q is not a number", obj.typ, obj.id)
		}
		id.SetInt(n)
	case reflect.String:
		id.SetString(obj.id)
	}
	if len(shape.relations) == 0 || len(obj.relationships) == 0 {
		return nil
	}
	var rels map[string]struct {
		Data json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(obj.relationships, &rels); err != nil {
		return fmt.Errorf("decoding %s %s: relationships must be an object of relationships", obj.typ, obj.id)
	}
	for name, field := range shape.relations {
		rel, ok := rels[name]
		if !ok {
			continue
		}
		var ident *struct {
			Type string          `json:"type"`
			ID   json.RawMessage `json:"id"`
		}
		if err := json.Unmarshal(rel.Data, &ident); err != nil {
			return fmt.Errorf("decoding %s %s: relationship %s must name one resource", obj.typ, obj.id, name)
		}
		if ident == nil {
			continue
		}
		relID, err := idText(ident.ID, "relationships."+name+".data")
		if err != nil {
			return fmt.Errorf("decoding %s %s: %w", obj.typ, obj.id, err)
		}
		inc, ok := d.find(ident.Type, relID)
		if !ok {
			continue // not included: left nil
		}
		target := reflect.New(v.Field(field).Type().Elem())
		if err := d.fill(inc, "included", target.Elem()); err != nil {
			return err
		}
		v.Field(field).Set(target)
	}
	return nil
}

// shape is what a resource struct's jsonapi tags say: its type, the index
// of its id field, and the index of each relation's field by name.
type shape struct {
	typ       string
	id        int
	relations map[string]int
}

func shapeOf(t reflect.Type) (shape, error) {
	s := shape{id: -1, relations: map[string]int{}}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		parts := strings.Split(f.Tag.Get("jsonapi"), ",")
		switch {
		case parts[0] == "primary" && len(parts) > 1:
			if k := f.Type.Kind(); k != reflect.Int64 && k != reflect.String {
				return s, fmt.Errorf("resource: %s.%s: a primary field must be an int64 or a string", t, f.Name)
			}
			s.typ, s.id = parts[1], i
		case parts[0] == "relation" && len(parts) > 1:
			if f.Type.Kind() != reflect.Pointer || f.Type.Elem().Kind() != reflect.Struct {
				return s, fmt.Errorf("resource: %s.%s: a relation field must be a pointer to a resource", t, f.Name)
			}
			s.relations[parts[1]] = i
		}
	}
	if s.id < 0 {
		return s, fmt.Errorf("resource: %s has no jsonapi primary field", t)
	}
	return s, nil
}

// findNUL reports whether the JSON document data holds a string (a value
// or a member name) with a NUL character, and where: a dotted path such as
// "attributes.name" or "list[2]" ("" for the document itself). PostgreSQL
// text cannot hold NUL (SQLSTATE 22021), so such a string is refused up
// front, naming it, rather than failing in the database. JSON cannot carry
// a raw NUL byte, only the escape \u0000, so a document without that
// escape is passed at once.
func findNUL(data []byte) (string, bool) {
	if !bytes.Contains(data, []byte(`\u0000`)) {
		return "", false
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var v any
	if dec.Decode(&v) != nil {
		return "", false
	}
	return nulIn(v, "")
}

func nulIn(v any, path string) (string, bool) {
	switch v := v.(type) {
	case string:
		return path, strings.IndexByte(v, 0) >= 0
	case map[string]any:
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		sort.Strings(keys) // the same answer every time
		for _, k := range keys {
			p := k
			if path != "" {
				p = path + "." + k
			}
			if strings.IndexByte(k, 0) >= 0 {
				return p, true
			}
			if where, ok := nulIn(v[k], p); ok {
				return where, true
			}
		}
	case []any:
		for i, e := range v {
			if where, ok := nulIn(e, fmt.Sprintf("%s[%d]", path, i)); ok {
				return where, true
			}
		}
	}
	return "", false
}

// position is the 1-based line and column of the byte at offset off in
// data. (encoding/json's offsets are "after reading Offset bytes", so the
// offending byte is at Offset-1.)
func position(data []byte, off int64) (line, col int) {
	if off < 0 {
		off = 0
	}
	if off > int64(len(data)) {
		off = int64(len(data))
	}
	before := data[:off]
	line = 1 + bytes.Count(before, []byte{'\n'})
	col = int(off) - bytes.LastIndexByte(before, '\n')
	return line, col
}

// jsonError turns an encoding/json error over data into a *DecodeError
// that says where; an *json.InvalidUnmarshalError (a programming error)
// is returned as it is.
func jsonError(data []byte, err error) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	var inv *json.InvalidUnmarshalError
	switch {
	case errors.As(err, &inv):
		return err
	case errors.As(err, &syn):
		if syn.Offset >= int64(len(data)) && strings.Contains(syn.Error(), "unexpected end") {
			return malformed("malformed JSON: unexpected end of the document")
		}
		line, col := position(data, syn.Offset-1)
		return malformed("malformed JSON at line %d, column %d: %s", line, col, syn.Error())
	case errors.As(err, &typ):
		line, col := position(data, typ.Offset-1)
		what := "the document"
		if typ.Field != "" {
			what = fmt.Sprintf("field %q", typ.Field)
		}
		return malformed("at line %d, column %d: %s must be %s, got JSON %s", line, col, what, jsonKind(typ.Type), typ.Value)
	}
	if name, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		return malformed("unknown field %s", name)
	}
	return malformed("invalid JSON document: %s", strings.TrimPrefix(err.Error(), "json: "))
}

var (
	idType   = reflect.TypeFor[ID]()
	timeType = reflect.TypeFor[time.Time]()
)

// jsonKind describes, for a person, the JSON a Go type takes.
func jsonKind(t reflect.Type) string {
	if t == nil {
		return "a different type"
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t {
	case idType:
		return `a positive integer id (a JSON string such as "3", or a number)`
	case timeType:
		return `an RFC 3339 timestamp (a JSON string such as "2017-05-01T12:00:00Z")`
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "a boolean"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Slice, reflect.Array:
		return "an array"
	case reflect.Map, reflect.Struct:
		return "an object"
	}
	return "a " + t.String()
}

// checkTimes refuses a time attribute (a time.Time or *time.Time field of
// the struct attrs points to) that lies outside the years 0000-9999 in UTC:
// RFC 3339 allows an offset of up to a day, so 9999-12-31T23:00:00-02:00
// parses, but in UTC it is in year 10000, which the API could not write back
// as RFC 3339 (and a client listing it would fail to parse the list).
func checkTimes(attrs any) error {
	v := reflect.ValueOf(attrs)
	if v.Kind() != reflect.Pointer || v.IsNil() || v.Elem().Kind() != reflect.Struct {
		return nil
	}
	v = v.Elem()
	for i := 0; i < v.NumField(); i++ {
		f := v.Type().Field(i)
		fv := v.Field(i)
		if !f.IsExported() {
			continue
		}
		if fv.Kind() == reflect.Pointer {
			if fv.IsNil() {
				continue
			}
			fv = fv.Elem()
		}
		if fv.Type() != timeType {
			continue
		}
		t := fv.Interface().(time.Time)
		if y := t.UTC().Year(); y < 0 || y > 9999 {
			name := f.Name
			if k, _, _ := strings.Cut(f.Tag.Get("json"), ","); k != "" && k != "-" {
				name = k
			}
			return badAttribute(name, "attribute %q must lie between 0000-01-01T00:00:00Z and 9999-12-31T23:59:59Z, got %s in UTC",
				name, t.UTC().Format(time.RFC3339))
		}
	}
	return nil
}

// attributeError finds which attribute of the object rawAttrs made decoding
// into ptrType fail (decoding them one at a time) and names it.
func attributeError(rawAttrs []byte, ptrType reflect.Type, err error, strict bool) error {
	var members map[string]json.RawMessage
	if json.Unmarshal(rawAttrs, &members) == nil && ptrType.Kind() == reflect.Pointer {
		names := make([]string, 0, len(members))
		for name := range members {
			names = append(names, name)
		}
		sort.Strings(names)
		for _, name := range names {
			one, _ := json.Marshal(map[string]json.RawMessage{name: members[name]})
			fresh := reflect.New(ptrType.Elem()).Interface()
			e := decodeInto(one, fresh, strict)
			if e == nil {
				continue
			}
			if _, ok := strings.CutPrefix(e.Error(), "json: unknown field "); ok {
				return badAttribute(name, "unknown attribute %q", name)
			}
			want := jsonKind(fieldType(ptrType.Elem(), name))
			var typ *json.UnmarshalTypeError
			if errors.As(e, &typ) {
				return badAttribute(name, "attribute %q must be %s, got JSON %s", name, want, typ.Value)
			}
			if fieldType(ptrType.Elem(), name) != nil {
				return badAttribute(name, "attribute %q must be %s: %s", name, want, strings.TrimPrefix(e.Error(), "json: "))
			}
			return badAttribute(name, "attribute %q: %s", name, strings.TrimPrefix(e.Error(), "json: "))
		}
	}
	return malformed("data.attributes: %s", strings.TrimPrefix(err.Error(), "json: "))
}

// fieldType is the type of the field of struct type t that encoding/json
// fills from the member name (nil if none, or t is not a struct).
func fieldType(t reflect.Type, name string) reflect.Type {
	if t.Kind() != reflect.Struct {
		return nil
	}
	var fold reflect.Type
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		key := f.Name
		if tag, ok := f.Tag.Lookup("json"); ok {
			k, _, _ := strings.Cut(tag, ",")
			if k == "-" {
				continue
			}
			if k != "" {
				key = k
			}
		}
		if key == name {
			return f.Type
		}
		if fold == nil && strings.EqualFold(key, name) {
			fold = f.Type
		}
	}
	return fold
}

// ID is a resource id in a request's attributes, e.g. POST /instances'
// image_id: Draupnir clients send it as a JSON string ("3"), others as a
// number (3); both decode. An id is a positive decimal int64 in canonical
// form (no sign, no leading zero); anything else makes DecodeRequest fail,
// naming the attribute. JSON null leaves it unchanged (0 = absent). It
// marshals as a number.
type ID int64

// UnmarshalJSON implements json.Unmarshaler.
func (id *ID) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if bytes.Equal(b, []byte("null")) {
		return nil
	}
	s := string(b)
	value := "number " + s
	if len(b) > 0 && b[0] == '"' {
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		value = "string " + strconv.Quote(s)
	} else if len(b) > 0 && (b[0] == '{' || b[0] == '[' || b[0] == 't' || b[0] == 'f') {
		value = map[byte]string{'{': "object", '[': "array", 't': "boolean", 'f': "boolean"}[b[0]]
	}
	n, ok := ParsePositive(s)
	if !ok {
		// An UnmarshalTypeError, so that encoding/json adds the field name.
		return &json.UnmarshalTypeError{Value: value, Type: idType}
	}
	*id = ID(n)
	return nil
}

// ParsePositive parses a positive decimal int64 in canonical form: digits
// only, no leading zero, at most 9223372036854775807.
func ParsePositive(s string) (int64, bool) {
	if s == "" || len(s) > 19 || s[0] == '0' {
		return 0, false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return 0, false
	}
	return n, true
}
