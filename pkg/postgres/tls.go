package postgres

import (
	"time"

	"github.com/sindri-db/sindri/pkg/certs"
)

// ClientRole is the role a client certificate logs in as; its common name
// is this name, as Draupnir's clients expect.
const ClientRole = "draupnir"

// Certificates is an instance's TLS material, PEM-encoded: a CA of its
// own, the server's certificate signed by it, and a client certificate
// (common name "draupnir") signed by it.
type Certificates struct {
	CA         string
	ServerCert string
	ServerKey  string
	ClientCert string
	ClientKey  string
}

// certificateLifetime is long enough to outlive any instance.
const certificateLifetime = 10 * 365 * 24 * time.Hour

// NewCertificates makes fresh TLS material for an instance whose server is
// reached under hosts (names or IP addresses).
func NewCertificates(hosts []string) (Certificates, error) {
	ca, err := certs.NewCA("sindri instance CA", certificateLifetime)
	if err != nil {
		return Certificates{}, err
	}
	name := "localhost"
	if len(hosts) > 0 {
		name = hosts[0]
	}
	server, err := ca.Sign(certs.Request{CommonName: name, Hosts: hosts, Usage: certs.Server, Lifetime: certificateLifetime})
	if err != nil {
		return Certificates{}, err
	}
	client, err := ca.Sign(certs.Request{CommonName: ClientRole, Usage: certs.Client, Lifetime: certificateLifetime})
	if err != nil {
		return Certificates{}, err
	}
	return Certificates{
		CA:         ca.CertPEM,
		ServerCert: server.CertPEM, ServerKey: server.KeyPEM,
		ClientCert: client.CertPEM, ClientKey: client.KeyPEM,
	}, nil
}
