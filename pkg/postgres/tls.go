package postgres

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"time"
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
// reached under hosts (names or IP addresses). Keys are ECDSA P-256: quick
// to make, and accepted by every libpq.
func NewCertificates(hosts []string) (Certificates, error) {
	now := time.Now().Add(-time.Hour) // tolerate a client clock a little behind
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Certificates{}, err
	}
	caTemplate := &x509.Certificate{
		Subject:               pkix.Name{CommonName: "sindri instance CA"},
		NotBefore:             now,
		NotAfter:              now.Add(certificateLifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	caDER, caCert, err := sign(caTemplate, nil, &caKey.PublicKey, caKey)
	if err != nil {
		return Certificates{}, err
	}
	server := &x509.Certificate{
		Subject:     pkix.Name{CommonName: firstOr(hosts, "localhost")},
		NotBefore:   now,
		NotAfter:    now.Add(certificateLifetime),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			server.IPAddresses = append(server.IPAddresses, ip)
		} else {
			server.DNSNames = append(server.DNSNames, h)
		}
	}
	client := &x509.Certificate{
		Subject:     pkix.Name{CommonName: ClientRole},
		NotBefore:   now,
		NotAfter:    now.Add(certificateLifetime),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	out := Certificates{CA: encodePEM("CERTIFICATE", caDER)}
	for _, leaf := range []struct {
		template  *x509.Certificate
		cert, key *string
	}{{server, &out.ServerCert, &out.ServerKey}, {client, &out.ClientCert, &out.ClientKey}} {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return Certificates{}, err
		}
		der, _, err := sign(leaf.template, caCert, &key.PublicKey, caKey)
		if err != nil {
			return Certificates{}, err
		}
		keyDER, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return Certificates{}, err
		}
		*leaf.cert = encodePEM("CERTIFICATE", der)
		*leaf.key = encodePEM("PRIVATE KEY", keyDER)
	}
	return out, nil
}

func firstOr(list []string, fallback string) string {
	if len(list) > 0 {
		return list[0]
	}
	return fallback
}

// sign issues template for pub, signed by parent's key (self-signed when
// parent is nil).
func sign(template, parent *x509.Certificate, pub *ecdsa.PublicKey, signer *ecdsa.PrivateKey) ([]byte, *x509.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, err
	}
	template.SerialNumber = serial
	if parent == nil {
		parent = template
	}
	der, err := x509.CreateCertificate(rand.Reader, template, parent, pub, signer)
	if err != nil {
		return nil, nil, fmt.Errorf("making certificate %q: %w", template.Subject.CommonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	return der, cert, err
}

func encodePEM(kind string, der []byte) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}))
}
