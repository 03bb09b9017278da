package draupnir5

// A Draupnir 5.3.x client, as gocardless/draupnir's
// pkg/server/api/client/client.go and pkg/models (v5.3.6) make its
// requests and read the answers: the same headers, bodies marshalled and
// answers unmarshalled by the same google/jsonapi version with structs
// tagged the same, errors decoded into the same object and printed as
// "Title (Detail)". Written for these tests from reading that code, which
// is not copied here.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/jsonapi"
	"golang.org/x/oauth2"
)

// Image has the tags of Draupnir's models.Image.
type Image struct {
	ID         int       `jsonapi:"primary,images"`
	BackedUpAt time.Time `jsonapi:"attr,backed_up_at,iso8601"`
	Ready      bool      `jsonapi:"attr,ready"`
	Anon       string
	CreatedAt  time.Time `jsonapi:"attr,created_at,iso8601"`
	UpdatedAt  time.Time `jsonapi:"attr,updated_at,iso8601"`
}

// Instance has the tags of Draupnir's models.Instance.
type Instance struct {
	ID           int    `jsonapi:"primary,instances"`
	Hostname     string `jsonapi:"attr,hostname"`
	ImageID      int    `jsonapi:"attr,image_id"`
	UserEmail    string
	RefreshToken string
	CreatedAt    time.Time `jsonapi:"attr,created_at,iso8601"`
	UpdatedAt    time.Time `jsonapi:"attr,updated_at,iso8601"`
	Port         uint16    `jsonapi:"attr,port"`

	Credentials *InstanceCredentials `jsonapi:"relation,credentials"`
}

// InstanceCredentials has the tags of Draupnir's
// models.InstanceCredentials.
type InstanceCredentials struct {
	ID                int    `jsonapi:"primary,credentials"`
	CACertificate     string `jsonapi:"attr,ca_certificate"`
	ClientCertificate string `jsonapi:"attr,client_certificate"`
	ClientKey         string `jsonapi:"attr,client_key"`
}

// The request bodies: structs without a primary tag, so that the library
// writes "type":"" and "id":"".
type createInstanceRequest struct {
	ImageID string `jsonapi:"attr,image_id"`
}

type createImageRequest struct {
	BackedUpAt time.Time `jsonapi:"attr,backed_up_at,iso8601"`
	Anon       string    `jsonapi:"attr,anonymisation_script"`
}

type createAccessTokenRequest struct {
	State string `jsonapi:"attr,state"`
}

// APIError is Draupnir's api.Error, the object its client decodes an error
// answer into.
type APIError struct {
	ID     string      `json:"id"`
	Status string      `json:"status"`
	Code   string      `json:"code"`
	Title  string      `json:"title"`
	Detail string      `json:"detail"`
	Source ErrorSource `json:"source,omitempty"`
}

// ErrorSource is Draupnir's api.ErrorSource.
type ErrorSource struct {
	Pointer   string `json:"pointer,omitempty"`
	Parameter string `json:"parameter,omitempty"`
}

// refusal is the error the client returns for an answer it did not want:
// what it prints is Error(), "Title (Detail)"; the test also reads the
// decoded object and the status.
type refusal struct {
	status int
	obj    APIError
}

func (r *refusal) Error() string { return fmt.Sprintf("%s (%s)", r.obj.Title, r.obj.Detail) }

// Client is Draupnir's client.Client.
type Client struct {
	url     string
	token   oauth2.Token
	version string // what the client was built with (version.Version)
	client  *http.Client
}

func NewClient(url string, token oauth2.Token, version string) Client {
	return Client{url: url, token: token, version: version, client: &http.Client{Timeout: 5 * time.Minute}}
}

func (c Client) GetLatestImage() (Image, error) {
	var image Image
	images, err := c.ListImages()
	if err != nil {
		return image, err
	}
	sort.Slice(images, func(i, j int) bool { return images[i].UpdatedAt.After(images[j].UpdatedAt) })
	for _, image := range images {
		if image.Ready {
			return image, nil
		}
	}
	return image, errors.New("no images available")
}

func (c Client) GetImage(id string) (Image, error) {
	var image Image
	resp, err := c.get("/images/" + id)
	if err != nil {
		return image, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return image, parseError(resp)
	}
	err = jsonapi.UnmarshalPayload(resp.Body, &image)
	return image, err
}

func (c Client) GetInstance(id string) (Instance, error) {
	var instance Instance
	resp, err := c.get("/instances/" + id)
	if err != nil {
		return instance, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return instance, parseError(resp)
	}
	err = jsonapi.UnmarshalPayload(resp.Body, &instance)
	return instance, err
}

