package certs

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"testing"
	"time"
)

func parse(t *testing.T, p Pair) *x509.Certificate {
	t.Helper()
	if _, err := tls.X509KeyPair([]byte(p.CertPEM), []byte(p.KeyPEM)); err != nil {
		t.Fatalf("certificate and key do not match: %v", err)
	}
	block, _ := pem.Decode([]byte(p.CertPEM))
	if block == nil {
		t.Fatal("no PEM certificate")
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// A CA's leaves verify against it for their use and hosts, and for
// nothing else; the CA signs no CA under it.
func TestCASignsServerAndClientLeaves(t *testing.T) {
	ca, err := NewCA("test CA", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(parse(t, ca))
	server, err := ca.Sign(Request{CommonName: "db.example.com", Hosts: []string{"db.example.com", "127.0.0.1"}, Usage: Server, Lifetime: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	client, err := ca.Sign(Request{CommonName: "draupnir", Usage: Client, Lifetime: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	sc, cc := parse(t, server), parse(t, client)
	for _, host := range []string{"db.example.com", "127.0.0.1"} {
		if _, err := sc.Verify(x509.VerifyOptions{Roots: roots, DNSName: host}); err != nil {
			t.Errorf("server certificate for %s: %v", host, err)
		}
	}
	if _, err := sc.Verify(x509.VerifyOptions{Roots: roots, DNSName: "other.example.com"}); err == nil {
		t.Error("the server certificate verifies for a host it was not minted for")
	}
	if _, err := cc.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("client certificate: %v", err)
	}
	if _, err := cc.Verify(x509.VerifyOptions{Roots: roots}); err == nil {
		t.Error("the client certificate verifies as a server's")
	}
	if cc.Subject.CommonName != "draupnir" {
		t.Errorf("client common name %q", cc.Subject.CommonName)
	}
	if sc.NotBefore.After(time.Now().Add(-50 * time.Minute)) {
		t.Errorf("NotBefore %s: a client clock a little behind would refuse it", sc.NotBefore)
	}
	if sc.SerialNumber.Cmp(cc.SerialNumber) == 0 {
		t.Error("two certificates share a serial number")
	}
	if _, err := server.Sign(Request{CommonName: "x", Lifetime: 24 * time.Hour}); err == nil {
		t.Error("a leaf signed a certificate")
	}
}

func TestSelfSignedServer(t *testing.T) {
	p, err := SelfSigned(Request{CommonName: "sindri.example.com", Organization: []string{"sindri (self-signed)"},
		Hosts: []string{"sindri.example.com", "::1"}, Usage: Server, Lifetime: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	c := parse(t, p)
	roots := x509.NewCertPool()
	roots.AddCert(c)
	for _, host := range []string{"sindri.example.com", "::1"} {
		if _, err := c.Verify(x509.VerifyOptions{Roots: roots, DNSName: host}); err != nil {
			t.Errorf("%s: %v", host, err)
		}
	}
	if c.IsCA {
		t.Error("a self-signed server certificate is a CA")
	}
}
