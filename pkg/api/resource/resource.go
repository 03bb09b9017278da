// Package resource holds the resources of sindri's API and the one decoder
// of their JSON:API documents.
//
// Each resource is one struct for both sides: pkg/api renders it with
// google/jsonapi by its jsonapi tags (`jsonapi:"primary,images"` names the
// type and the id field, `jsonapi:"attr,name"` an attribute,
// `jsonapi:"relation,credentials"` an included resource), and pkg/client
// decodes it with Unmarshal, by the same jsonapi tags for the type, the id
// and the relations and by the json tags (which name the same attributes)
// for the attributes. The json tags are also what `sindri --json` prints.
//
// Decoding has one path for the server's requests and the client's
// responses: a document's primary data is read as a resource object
// (readObject) and its attributes decoded into a struct by their json tags
// (decodeAttributes), with errors that name the attribute and its JSON
// pointer. DecodeRequest decodes strictly (an unknown attribute, a NUL
// character or a time outside the years 0000-9999 is refused);
// Unmarshal and UnmarshalList take what a newer server adds.
//
// The package imports nothing of sindri's, so that the client stays small.
package resource

import "time"

// Image is the images resource.
type Image struct {
	ID         int64     `jsonapi:"primary,images" json:"id"`
	Name       string    `jsonapi:"attr,name,omitempty" json:"name,omitempty"`
	BackedUpAt time.Time `jsonapi:"attr,backed_up_at,iso8601" json:"backed_up_at"`
	Ready      bool      `jsonapi:"attr,ready" json:"ready"`
	Status     string    `jsonapi:"attr,status" json:"status"`
	Error      string    `jsonapi:"attr,error,omitempty" json:"error,omitempty"`
	PGVersion  string    `jsonapi:"attr,pg_version,omitempty" json:"pg_version,omitempty"`
	SizeBytes  int64     `jsonapi:"attr,size_bytes" json:"size_bytes"`
	// BackupID is the backup the image was restored from; 0: none.
	BackupID int64 `jsonapi:"attr,backup_id,omitempty" json:"backup_id,omitempty"`
	// Anonymised: an anonymisation script ran on the image's data and the
	// scrub after it finished. An image without is the data as uploaded.
	Anonymised bool `jsonapi:"attr,anonymised" json:"anonymised"`
	// SourceID is the source whose refresh made the image; 0: none.
	SourceID int64 `jsonapi:"attr,source_id,omitempty" json:"source_id,omitempty"`
	// Owner is set on a branch (an image of an instance's data), which
	// only its owner and the upload user see; InstanceID is the instance
	// it was made of.
	Owner      string `jsonapi:"attr,owner,omitempty" json:"owner,omitempty"`
	InstanceID int64  `jsonapi:"attr,instance_id,omitempty" json:"instance_id,omitempty"`
	// Hosts are, in a fleet, the hosts holding a ready copy of the image
	// (instances of it can be made there), by name; left out on a single
	// host.
	Hosts     []string  `jsonapi:"attr,hosts,omitempty" json:"hosts,omitempty"`
	CreatedAt time.Time `jsonapi:"attr,created_at,iso8601" json:"created_at"`
	UpdatedAt time.Time `jsonapi:"attr,updated_at,iso8601" json:"updated_at"`
}

// Source is the sources resource: a server that sindri makes images of
// on a schedule. URL is shown without its password (the password, like
// anonymisation_script, is write-only). Schedule is an interval such as
// "6h" or a five-field cron expression in UTC; "" means refreshed only
// when asked. Status is idle, refreshing, streaming (replica mode) or
// failed (with Error; the refresh is retried).
type Source struct {
	ID            int64      `jsonapi:"primary,sources" json:"id"`
	Name          string     `jsonapi:"attr,name" json:"name"`
	URL           string     `jsonapi:"attr,url" json:"url"`
	Mode          string     `jsonapi:"attr,mode" json:"mode"`
	Schedule      string     `jsonapi:"attr,schedule" json:"schedule"`
	Keep          int        `jsonapi:"attr,keep" json:"keep"`
	Status        string     `jsonapi:"attr,status" json:"status"`
	Error         string     `jsonapi:"attr,error,omitempty" json:"error,omitempty"`
	LastRefreshAt *time.Time `jsonapi:"attr,last_refresh_at,iso8601" json:"last_refresh_at"`
	NextRefreshAt *time.Time `jsonapi:"attr,next_refresh_at,iso8601" json:"next_refresh_at"`
	LastImageID   int64      `jsonapi:"attr,last_image_id,omitempty" json:"last_image_id,omitempty"`
	// Replica mode only: how far the standby is behind the source.
	LagBytes   *int64    `jsonapi:"attr,lag_bytes,omitempty" json:"lag_bytes,omitempty"`
	LagSeconds *float64  `jsonapi:"attr,lag_seconds,omitempty" json:"lag_seconds,omitempty"`
	CreatedAt  time.Time `jsonapi:"attr,created_at,iso8601" json:"created_at"`
	UpdatedAt  time.Time `jsonapi:"attr,updated_at,iso8601" json:"updated_at"`
}

