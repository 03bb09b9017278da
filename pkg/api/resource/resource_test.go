package resource

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/google/jsonapi"
)

var resources = []any{Image{}, Instance{}, Credentials{}, Backup{}, Status{}, Source{}, Host{}}

// The server renders by the jsonapi tags, the client decodes (and `sindri
// --json` prints) by the json tags: each attribute must have one name.
func TestTagsAgree(t *testing.T) {
	for _, r := range resources {
		typ := reflect.TypeOf(r)
		for i := 0; i < typ.NumField(); i++ {
			f := typ.Field(i)
			api := strings.Split(f.Tag.Get("jsonapi"), ",")
			js := strings.Split(f.Tag.Get("json"), ",")
			switch api[0] {
			case "primary":
				if js[0] != "id" && js[0] != "-" {
					t.Errorf("%s.%s: the id is json %q, want \"id\" or \"-\"", typ.Name(), f.Name, js[0])
				}
			case "attr", "relation":
				if js[0] != api[1] {
					t.Errorf("%s.%s: jsonapi name %q, json name %q", typ.Name(), f.Name, api[1], js[0])
				}
				if slicesContain(api[2:], "omitempty") != slicesContain(js[1:], "omitempty") {
					t.Errorf("%s.%s: omitempty in one tag only: %q", typ.Name(), f.Name, f.Tag)
				}
			default:
				t.Errorf("%s.%s: no jsonapi tag", typ.Name(), f.Name)
			}
		}
	}
}

func slicesContain(list []string, s string) bool {
	for _, e := range list {
		if e == s {
			return true
		}
	}
	return false
}

// What the server renders (google/jsonapi, as pkg/api does) the client
// reads back whole: ids, attributes, the included credentials.
func TestRoundTrip(t *testing.T) {
	at := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	exp := at.Add(time.Hour)
	used, yours, free := int64(3), int64(1), int64(700)
	for _, want := range []any{
		&Image{ID: 3, Name: "prod", BackedUpAt: at, Ready: true, Status: "ready", PGVersion: "15", SizeBytes: 42,
			BackupID: 2, Anonymised: true, CreatedAt: at, UpdatedAt: at},
		&Instance{ID: 7, Hostname: "db.example.com", ImageID: 3, Port: 6001, Status: "running", Username: "draupnir",
			Password: "pw", DatabaseURL: "postgres://x", ExpiresAt: &exp, Protected: true, CreatedAt: at, UpdatedAt: at,
			Credentials: &Credentials{ID: 7, CACertificate: "CA", ClientCertificate: "CERT", ClientKey: "KEY"}},
		&Instance{ID: 8, Status: "failed", Error: "boom", CreatedAt: at, UpdatedAt: at},
		&Backup{ID: 4, InstanceID: 7, Status: BackupDone, SizeBytes: 99, SHA256: "ab", CreatedAt: at, UpdatedAt: at},
		&Status{ID: "1", Status: "degraded", Problems: []string{"image 3 failed"}, Version: "1.0", APIVersion: "5.4.0",
			Images: map[string]int{"ready": 1}, Instances: map[string]int{}, Backups: map[string]int{"done": 1},
			Limits: map[string]*LimitUse{"instances_per_user": {Limit: 20, Used: &used, Yours: &yours}, "disk_reserve": {Limit: 5, Free: &free}}},
	} {
		var buf bytes.Buffer
		if err := jsonapi.MarshalPayload(&buf, want); err != nil {
			t.Fatal(err)
		}
		got := reflect.New(reflect.TypeOf(want).Elem())
		if err := Unmarshal(buf.Bytes(), got.Interface()); err != nil {
			t.Fatalf("%T: %v\n%s", want, err, buf.Bytes())
		}
		if !reflect.DeepEqual(got.Interface(), want) {
			t.Errorf("read back %+v\nwant %+v\nfrom %s", got.Elem(), reflect.ValueOf(want).Elem(), buf.Bytes())
		}
	}

	var buf bytes.Buffer
	list := []*Backup{{ID: 2, ImageID: 1, Status: BackupRunning, CreatedAt: at, UpdatedAt: at}, {ID: 1, InstanceID: 5, Status: BackupFailed, Error: "x", CreatedAt: at, UpdatedAt: at}}
	if err := jsonapi.MarshalPayload(&buf, list); err != nil {
		t.Fatal(err)
	}
	var got []Backup
	if err := UnmarshalList(buf.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0] != *list[0] || got[1] != *list[1] {
		t.Errorf("list %+v", got)
	}
	var none []*Image
	if err := UnmarshalList([]byte(`{"data":[]}`), &none); err != nil || none == nil || len(none) != 0 {
		t.Errorf("empty list: %v %#v", err, none)
	}
}

