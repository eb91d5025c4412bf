package hub

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
)

func signForTest(key []byte, sr, se string) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(sr + "\n" + se))
	return base64.StdEncoding.EncodeToString(m.Sum(nil))
}
