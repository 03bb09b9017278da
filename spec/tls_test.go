package spec

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sindri-db/sindri/pkg/servercert"
)

// With http.tls_certificate and tls_private_key set, sindrid serves that
// certificate (not its self-signed one), and a client that trusts it
// verifies the connection.
func TestConfiguredTLSCertificate(t *testing.T) {
	s := startServer(t, "")
	if err := s.stop(); err != nil {
		t.Fatalf("sindrid exit after SIGTERM: %v", err)
	}
	dir := t.TempDir()
	mine, err := servercert.LoadOrCreate(dir, []string{"localhost"})
	if err != nil {
		t.Fatal(err)
	}
	certPath, keyPath := filepath.Join(dir, servercert.CertFile), filepath.Join(dir, servercert.KeyFile)
	config, err := os.ReadFile(s.config)
	if err != nil {
		t.Fatal(err)
	}
	withCert := strings.Replace(string(config), "[http]\n", "[http]\ntls_certificate = \""+certPath+"\"\ntls_private_key = \""+keyPath+"\"\n", 1)
	if withCert == string(config) {
		t.Fatal("no [http] section in the test's config")
	}
	if err := os.WriteFile(s.config, []byte(withCert), 0o600); err != nil {
		t.Fatal(err)
	}
	s.stop = start(t, s.config, s.http)

	pemCert, err := os.ReadFile(certPath)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pemCert)
	conn, err := tls.Dial("tcp", s.https, &tls.Config{RootCAs: roots, ServerName: "localhost"})
	if err != nil {
		t.Fatalf("HTTPS with the configured certificate: %v", err)
	}
	defer conn.Close()
	served := conn.ConnectionState().PeerCertificates[0].Raw
	if !bytes.Equal(served, mine.Certificate[0]) {
		t.Fatal("sindrid serves another certificate than the configured one")
	}
	selfSigned, err := servercert.Load(filepath.Join(s.data, "tls", servercert.CertFile), filepath.Join(s.data, "tls", servercert.KeyFile))
	if err == nil && bytes.Equal(selfSigned.Certificate[0], served) {
		t.Fatal("sindrid serves its self-signed certificate although one is configured")
	}

	// A configured pair that does not load is refused at start, naming it.
	if err := s.stop(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	s.stop = func() error { return nil }
	run, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(run, sindrid, "-config", s.config).CombinedOutput()
	if run.Err() != nil || err == nil || !strings.Contains(string(out), "TLS certificate") {
		t.Fatalf("sindrid with a broken private key: %v, want it to exit naming the certificate\n%s", err, out)
	}
}
