package servercert

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadOrCreateMakesOnceAndReuses(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	a, err := LoadOrCreate(dir, []string{"sindri.example.com", "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := LoadOrCreate(dir, []string{"other"})
	if err != nil {
		t.Fatal(err)
	}
	if Fingerprint(a) != Fingerprint(b) {
		t.Fatal("a second start made a new certificate")
	}
	leaf, err := x509.ParseCertificate(a.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := leaf.VerifyHostname("sindri.example.com"); err != nil {
		t.Fatal(err)
	}
	if err := leaf.VerifyHostname("127.0.0.1"); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(a.Certificate[0])
	if fp := Fingerprint(a); len(fp) != 95 || strings.ReplaceAll(fp, ":", "") != strings.ToUpper(hex.EncodeToString(sum[:])) {
		t.Fatalf("fingerprint %q", fp)
	}
	// The same figure openssl prints, when openssl is there to ask.
	if _, err := exec.LookPath("openssl"); err == nil {
		out, err := exec.Command("openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", filepath.Join(dir, CertFile)).Output()
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(out), Fingerprint(a)) {
			t.Fatalf("openssl says %s, we say %s", out, Fingerprint(a))
		}
	}
}