func (c Client) ListImages() ([]Image, error) {
	var images []Image
	resp, err := c.get("/images")
	if err != nil {
		return images, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return images, parseError(resp)
	}
	maybeImages, err := jsonapi.UnmarshalManyPayload(resp.Body, reflect.TypeOf(images))
	if err != nil {
		return nil, err
	}
	images = make([]Image, 0)
	for _, image := range maybeImages {
		images = append(images, *image.(*Image))
	}
	return images, nil
}

func (c Client) ListInstances() ([]Instance, error) {
	var instances []Instance
	resp, err := c.get("/instances")
	if err != nil {
		return instances, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return instances, parseError(resp)
	}
	maybeInstances, err := jsonapi.UnmarshalManyPayload(resp.Body, reflect.TypeOf(instances))
	if err != nil {
		return nil, err
	}
	instances = make([]Instance, 0)
	for _, instance := range maybeInstances {
		instances = append(instances, *instance.(*Instance))
	}
	return instances, nil
}

func (c Client) CreateInstance(image Image) (Instance, error) {
	var instance Instance
	request := createInstanceRequest{ImageID: strconv.Itoa(image.ID)}
	var payload bytes.Buffer
	if err := jsonapi.MarshalOnePayloadWithoutIncluded(&payload, &request); err != nil {
		return instance, err
	}
	resp, err := c.post("/instances", &payload)
	if err != nil {
		return instance, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return instance, parseError(resp)
	}
	err = jsonapi.UnmarshalPayload(resp.Body, &instance)
	return instance, err
}

func (c Client) DestroyInstance(instance Instance) error {
	resp, err := c.delete(fmt.Sprintf("/instances/%d", instance.ID))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		return parseError(resp)
	}
	return nil
}

func (c Client) CreateImage(backedUpAt time.Time, anon []byte) (Image, error) {
	var image Image
	request := createImageRequest{BackedUpAt: backedUpAt, Anon: string(anon)}
	var payload bytes.Buffer
	if err := jsonapi.MarshalOnePayloadWithoutIncluded(&payload, &request); err != nil {
		return image, err
	}
	resp, err := c.post("/images", &payload)
	if err != nil {
		return image, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return image, parseError(resp)
	}
	err = jsonapi.UnmarshalPayload(resp.Body, &image)
	return image, err
}

func (c Client) FinaliseImage(imageID int) (Image, error) {
	var image Image
	var emptyPayload bytes.Buffer
	resp, err := c.post(fmt.Sprintf("/images/%d/done", imageID), &emptyPayload)
	if err != nil {
		return image, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return image, parseError(resp)
	}
	err = jsonapi.UnmarshalPayload(resp.Body, &image)
	return image, err
}

func (c Client) DestroyImage(image Image) error {
	resp, err := c.delete(fmt.Sprintf("/images/%d", image.ID))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		return parseError(resp)
	}
	return nil
}

func (c Client) CreateAccessToken(state string) (oauth2.Token, error) {
	var token oauth2.Token
	request := createAccessTokenRequest{State: state}
	var payload bytes.Buffer
	if err := jsonapi.MarshalOnePayloadWithoutIncluded(&payload, &request); err != nil {
		return token, err
	}
	resp, err := c.post("/access_tokens", &payload)
	if err != nil {
		return token, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return token, parseError(resp)
	}
	err = json.NewDecoder(resp.Body).Decode(&token)
	return token, err
}

func (c Client) do(req *http.Request) (*http.Response, error) {
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", fmt.Sprintf("Bearer %s", c.token.RefreshToken))
	req.Header.Set("Draupnir-Version", c.version)
	return c.client.Do(req)
}

func (c Client) get(path string) (*http.Response, error) {
	req, err := http.NewRequest(http.MethodGet, c.url+path, strings.NewReader(""))
	if err != nil {
		return nil, err
	}
	return c.do(req)
}

func (c Client) post(path string, payload *bytes.Buffer) (*http.Response, error) {
	req, err := http.NewRequest(http.MethodPost, c.url+path, payload)
	if err != nil {
		return nil, err
	}
	return c.do(req)
}

func (c Client) delete(path string) (*http.Response, error) {
	req, err := http.NewRequest(http.MethodDelete, c.url+path, strings.NewReader(""))
	if err != nil {
		return nil, err
	}
	return c.do(req)
}

// parseError decodes the answer as the client does: one JSON object into
// APIError (which it then prints as "Title (Detail)").
func parseError(resp *http.Response) error {
	var apiError APIError
	if err := json.NewDecoder(resp.Body).Decode(&apiError); err != nil {
		return err
	}
	return &refusal{status: resp.StatusCode, obj: apiError}
}

// bodyOf returns the body the client sends for v, for the tests to show.
func bodyOf(v any) string {
	var b bytes.Buffer
	if err := jsonapi.MarshalOnePayloadWithoutIncluded(&b, v); err != nil {
		return err.Error()
	}
	return b.String()
}
