package agent

import (
	"context"
	"errors"
	"io"

	"github.com/twinlet/twinlet/internal/iothub"
	"github.com/twinlet/twinlet/providers"
)

// UploadFile implements providers.FileUploader: IoT Hub file upload over
// HTTPS with the agent's device identity (its SAS signer or X.509
// certificate, and the connection's CA).
func (a *Agent) UploadFile(ctx context.Context, name string, content io.ReaderAt, size int64) (providers.UploadResult, error) {
	if a.up == nil {
		return providers.UploadResult{}, providers.ErrNoUploader
	}
	return Uploader{a.up}.UploadFile(ctx, name, content, size)
}

// Uploader adapts an iothub.FileUploader to providers.FileUploader.
type Uploader struct{ U *iothub.FileUploader }

// UploadFile implements providers.FileUploader.
func (u Uploader) UploadFile(ctx context.Context, name string, content io.ReaderAt, size int64) (providers.UploadResult, error) {
	if u.U == nil {
		return providers.UploadResult{}, errors.New("file upload: no uploader")
	}
	r, err := u.U.Upload(ctx, name, content, size)
	return providers.UploadResult{ID: r.CorrelationID, BlobName: r.BlobName, Container: r.ContainerName, Size: r.Size}, err
}