// The statuses of a source.
const (
	SourceIdle       = "idle"
	SourceRefreshing = "refreshing"
	SourceStreaming  = "streaming"
	SourceFailed     = "failed"
)

// Host is the hosts resource: one sindrid host of a fleet, as its last
// heartbeat described it; its id is its name. State is active, draining
// (no new instance is placed on it) or down (no heartbeat within the down
// timeout).
type Host struct {
	ID                   string    `jsonapi:"primary,hosts" json:"id"`
	Name                 string    `jsonapi:"attr,name" json:"name"`
	PeerURL              string    `jsonapi:"attr,peer_url" json:"peer_url"`
	PublicHostname       string    `jsonapi:"attr,public_hostname" json:"public_hostname"`
	StorageDriver        string    `jsonapi:"attr,storage_driver" json:"storage_driver"`
	TotalBytes           int64     `jsonapi:"attr,total_bytes" json:"total_bytes"`
	FreeBytes            int64     `jsonapi:"attr,free_bytes" json:"free_bytes"`
	ReserveBytes         int64     `jsonapi:"attr,reserve_bytes" json:"reserve_bytes"`
	Instances            int       `jsonapi:"attr,instances" json:"instances"`
	RunningInstances     int       `jsonapi:"attr,running_instances" json:"running_instances"`
	MaxInstances         int       `jsonapi:"attr,max_instances" json:"max_instances"`
	MemoryTotalBytes     int64     `jsonapi:"attr,memory_total_bytes" json:"memory_total_bytes"`
	MemoryAvailableBytes int64     `jsonapi:"attr,memory_available_bytes" json:"memory_available_bytes"`
	State                string    `jsonapi:"attr,state" json:"state"`
	LastHeartbeatAt      time.Time `jsonapi:"attr,last_heartbeat_at,iso8601" json:"last_heartbeat_at"`
}

// Instance is the instances resource. Credentials is included by the
// answers that carry them (an instance's GET, POST, PATCH and reset), not
// by the list.
type Instance struct {
	ID          int64      `jsonapi:"primary,instances" json:"id"`
	Hostname    string     `jsonapi:"attr,hostname" json:"hostname"`
	ImageID     int64      `jsonapi:"attr,image_id" json:"image_id"`
	Port        int        `jsonapi:"attr,port" json:"port"`
	Status      string     `jsonapi:"attr,status" json:"status"`
	Error       string     `jsonapi:"attr,error,omitempty" json:"error,omitempty"`
	Username    string     `jsonapi:"attr,username" json:"username"`
	Password    string     `jsonapi:"attr,password" json:"password"`
	DatabaseURL string     `jsonapi:"attr,database_url" json:"database_url"`
	ExpiresAt   *time.Time `jsonapi:"attr,expires_at,iso8601" json:"expires_at"` // nil: never
	Protected   bool       `jsonapi:"attr,protected" json:"protected"`
	// Host is, in a fleet, the host the instance lives on; left out on a
	// single host.
	Host        string       `jsonapi:"attr,host,omitempty" json:"host,omitempty"`
	CreatedAt   time.Time    `jsonapi:"attr,created_at,iso8601" json:"created_at"`
	UpdatedAt   time.Time    `jsonapi:"attr,updated_at,iso8601" json:"updated_at"`
	Credentials *Credentials `jsonapi:"relation,credentials,omitempty" json:"credentials,omitempty"`
}

// Credentials are the PEM files of a TLS login as role draupnir, what a
// Draupnir client writes to files; its id is its instance's.
type Credentials struct {
	ID                int64  `jsonapi:"primary,credentials" json:"-"`
	CACertificate     string `jsonapi:"attr,ca_certificate" json:"ca_certificate"`
	ClientCertificate string `jsonapi:"attr,client_certificate" json:"client_certificate"`
	ClientKey         string `jsonapi:"attr,client_key" json:"client_key"`
}

