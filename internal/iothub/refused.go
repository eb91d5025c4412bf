package iothub

import (
	"errors"

	"github.com/eclipse/paho.mqtt.golang/packets"
)

// IsUnauthorized reports whether a connect error is the hub refusing the
// credentials (CONNACK 4 or 5: a bad or expired token, an unknown,
// disabled or deleted device), as opposed to the hub being unreachable.
// Such an identity will not start working by retrying as is.
func IsUnauthorized(err error) bool {
	return errors.Is(err, packets.ErrorRefusedNotAuthorised) || errors.Is(err, packets.ErrorRefusedBadUsernameOrPassword)
}
