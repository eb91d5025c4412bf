package iothub_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"math/big"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/twinlet/twinlet/internal/hub"
	"github.com/twinlet/twinlet/internal/hub/azurite/azuritetest"
	"github.com/twinlet/twinlet/internal/iothub"
)

const container = "fileupload"

// uploadHub starts Azurite and a hub linked to it.
func uploadHub(t *testing.T) (*hub.Hub, *azuritetest.Azurite) {
	t.Helper()
	az := azuritetest.Start(t)
	az.CreateContainer(container)
	fu, err := hub.ParseStorageConnectionString(az.ConnectionString())
	if err != nil {
		t.Fatal(err)
	}
	fu.Container, fu.CAPEM = container, az.CAPEM
	h, err := hub.New(hub.Options{MQTTAddr: "127.0.0.1:0", HTTPSAddr: "127.0.0.1:0", FileUpload: &fu})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h, az
}

func uploader(t *testing.T, h *hub.Hub, az *azuritetest.Azurite, dc iothub.DeviceConfig, blockSize int) *iothub.FileUploader {
	t.Helper()
	dc.HostName = h.Hostname()
	dc.CAPEM = append(h.CAPEM(), az.CAPEM...)
	u, err := iothub.NewFileUploader(iothub.FileUploadConfig{Device: dc, HTTPSAddr: h.HTTPSAddr(), BlockSize: blockSize, Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(u.Close)
	return u
}

func sasDevice(t *testing.T, h *hub.Hub, id string) iothub.DeviceConfig {
	t.Helper()
	cs, err := h.CreateDevice(id)
	if err != nil {
		t.Fatal(err)
	}
	return iothub.DeviceConfig{DeviceID: id, Signer: iothub.KeySigner{Key: cs.SharedAccessKey}}
}

// notification waits for the next file-upload notification after seq.
func notification(t *testing.T, h *hub.Hub, after *uint64) hub.FileUploadNotification {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		evs, err := h.WaitEvents(ctx, *after)
		if err != nil {
			t.Fatalf("no file-upload notification: %v", err)
		}
		for _, e := range evs {
			*after = e.Seq
			if e.Properties["iothub-message-source"] == hub.FileNotificationSource {
				var n hub.FileUploadNotification
				if err := json.Unmarshal(e.Body, &n); err != nil {
					t.Fatal(err)
				}
				return n
			}
		}
	}
}

func payload(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

func TestFileUploadToAzurite(t *testing.T) {
	h, az := uploadHub(t)
	u := uploader(t, h, az, sasDevice(t, h, "d1"), 1<<20)
	var seq uint64
	for _, tc := range []struct {
		name   string
		size   int
		blocks int
	}{{"small.tar.gz", 1000, 0}, {"diag/big.tar.gz", 3<<20 + 17, 4}} {
		data := payload(tc.size)
		res, err := u.Upload(context.Background(), tc.name, bytes.NewReader(data), int64(len(data)))
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if res.BlobName != "d1/"+tc.name || res.ContainerName != container || res.Blocks != tc.blocks || res.CorrelationID == "" {
			t.Errorf("%s: result %+v", tc.name, res)
		}
		got, err := az.Download(container, res.BlobName)
		if err != nil {
			t.Fatalf("download %s: %v", res.BlobName, err)
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("%s: downloaded %d bytes, sha256 %x; uploaded %d bytes, sha256 %x", tc.name, len(got), sha256.Sum256(got), len(data), sha256.Sum256(data))
		}
		n := notification(t, h, &seq)
		if !n.IsSuccess || n.DeviceID != "d1" || n.BlobName != res.BlobName || n.BlobSizeInBytes != int64(tc.size) || n.CorrelationID != res.CorrelationID ||
			!strings.HasSuffix(n.BlobURI, "/"+container+"/"+res.BlobName) {
			t.Errorf("%s: notification %+v", tc.name, n)
		}
	}
}

func TestFileUploadX509(t *testing.T) {
	h, az := uploadHub(t)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "x1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(der)
	if err := h.CreateX509Device("x1", hex.EncodeToString(sum[:])); err != nil {
		t.Fatal(err)
	}
	cert := &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	u := uploader(t, h, az, iothub.DeviceConfig{DeviceID: "x1", Certificate: cert}, 0)
	data := payload(5000)
	res, err := u.Upload(context.Background(), "cert.bin", bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := az.Download(container, res.BlobName); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("download: %v (%d bytes)", err, len(got))
	}
}

func TestFileUploadStorageDown(t *testing.T) {
	h, az := uploadHub(t)
	u := uploader(t, h, az, sasDevice(t, h, "d2"), 0)
	var seq uint64
	az.Stop()
	data := payload(2000)
	_, err := u.Upload(context.Background(), "down.bin", bytes.NewReader(data), int64(len(data)))
	var ue *iothub.UploadError
	if !errors.As(err, &ue) || ue.Step != "blob" || !ue.Retryable {
		t.Fatalf("upload with the storage down: %v, want a retryable blob error", err)
	}
	if strings.Contains(err.Error(), "sig=") {
		t.Errorf("the error shows the SAS: %v", err)
	}
	if n := notification(t, h, &seq); n.IsSuccess || n.DeviceID != "d2" {
		t.Errorf("notification of the failed upload: %+v", n)
	}
	az.Restart()
	az.CreateContainer(container)
	res, err := u.Upload(context.Background(), "down.bin", bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatalf("retry: %v", err)
	}
	if got, err := az.Download(container, res.BlobName); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("download after the retry: %v", err)
	}
	if n := notification(t, h, &seq); !n.IsSuccess {
		t.Errorf("notification of the retry: %+v", n)
	}
}

// TestFileUploadRefused covers the hub's answers to bad requests: a body
// without blobName, a foreign device's token, an unknown correlation id.
func TestFileUploadRefused(t *testing.T) {
	h, _ := uploadHub(t)
	d := sasDevice(t, h, "d3")
	other := sasDevice(t, h, "d4")
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: h.TLSConfig()}}
	post := func(dc iothub.DeviceConfig, path, body string) (int, string) {
		tok, _ := dc.Signer.Sign(context.Background(), iothub.DeviceResource(h.Hostname(), dc.DeviceID, ""), time.Now().Add(time.Hour))
		req, _ := http.NewRequest(http.MethodPost, "https://"+h.HTTPSAddr()+path+"?api-version=2021-04-12", strings.NewReader(body))
		req.Host = h.Hostname()
		req.Header.Set("Authorization", tok)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if st, body := post(d, "/devices/d3/files", `{}`); st != 400 || !strings.Contains(body, "/blobName") {
		t.Errorf("no blobName: %d %s", st, body)
	}
	if st, body := post(d, "/devices/d3/files", `{"blobName": "../x"}`); st != 400 || !strings.Contains(body, "/blobName") {
		t.Errorf("blobName ..: %d %s", st, body)
	}
	if st, body := post(other, "/devices/d3/files", `{"blobName": "x"}`); st != 401 {
		t.Errorf("another device's token: %d %s", st, body)
	}
	if st, body := post(d, "/devices/d3/files/notifications", `{"correlationId": "nope", "isSuccess": true}`); st != 400 || !strings.Contains(body, "/correlationId") {
		t.Errorf("unknown correlation id: %d %s", st, body)
	}
}

