package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/twinlet/twinlet/internal/hub"
	"github.com/twinlet/twinlet/internal/hub/azurite/azuritetest"
	"github.com/twinlet/twinlet/internal/iothub"
)

// A file uploaded through twinhub into Azurite shows up in `twinctl
// events` as a file-upload notification.
func TestEventsShowFileUploadNotifications(t *testing.T) {
	az := azuritetest.Start(t)
	az.CreateContainer("fileupload")
	fu, err := hub.ParseStorageConnectionString(az.ConnectionString())
	if err != nil {
		t.Fatal(err)
	}
	fu.Container, fu.CAPEM = "fileupload", az.CAPEM
	h, err := hub.New(hub.Options{MQTTAddr: "127.0.0.1:0", HTTPSAddr: "127.0.0.1:0", FileUpload: &fu})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, h.CAPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, h: h, vars: map[string]string{"TWINCTL_HUB": h.OwnerConnectionString(), "TWINCTL_CA": ca, "TWINCTL_HUB_ADDR": h.HTTPSAddr()}}
	cs, err := h.CreateDevice("d1")
	if err != nil {
		t.Fatal(err)
	}
	up, err := iothub.NewFileUploader(iothub.FileUploadConfig{HTTPSAddr: h.HTTPSAddr(), Timeout: time.Minute, Device: iothub.DeviceConfig{
		HostName: h.Hostname(), DeviceID: "d1", Signer: iothub.KeySigner{Key: cs.SharedAccessKey}, CAPEM: append(h.CAPEM(), az.CAPEM...)}})
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	data := []byte("bundle bytes")
	if _, err := up.Upload(context.Background(), "logs.tar.gz", bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	var evs []struct {
		DeviceID   string            `json:"deviceId"`
		Properties map[string]string `json:"properties"`
		Body       struct {
			BlobName        string `json:"blobName"`
			BlobSizeInBytes int64  `json:"blobSizeInBytes"`
			IsSuccess       bool   `json:"isSuccess"`
		} `json:"body"`
	}
	if err := json.Unmarshal([]byte(e.ok("events", "-o", "json")), &evs); err != nil {
		t.Fatal(err)
	}
	if len(evs) != 1 || evs[0].DeviceID != "d1" || evs[0].Properties["iothub-message-source"] != hub.FileNotificationSource ||
		evs[0].Body.BlobName != "d1/logs.tar.gz" || evs[0].Body.BlobSizeInBytes != int64(len(data)) || !evs[0].Body.IsSuccess {
		t.Errorf("events: %+v", evs)
	}
}
