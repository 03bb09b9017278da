package api

import (
	"github.com/sindri-db/sindri/pkg/api/resource"
	"github.com/sindri-db/sindri/pkg/engine"
	"github.com/sindri-db/sindri/pkg/store"
)

// The resources as the API renders them, for other views of the same
// services (the web console), so that both show the same words: the
// contract's statuses, the same DATABASE_URL, the same status figures.

// ImageResource is img, as an image service returned it, as the API
// renders it.
func ImageResource(img store.Image) *resource.Image { return imageResource(img) }

// InstanceResource is inst as the API renders it for clients that reach
// instances on hostname; withCredentials includes its TLS login.
func InstanceResource(inst store.Instance, hostname string, withCredentials bool) *resource.Instance {
	return (&Handlers{PublicHostname: hostname}).instanceResource(inst, withCredentials)
}

// BackupResource is b as the API renders it.
func BackupResource(b store.Backup) *resource.Backup { return backupResource(b) }

// StatusResource is st as GET /status renders it, with the product's
// version.
func StatusResource(st engine.Status, version string) *resource.Status {
	return (&Handlers{Version: version}).statusResource(st)
}