// A newer server's attributes are ignored; a numeric id, a missing
// relationship and an empty type are taken.
func TestUnmarshalLenient(t *testing.T) {
	var inst Instance
	err := Unmarshal([]byte(`{"data":{"type":"","id":12,"attributes":{"port":5,"colour":"red"},"relationships":{"credentials":{"data":null}}}}`), &inst)
	if err != nil || inst.ID != 12 || inst.Port != 5 || inst.Credentials != nil {
		t.Errorf("%v %+v", err, inst)
	}
	// Included but not related: not taken.
	inst = Instance{}
	err = Unmarshal([]byte(`{"data":{"type":"instances","id":"3"},"included":[{"type":"credentials","id":"3","attributes":{"client_key":"K"}}]}`), &inst)
	if err != nil || inst.Credentials != nil {
		t.Errorf("%v %+v", err, inst)
	}
}

func TestUnmarshalErrors(t *testing.T) {
	for _, c := range []struct {
		doc     string
		mention string
	}{
		{`{"data":{"type":"images","id":"1"}}`, `"images", but this endpoint takes "instances"`},
		{`{"data":{"type":"instances","id":"x"}}`, `id "x" is not a number`},
		{`{"data":{"type":"instances","id":"1","attributes":{"port":"5432"}}}`, `attribute "port" must be an integer, got JSON string`},
		{`{"data":{"type":"instances","id":"1","attributes":{"expires_at":"soon"}}}`, `attribute "expires_at" must be an RFC 3339 timestamp`},
		{`{"data":[]}`, "single resource object"},
		{`{"data":null}`, "no primary data"},
		{`{"errors":[{"status":"404"}]}`, "no primary data"},
		{`<html>`, "malformed JSON"},
		{`{"data":{"type":"instances","id":"1","relationships":{"credentials":{"data":[]}}}}`, "relationship credentials must name one resource"},
	} {
		var inst Instance
		err := Unmarshal([]byte(c.doc), &inst)
		if err == nil || !strings.Contains(err.Error(), c.mention) {
			t.Errorf("%s: %v, want an error that mentions %q", c.doc, err, c.mention)
		}
	}
	var list []Image
	if err := UnmarshalList([]byte(`{"data":{"type":"images","id":"1"}}`), &list); err == nil || !strings.Contains(err.Error(), "list") {
		t.Errorf("one resource as a list: %v", err)
	}
	if err := Unmarshal([]byte(`{"data":{}}`), Image{}); err == nil {
		t.Error("a non-pointer target: no error")
	}
}

// DecodeRequest, the server's side of the same path, refuses what
// Unmarshal takes: an unknown attribute, a NUL, a type of another
// endpoint; its errors say where.
func TestDecodeRequestStrict(t *testing.T) {
	var attrs struct {
		Name    string `json:"name"`
		ImageID *ID    `json:"image_id"`
	}
	id, err := DecodeRequest([]byte(`{"data":{"type":"","id":"","attributes":{"name":"x","image_id":"3"}}}`), "instances", &attrs)
	if err != nil || id != "" || attrs.Name != "x" || attrs.ImageID == nil || *attrs.ImageID != 3 {
		t.Fatalf("Draupnir's body: %v %q %+v", err, id, attrs)
	}
	for _, c := range []struct {
		doc      string
		conflict bool
		pointer  string
		mention  string
	}{
		{`{"data":{"type":"images"}}`, true, "/data/type", `"images"`},
		{`{"data":{"attributes":{"colour":"red"}}}`, false, "/data/attributes/colour", `unknown attribute "colour"`},
		{`{"data":{"attributes":{"name":"a\u0000"}}}`, false, "", `attribute "name" must not contain a NUL`},
		{`{"data":{"attributes":{"image_id":"0"}}}`, false, "/data/attributes/image_id", "positive integer"},
	} {
		_, err := DecodeRequest([]byte(c.doc), "instances", &attrs)
		var de *DecodeError
		if !errors.As(err, &de) || de.Conflict != c.conflict || de.Pointer != c.pointer || !strings.Contains(de.Detail, c.mention) {
			t.Errorf("%s: %#v, want conflict %v pointer %q and %q", c.doc, err, c.conflict, c.pointer, c.mention)
		}
	}
}