// Backup is the backups resource: an archive (a tar.zst of the data
// directory) of an instance or of an image, as it was when the backup was
// created. Exactly one of InstanceID and ImageID is set. Status is
// "running" while the archive is written, then "done" (with SizeBytes and
// SHA256, in hex) or "failed" (with Error).
type Backup struct {
	ID         int64     `jsonapi:"primary,backups" json:"id"`
	InstanceID int64     `jsonapi:"attr,instance_id,omitempty" json:"instance_id,omitempty"`
	ImageID    int64     `jsonapi:"attr,image_id,omitempty" json:"image_id,omitempty"`
	Status     string    `jsonapi:"attr,status" json:"status"`
	Error      string    `jsonapi:"attr,error,omitempty" json:"error,omitempty"`
	SizeBytes  int64     `jsonapi:"attr,size_bytes" json:"size_bytes"`
	SHA256     string    `jsonapi:"attr,sha256,omitempty" json:"sha256,omitempty"`
	CreatedAt  time.Time `jsonapi:"attr,created_at,iso8601" json:"created_at"`
	UpdatedAt  time.Time `jsonapi:"attr,updated_at,iso8601" json:"updated_at"`
}

// The statuses of a backup.
const (
	BackupRunning = "running"
	BackupDone    = "done"
	BackupFailed  = "failed"
)

// Status is the statuses resource of GET /status (its id is always "1").
type Status struct {
	ID                    string         `jsonapi:"primary,statuses" json:"-"`
	Status                string         `jsonapi:"attr,status" json:"status"` // ok or degraded
	Problems              []string       `jsonapi:"attr,problems,omitempty" json:"problems,omitempty"`
	Version               string         `jsonapi:"attr,version" json:"version"`
	APIVersion            string         `jsonapi:"attr,api_version" json:"api_version"`
	StorageDriver         string         `jsonapi:"attr,storage_driver" json:"storage_driver"`
	TotalBytes            int64          `jsonapi:"attr,total_bytes" json:"total_bytes"`
	FreeBytes             int64          `jsonapi:"attr,free_bytes" json:"free_bytes"`
	UsedByInstancesBytes  int64          `jsonapi:"attr,used_by_instances_bytes" json:"used_by_instances_bytes"`
	UsedByBackupsBytes    int64          `jsonapi:"attr,used_by_backups_bytes" json:"used_by_backups_bytes"`
	Images                map[string]int `jsonapi:"attr,images" json:"images"`
	Instances             map[string]int `jsonapi:"attr,instances" json:"instances"`
	Backups               map[string]int `jsonapi:"attr,backups" json:"backups"`
	ExpectedCloningTimeMS int64          `jsonapi:"attr,expected_cloning_time_ms" json:"expected_cloning_time_ms"`
	// Limits are the [limits] by key, each with its use.
	Limits map[string]*LimitUse `jsonapi:"attr,limits" json:"limits"`
	// Standbys are the replica-mode sources' standbys by source name
	// (the upload user's only).
	Standbys map[string]*Standby `jsonapi:"attr,standbys,omitempty" json:"standbys,omitempty"`
	// Host names this host in a fleet; FleetInstances counts every
	// host's instances by status (a down host's as unavailable). Both
	// left out on a single host.
	Host           string         `jsonapi:"attr,host,omitempty" json:"host,omitempty"`
	FleetInstances map[string]int `jsonapi:"attr,fleet_instances,omitempty" json:"fleet_instances,omitempty"`
}

// Standby is a replica-mode source's standby in GET /status.
type Standby struct {
	Status     string   `json:"status"`
	LagBytes   *int64   `json:"lag_bytes,omitempty"`
	LagSeconds *float64 `json:"lag_seconds,omitempty"`
}

// LimitUse is one limit of GET /status: Limit is 0 when there is none.
// Used is the figure it holds (for a per-user limit the most any one user
// has), Yours the caller's own figure for a per-user limit. The disk
// reserve has Limit in bytes and Free, the free bytes, instead of Used.
type LimitUse struct {
	Limit int64  `json:"limit"`
	Used  *int64 `json:"used,omitempty"`
	Yours *int64 `json:"yours,omitempty"`
	Free  *int64 `json:"free,omitempty"`
}

// Pointer is the JSON pointer to attribute name of a document's primary
// resource object, e.g. "/data/attributes/image_id": the source of an
// error about that attribute.
func Pointer(name string) string {
	return "/data/attributes/" + pointerEscaper.Replace(name)
}
