package hub

import (
	"net/http"
	"strings"
)

// maxBulk is the service's limit of identities per bulk registry call.
const maxBulk = 100

// bulkEntry is one identity of a bulk registry operation
// (ExportImportDevice in the service's model).
type bulkEntry struct {
	ID             string         `json:"id"`
	ModuleID       string         `json:"moduleId,omitempty"`
	ETag           string         `json:"eTag,omitempty"`
	ImportMode     string         `json:"importMode"`
	Status         string         `json:"status,omitempty"`
	StatusReason   *string        `json:"statusReason,omitempty"`
	Authentication Authentication `json:"authentication"`
	TwinETag       string         `json:"twinETag,omitempty"`
	Tags           map[string]any `json:"tags,omitempty"`
	Properties     *struct {
		Desired map[string]any `json:"desired,omitempty"`
	} `json:"properties,omitempty"`
}

var importModes = map[string]string{}

func init() {
	for _, m := range []string{"create", "update", "updateIfMatchETag", "delete", "deleteIfMatchETag", "updateTwin", "updateTwinIfMatchETag"} {
		importModes[strings.ToLower(m)] = m
	}
}

// bulkError is one failed entry of a bulk registry operation.
type bulkError struct {
	DeviceID    string `json:"deviceId"`
	ModuleID    string `json:"moduleId,omitempty"`
	ErrorCode   string `json:"errorCode"`
	ErrorStatus string `json:"errorStatus"`
}

// restBulk is POST /devices: create, update or delete up to 100
// identities (and update their twins) in one call. Entries are applied
// one by one, as the service does, so a failed entry does not undo the
// others; the answer is 200 when all succeeded and 400 listing the
// failures otherwise. A call that breaks the documented rules (1 to 100
// entries, each identity named once) is refused whole with 400
// ArgumentInvalid before any entry applies.
func (h *Hub) restBulk(w http.ResponseWriter, r *http.Request) error {
	var entries []bulkEntry
	if err := readJSON(r, &entries); err != nil {
		return err
	}
	if len(entries) == 0 || len(entries) > maxBulk {
		return apiErr(400, "ArgumentInvalid", 400004, "a bulk operation takes 1 to %d devices, got %d", maxBulk, len(entries))
	}
	seen := make(map[string]bool, len(entries))
	for _, e := range entries {
		k := idKey(e.ID, e.ModuleID)
		if seen[k] {
			return apiErr(400, "ArgumentInvalid", 400004, "%s is named more than once in a bulk operation", describe(e.ID, e.ModuleID))
		}
		seen[k] = true
	}
	errs := []bulkError{}
	for _, e := range entries {
		if err := h.bulkOne(e); err != nil {
			ae := toAPIError(err)
			errs = append(errs, bulkError{DeviceID: e.ID, ModuleID: e.ModuleID, ErrorCode: ae.name, ErrorStatus: ae.msg})
		}
	}
	status := http.StatusOK
	if len(errs) > 0 {
		status = http.StatusBadRequest
	}
	writeJSON(w, status, "", map[string]any{"isSuccessful": len(errs) == 0, "errors": errs, "warnings": []any{}})
	return nil
}

func (h *Hub) bulkOne(e bulkEntry) error {
	in := Identity{DeviceID: e.ID, ModuleID: e.ModuleID, Status: e.Status, StatusReason: e.StatusReason, Authentication: e.Authentication}
	var err error
	// The service reads import modes case-insensitively: azure-iothub
	// sends "create" but "Delete".
	switch mode := importModes[strings.ToLower(e.ImportMode)]; mode {
	case "create":
		_, err = h.putIdentity(in, "")
	case "update":
		_, err = h.putIdentity(in, ifMatchExisting)
	case "updateIfMatchETag":
		if e.ETag == "" {
			return apiErr(400, "ArgumentInvalid", 400004, "updateIfMatchETag of %s without an eTag", e.ID)
		}
		_, err = h.putIdentity(in, normalizeIfMatch(e.ETag))
	case "delete":
		err = h.deleteIdentity(e.ID, e.ModuleID, "*")
	case "deleteIfMatchETag":
		if e.ETag == "" {
			return apiErr(400, "ArgumentInvalid", 400004, "deleteIfMatchETag of %s without an eTag", e.ID)
		}
		err = h.deleteIdentity(e.ID, e.ModuleID, normalizeIfMatch(e.ETag))
	case "updateTwin", "updateTwinIfMatchETag":
		ifMatch := ""
		if mode == "updateTwinIfMatchETag" {
			if e.TwinETag == "" {
				return apiErr(400, "ArgumentInvalid", 400004, "updateTwinIfMatchETag of %s without a twinETag", e.ID)
			}
			ifMatch = normalizeIfMatch(e.TwinETag)
		}
		p := TwinPatch{Tags: e.Tags}
		if e.Properties != nil {
			p.Properties = &struct {
				Desired map[string]any `json:"desired,omitempty"`
			}{Desired: e.Properties.Desired}
		}
		_, err = h.UpdateTwin(e.ID, e.ModuleID, p, false, ifMatch)
	default:
		return apiErr(400, "ArgumentInvalid", 400004, "unknown importMode %q for %s", e.ImportMode, e.ID)
	}
	return err
}
