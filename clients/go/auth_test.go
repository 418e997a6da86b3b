package llamafleet

// The Go client against a real Python service that requires a bearer token and mutual TLS: the
// data service as a process (python -m services.data with auth_token, tls_cert, tls_key and
// tls_client_ca), certificates made here with crypto/x509. With the token and a client
// certificate from the service's CA, calls go through; without the token or with a wrong one
// they are UNAUTHENTICATED; without a client certificate, with one from another CA, or in
// plaintext, no connection is made. Needs LLAMAFLEET_PYTHON (scripts/check_go.sh sets it).

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	datav1 "github.com/llamafleet/llamafleet/clients/go/gen/llamafleet/data/v1"
)

const authToken = "go-tok-51f0a7"

type keyPair struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	der  []byte
}

// issue makes a certificate for 127.0.0.1 signed by parent (self-signed when parent is nil).
func issue(t *testing.T, name string, parent *keyPair, isCA bool) *keyPair {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
	}
	if isCA {
		tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
		tmpl.KeyUsage |= x509.KeyUsageCertSign
		tmpl.ExtKeyUsage, tmpl.IPAddresses = nil, nil
	}
	signer, signerKey := tmpl, key
	if parent != nil {
		signer, signerKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &key.PublicKey, signerKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &keyPair{cert: cert, key: key, der: der}
}

func (k *keyPair) write(t *testing.T, dir, name string) (certPath, keyPath string) {
	t.Helper()
	keyDER, err := x509.MarshalPKCS8PrivateKey(k.key)
	if err != nil {
		t.Fatal(err)
	}
	certPath, keyPath = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+".key")
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: k.der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	if err := os.WriteFile(certPath, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return certPath, keyPath
}

func (k *keyPair) tlsCert() tls.Certificate {
	return tls.Certificate{Certificate: [][]byte{k.der}, PrivateKey: k.key, Leaf: k.cert}
}

// startSecuredData runs the data service with the token and mutual TLS; returns its address.
func startSecuredData(t *testing.T, dir, caPath, certPath, keyPath string) string {
	t.Helper()
	addrFile := filepath.Join(dir, "data.addr")
	logFile, err := os.Create(filepath.Join(dir, "data.out"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Getenv("LLAMAFLEET_PYTHON"), "-m", "services.data",
		"host=127.0.0.1", "port=0", "address_file="+addrFile,
		"datasets_dir="+filepath.Join(dir, "datasets"), "shutdown_delay_s=0.1",
		"tls_cert="+certPath, "tls_key="+keyPath, "tls_client_ca="+caPath)
	// The token by environment, as `llamafleet up` passes it (not on a command line).
	cmd.Env = append(os.Environ(), "LLAMAFLEET_DATA_AUTH_TOKEN="+authToken, "HF_HUB_OFFLINE=1")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		logFile.Close()
	})
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		if raw, err := os.ReadFile(addrFile); err == nil && len(raw) > 0 {
			return strings.TrimSpace(string(raw))
		}
		if cmd.ProcessState != nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	out, _ := os.ReadFile(filepath.Join(dir, "data.out"))
	t.Fatalf("data service did not start:\n%s", out)
	return ""
}

func TestTokenAndMutualTLSWithARealService(t *testing.T) {
	if os.Getenv("LLAMAFLEET_PYTHON") == "" {
		t.Skip("LLAMAFLEET_PYTHON is not set (scripts/check_go.sh sets it)")
	}
	dir := t.TempDir()
	ca := issue(t, "ca", nil, true)
	rogueCA := issue(t, "rogue-ca", nil, true)
	server, client, rogue := issue(t, "server", ca, false), issue(t, "client", ca, false), issue(t, "rogue", rogueCA, false)
	caPath, _ := ca.write(t, dir, "ca")
	certPath, keyPath := server.write(t, dir, "server")
	addr := startSecuredData(t, dir, caPath, certPath, keyPath)

	roots := x509.NewCertPool()
	roots.AddCert(ca.cert)
	mtls := func(cert *keyPair) *tls.Config {
		cfg := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
		if cert != nil {
			cfg.Certificates = []tls.Certificate{cert.tlsCert()}
		}
		return cfg
	}
	list := func(opts Options) (codes.Code, error) {
		// Dial blocks until the connection is up: a refused handshake shows as its deadline.
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		c, err := Dial(ctx, Addresses{Data: addr}, opts)
		if err != nil {
			return codes.Unavailable, err // no connection was made
		}
		defer c.Close()
		callCtx, callCancel := c.deadline(context.Background())
		defer callCancel()
		_, err = c.Data.ListDatasets(callCtx, &datav1.ListDatasetsRequest{})
		return status.Code(err), err
	}

	cases := []struct {
		name string
		opts Options
		want codes.Code
	}{
		{"token and client certificate", Options{Token: authToken, TLS: mtls(client)}, codes.OK},
		{"no token", Options{TLS: mtls(client)}, codes.Unauthenticated},
		{"wrong token", Options{Token: "not-" + authToken, TLS: mtls(client)}, codes.Unauthenticated},
		{"no client certificate", Options{Token: authToken, TLS: mtls(nil)}, codes.Unavailable},
		{"certificate from another CA", Options{Token: authToken, TLS: mtls(rogue)}, codes.Unavailable},
		{"plaintext", Options{Token: authToken}, codes.Unavailable},
	}
	refused := 0
	for _, tc := range cases {
		got, err := list(tc.opts)
		if got != tc.want {
			t.Errorf("%s: got %v (%v), want %v", tc.name, got, err, tc.want)
		}
		if got != codes.OK {
			refused++
		}
	}
	// The same from PEM files and the environment the CLI reads (OptionsFromEnv).
	clientCert, clientKey := client.write(t, dir, "client")
	t.Setenv("LLAMAFLEET_TOKEN", authToken)
	t.Setenv("LLAMAFLEET_TLS_CA", caPath)
	t.Setenv("LLAMAFLEET_TLS_CERT", clientCert)
	t.Setenv("LLAMAFLEET_TLS_KEY", clientKey)
	fromEnv, err := OptionsFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	if got, err := list(fromEnv); got != codes.OK {
		t.Errorf("options from the environment: got %v (%v)", got, err)
	}
	t.Setenv("LLAMAFLEET_TLS_KEY", "")
	if _, err := OptionsFromEnv(); err == nil || !strings.Contains(err.Error(), "both") {
		t.Errorf("a certificate without its key: %v", err)
	}

	// The typed error of the client's own wrappers carries the code too.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, Addresses{Data: addr}, Options{TLS: mtls(client)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.PrepareDataset(ctx, &datav1.PrepareDatasetRequest{})
	var lfErr *Error
	if !errors.As(err, &lfErr) || lfErr.Code != codes.Unauthenticated {
		t.Fatalf("PrepareDataset without a token: %v", err)
	}
	t.Logf("FIGURES go_client_auth calls=%d refused=%d", len(cases)+2, refused+1)
}
