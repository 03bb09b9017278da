// Package certs mints X.509 certificates with crypto/x509: a CA of its
// own and the leaves it signs (an instance's server and client
// certificates), or a self-signed server certificate (sindrid's HTTPS
// listener without a configured one). Keys are ECDSA P-256: quick to
// make, and accepted by every libpq and browser. Certificates start an
// hour back, to tolerate a client clock a little behind.
package certs

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

// Usage is what a leaf certificate may be used for.
type Usage int

const (
	// Server authenticates a server to its clients (TLS server auth).
	Server Usage = iota
	// Client authenticates a client to a server (TLS client auth).
	Client
)

// Request describes a certificate to mint.
type Request struct {
	CommonName   string
	Organization []string
	// Hosts are the names or IP addresses a server certificate is valid
	// for.
	Hosts    []string
	Usage    Usage
	Lifetime time.Duration
}

// Pair is a certificate and its private key, each PEM-encoded.
type Pair struct {
	CertPEM, KeyPEM string
	cert            *x509.Certificate
	key             *ecdsa.PrivateKey
}

// NewCA mints a self-signed CA that signs leaves only (no intermediate
// CA under it).
func NewCA(commonName string, lifetime time.Duration) (Pair, error) {
	now := notBefore()
	return mint(&x509.Certificate{
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             now,
		NotAfter:              now.Add(lifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}, nil)
}

// Sign mints a leaf certificate that the CA ca signs.
func (ca Pair) Sign(r Request) (Pair, error) {
	if ca.cert == nil || !ca.cert.IsCA {
		return Pair{}, fmt.Errorf("signing %q: not a CA minted by NewCA", r.CommonName)
	}
	return mint(leaf(r), &ca)
}

// SelfSigned mints a leaf certificate signed by its own key.
func SelfSigned(r Request) (Pair, error) {
	return mint(leaf(r), nil)
}

// notBefore is when a certificate minted now starts.
func notBefore() time.Time { return time.Now().Add(-time.Hour) }

func leaf(r Request) *x509.Certificate {
	now := notBefore()
	usage := x509.ExtKeyUsageServerAuth
	if r.Usage == Client {
		usage = x509.ExtKeyUsageClientAuth
	}
	t := &x509.Certificate{
		Subject:     pkix.Name{CommonName: r.CommonName, Organization: r.Organization},
		NotBefore:   now,
		NotAfter:    now.Add(r.Lifetime),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{usage},
	}
	for _, h := range r.Hosts {
		if ip := net.ParseIP(h); ip != nil {
			t.IPAddresses = append(t.IPAddresses, ip)
		} else {
			t.DNSNames = append(t.DNSNames, h)
		}
	}
	return t
}

// mint makes a fresh key and a certificate of template for it, signed by
// parent (by itself when parent is nil), with a random 127-bit serial.
func mint(template *x509.Certificate, parent *Pair) (Pair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Pair{}, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return Pair{}, err
	}
	template.SerialNumber = serial
	issuer, signer := template, key
	if parent != nil {
		issuer, signer = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, template, issuer, &key.PublicKey, signer)
	if err != nil {
		return Pair{}, fmt.Errorf("making certificate %q: %w", template.Subject.CommonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return Pair{}, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return Pair{}, err
	}
	return Pair{
		CertPEM: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		KeyPEM:  string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})),
		cert:    cert,
		key:     key,
	}, nil
}
