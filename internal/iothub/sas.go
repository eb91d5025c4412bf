// Package iothub holds the Azure IoT Hub clients: connection strings, SAS
// signers, the device client (MQTT) and the service client (REST). Token
// parsing and verification, which only the emulator needs, live in
// internal/sas.
package iothub

import (
	"time"

	"github.com/twinlet/twinlet/internal/sas"
)

// NewSASToken signs a token for resourceURI (e.g. "host/devices/d1", not
// encoded) with the decoded key, valid until expiry. keyName is the shared
// access policy name, empty for device and module keys.
func NewSASToken(resourceURI string, key []byte, keyName string, expiry time.Time) string {
	return sas.New(resourceURI, key, keyName, expiry)
}

// DeviceResource is the SAS resource URI of a device, or of a module when
// moduleID is not empty.
func DeviceResource(host, deviceID, moduleID string) string {
	r := host + "/devices/" + deviceID
	if moduleID != "" {
		r += "/modules/" + moduleID
	}
	return r
}
