// Package servercert gives sindrid's HTTPS listener a certificate: the
// configured one, or a self-signed one that it makes once under the data
// path and reuses (minted by pkg/certs), whose SHA-256 fingerprint it
// logs so that clients can pin it.
package servercert

import (
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sindri-db/sindri/pkg/certs"
)

// Files of the self-signed certificate, under its directory.
const (
	CertFile = "server.crt"
	KeyFile  = "server.key"
)

// Load reads a certificate and key pair.
func Load(certFile, keyFile string) (tls.Certificate, error) {
	return tls.LoadX509KeyPair(certFile, keyFile)
}

// LoadOrCreate returns the self-signed certificate in dir, making it for
// hosts (names or IP addresses) when it does not exist yet.
func LoadOrCreate(dir string, hosts []string) (tls.Certificate, error) {
	certPath, keyPath := filepath.Join(dir, CertFile), filepath.Join(dir, KeyFile)
	if cert, err := tls.LoadX509KeyPair(certPath, keyPath); err == nil {
		return cert, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return tls.Certificate{}, fmt.Errorf("reading the self-signed certificate in %s: %w", dir, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return tls.Certificate{}, err
	}
	pair, err := certs.SelfSigned(certs.Request{
		CommonName: hosts[0], Organization: []string{"sindri (self-signed)"}, Hosts: hosts,
		Usage: certs.Server, Lifetime: 5 * 365 * 24 * time.Hour,
	})
	if err != nil {
		return tls.Certificate{}, err
	}
	if err := os.WriteFile(keyPath, []byte(pair.KeyPEM), 0o600); err != nil {
		return tls.Certificate{}, err
	}
	if err := os.WriteFile(certPath, []byte(pair.CertPEM), 0o644); err != nil {
		return tls.Certificate{}, err
	}
	return tls.LoadX509KeyPair(certPath, keyPath)
}

// Fingerprint is the SHA-256 of the leaf certificate, as colon-separated
// hex (the form `openssl x509 -fingerprint -sha256` prints).
func Fingerprint(cert tls.Certificate) string {
	if len(cert.Certificate) == 0 {
		return ""
	}
	sum := sha256.Sum256(cert.Certificate[0])
	h := strings.ToUpper(hex.EncodeToString(sum[:]))
	var parts []string
	for i := 0; i < len(h); i += 2 {
		parts = append(parts, h[i:i+2])
	}
	return strings.Join(parts, ":")
}
