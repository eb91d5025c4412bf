package providers

import (
	"context"
	"errors"
	"io"
)

// FileUploader uploads a file to the blob storage linked to the cloud
// connection (IoT Hub file upload). The agent sets Env.Uploader when it
// runs connected; it is nil otherwise (plan, apply --once without a
// connection).
type FileUploader interface {
	// UploadFile uploads size bytes of content under name; the cloud may
	// prefix the name (IoT Hub prefixes the device id). An error is
	// transient unless it says otherwise.
	UploadFile(ctx context.Context, name string, content io.ReaderAt, size int64) (UploadResult, error)
}

// UploadResult is a completed upload.
type UploadResult struct {
	// ID identifies the upload at the cloud (IoT Hub's correlation id).
	ID string `json:"id"`
	// BlobName is the name the cloud stored the file as.
	BlobName string `json:"blobName"`
	// Container is where it was stored.
	Container string `json:"container,omitempty"`
	// Size is the number of bytes uploaded.
	Size int64 `json:"size"`
}

// ErrNoUploader is returned when a provider needs Env.Uploader and the
// agent has no cloud connection to upload through.
var ErrNoUploader = errors.New("no cloud connection to upload through")
