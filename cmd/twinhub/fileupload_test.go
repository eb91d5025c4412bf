package main

import (
	"strings"
	"testing"
	"time"
)

func TestFileUploadFlags(t *testing.T) {
	if o, err := fileUpload("", "", "", "", "c", "", time.Hour); o != nil || err != nil {
		t.Errorf("no storage flags: %v %v", o, err)
	}
	o, err := fileUpload("AccountName=acc;AccountKey=Zm9v;BlobEndpoint=https://127.0.0.1:10000/acc", "", "", "", "up", "", time.Minute)
	if err != nil || o.AccountName != "acc" || string(o.AccountKey) != "foo" || o.Container != "up" || o.SASTTL != time.Minute {
		t.Errorf("connection string: %+v %v", o, err)
	}
	if o, err := fileUpload("AccountName=acc;AccountKey=Zm9v", "", "", "", "up", "", time.Minute); err != nil || o.BlobEndpoint != "https://acc.blob.core.windows.net" {
		t.Errorf("default endpoint: %+v %v", o, err)
	}
	for _, tc := range []struct {
		cs, account, key, endpoint, want string
	}{
		{"AccountName=a;AccountKey=Zm9v", "a", "", "", "exclude each other"},
		{"", "a", "", "", "go together"},
		{"", "a", "not base64!", "https://x", "--storage-key"},
		{"", "a", "Zm9v", "http://x", "--blob-endpoint"},
		{"AccountName=a", "", "", "", "AccountKey"},
	} {
		if _, err := fileUpload(tc.cs, tc.account, tc.key, tc.endpoint, "c", "", time.Hour); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc, err, tc.want)
		}
	}
}