// TestFileUploadSASCheckedByAzurite: the SAS URI twinhub hands a device
// is what lets the PUT into Azurite: signed with the account key, it
// writes that blob; with its signature altered, or for another blob name,
// Azurite refuses it (403). So the uploads above prove twinhub's
// signature, not an emulator that lets anything through.
func TestFileUploadSASCheckedByAzurite(t *testing.T) {
	h, az := uploadHub(t)
	d := sasDevice(t, h, "d5")
	hubClient := &http.Client{Transport: &http.Transport{TLSClientConfig: h.TLSConfig()}}
	tok, _ := d.Signer.Sign(context.Background(), iothub.DeviceResource(h.Hostname(), "d5", ""), time.Now().Add(time.Hour))
	req, _ := http.NewRequest(http.MethodPost, "https://"+h.HTTPSAddr()+"/devices/d5/files?api-version=2021-04-12", strings.NewReader(`{"blobName": "sas.bin"}`))
	req.Host = h.Hostname()
	req.Header.Set("Authorization", tok)
	resp, err := hubClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var sas struct{ CorrelationID, HostName, ContainerName, BlobName, SasToken string }
	err = json.NewDecoder(resp.Body).Decode(&sas)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 || sas.BlobName != "d5/sas.bin" {
		t.Fatalf("POST /devices/d5/files: %d %+v %v", resp.StatusCode, sas, err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(az.CAPEM)
	storage := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	put := func(blob, token string, data []byte) int {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPut, "https://"+sas.HostName+"/"+sas.ContainerName+"/"+blob+token, bytes.NewReader(data))
		req.Header.Set("x-ms-blob-type", "BlockBlob")
		resp, err := storage.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	q, err := url.ParseQuery(strings.TrimPrefix(sas.SasToken, "?"))
	if err != nil || q.Get("sig") == "" || q.Get("sp") != "rcw" || q.Get("sr") != "b" {
		t.Fatalf("sasToken %q: %v", sas.SasToken, err)
	}
	// Another signature of the same length: an HMAC with another key.
	forged := url.Values{}
	for k, v := range q {
		forged[k] = v
	}
	mac := hmac.New(sha256.New, []byte("not the account key"))
	mac.Write([]byte(sas.BlobName))
	forged.Set("sig", base64.StdEncoding.EncodeToString(mac.Sum(nil)))
	data := payload(512)
	if st := put(sas.BlobName, "?"+forged.Encode(), data); st != http.StatusForbidden {
		t.Errorf("PUT with a forged signature: %d, want 403", st)
	}
	if st := put("d5/other.bin", sas.SasToken, data); st != http.StatusForbidden {
		t.Errorf("PUT of another blob with the SAS: %d, want 403", st)
	}
	if _, err := az.Download(container, "d5/other.bin"); err == nil {
		t.Error("the blob the SAS does not name was written")
	}
	if st := put(sas.BlobName, sas.SasToken, data); st != http.StatusCreated {
		t.Fatalf("PUT with twinhub's SAS: %d, want 201", st)
	}
	if got, err := az.Download(container, sas.BlobName); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("download: %v", err)
	}
}
