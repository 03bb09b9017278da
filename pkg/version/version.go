// Package version holds sindri's product version and the API version it
// speaks.
package version

// Version is the product version; release builds set it with
// -ldflags "-X github.com/sindri-db/sindri/pkg/version.Version=…".
var Version = "0.1.0-dev"

// API is the Draupnir API version sindri speaks (Draupnir 5 plus sindri's
// additions as minor 4).
const API = "5.4.0"
