package hub

import (
	"encoding/json"
	"fmt"
	"time"
)

// Twin is a device or module twin in the service's JSON shape.
type Twin struct {
	DeviceID                  string         `json:"deviceId"`
	ModuleID                  string         `json:"moduleId,omitempty"`
	Etag                      string         `json:"etag"`
	DeviceEtag                string         `json:"deviceEtag"`
	Status                    string         `json:"status,omitempty"`
	StatusReason              *string        `json:"statusReason,omitempty"`
	StatusUpdateTime          time.Time      `json:"statusUpdateTime"`
	ConnectionState           string         `json:"connectionState"`
	LastActivityTime          time.Time      `json:"lastActivityTime"`
	CloudToDeviceMessageCount int            `json:"cloudToDeviceMessageCount"`
	AuthenticationType        string         `json:"authenticationType"`
	X509Thumbprint            X509Thumbprint `json:"x509Thumbprint"`
	ModelID                   string         `json:"modelId"`
	Version                   int64          `json:"version"`
	Tags                      map[string]any `json:"tags"`
	Properties                TwinProperties `json:"properties"`
	Capabilities              *Capabilities  `json:"capabilities,omitempty"`
	// Configurations holds the status of each configuration targeting the
	// twin (configurations.[[id]].status in queries).
	Configurations map[string]ConfigStatus `json:"configurations,omitempty"`
}

// TwinProperties holds the desired and reported sections, each with its
// "$version" and "$metadata".
type TwinProperties struct {
	Desired  map[string]any `json:"desired"`
	Reported map[string]any `json:"reported"`
}

// TwinPatch is what a back end may change in a twin: tags and desired
// properties. Nil leaves a part alone.
type TwinPatch struct {
	Tags       map[string]any `json:"tags,omitempty"`
	Properties *struct {
		Desired map[string]any `json:"desired,omitempty"`
	} `json:"properties,omitempty"`
}

func (r *record) twin() Twin {
	id := &r.Identity
	var cs map[string]ConfigStatus
	if len(r.Twin.Configs) > 0 {
		cs = make(map[string]ConfigStatus, len(r.Twin.Configs)/2)
		for i := 0; i < len(r.Twin.Configs); i += 2 {
			cs[r.Twin.Configs[i]] = ConfigStatus{r.Twin.Configs[i+1]}
		}
	}
	return Twin{
		Configurations: cs,
		DeviceID:       id.DeviceID, ModuleID: id.ModuleID,
		Etag: r.Twin.etag(), DeviceEtag: id.Etag,
		Status: id.Status, StatusReason: id.StatusReason, StatusUpdateTime: id.StatusUpdatedTime,
		ConnectionState: id.ConnectionState, LastActivityTime: id.LastActivityTime,
		CloudToDeviceMessageCount: id.CloudToDeviceMessageCount,
		AuthenticationType:        id.Authentication.Type, X509Thumbprint: id.Authentication.X509Thumbprint,
		Version:      r.Twin.Version,
		Tags:         r.Twin.Tags.obj(),
		Capabilities: id.Capabilities,
		Properties: TwinProperties{
			Desired:  withSystem(r.Twin.Desired, r.Twin.DesiredMeta, r.Twin.DesiredVersion, true),
			Reported: withSystem(r.Twin.Reported, r.Twin.ReportedMeta, r.Twin.ReportedVersion, true),
		},
	}
}

// Twin returns a copy of a device's (moduleID empty) or module's twin.
func (h *Hub) Twin(deviceID, moduleID string) (Twin, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	r, ok := h.records[idKey(deviceID, moduleID)]
	if !ok {
		return Twin{}, notFound(deviceID, moduleID)
	}
	return r.twin(), nil
}

// UpdateTwin changes tags and desired properties of a twin as the service
// API does: a merge patch (null deletes) or, with replace, a wholesale
// replacement of both. ifMatch is empty, "*" or the twin's etag. A desired
// change is pushed to the device if it is connected and subscribed.
func (h *Hub) UpdateTwin(deviceID, moduleID string, p TwinPatch, replace bool, ifMatch string) (Twin, error) {
	var desired map[string]any
	if p.Properties != nil {
		desired = stripSystem(p.Properties.Desired)
	}
	tags := p.Tags
	if tags != nil {
		if err := checkKeysAndValues(tags, "tags"); err != nil {
			return Twin{}, err
		}
	}
	if desired != nil {
		if err := checkKeysAndValues(desired, "properties.desired"); err != nil {
			return Twin{}, err
		}
	}
	now := time.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	key := idKey(deviceID, moduleID)
	r, ok := h.records[key]
	if !ok {
		return Twin{}, notFound(deviceID, moduleID)
	}
	if !etagMatches(ifMatch, r.Twin.etag()) {
		return Twin{}, fmt.Errorf("twin of %s etag: %w", describe(deviceID, moduleID), ErrPreconditionFailed)
	}
	t := &r.Twin
	if replace {
		if tags == nil {
			tags = map[string]any{}
		}
		if desired == nil {
			desired = map[string]any{}
		}
	}
	var newTags, newDesired, newDesiredMeta map[string]any
	if tags != nil {
		if replace {
			newTags = cloneMerged(map[string]any{}, tags)
		} else {
			newTags = cloneMerged(t.Tags.obj(), tags)
		}
		if err := checkSection("tags", newTags, maxTagsBytes); err != nil {
			return Twin{}, err
		}
	}
	var tagsData, desiredData packed
	if newTags != nil {
		var err error
		if tagsData, err = pack(newTags); err != nil {
			return Twin{}, fmt.Errorf("tags: %w", err)
		}
	}
	var desiredMeta metaPacked
	if desired != nil {
		if replace {
			newDesired, newDesiredMeta = map[string]any{}, map[string]any{}
		} else {
			newDesired = t.Desired.obj()
			newDesiredMeta = t.DesiredMeta.tree(newDesired)
		}
		md := map[string]any{"$lastUpdated": stamp(now), "$lastUpdatedVersion": t.DesiredVersion + 1}
		mergeSection(newDesired, newDesiredMeta, desired, md)
		if err := checkSection("properties.desired", newDesired, maxSectionBytes); err != nil {
			return Twin{}, err
		}
		var err error
		if desiredData, err = pack(newDesired); err != nil {
			return Twin{}, fmt.Errorf("properties.desired: %w", err)
		}
		desiredMeta = packMeta(newDesired, newDesiredMeta)
	}
	if newTags != nil {
		t.Tags = tagsData
	}
	if newDesired != nil {
		t.DesiredVersion++
		t.Desired, t.DesiredMeta = desiredData, desiredMeta
		// The device is sent the patch, or the whole section when it was
		// replaced (newDesired is no longer the twin's).
		delta := newDesired
		if !replace {
			delta = deepCopy(desired).(map[string]any)
		}
		delta["$version"] = t.DesiredVersion
		h.notifyDesiredLocked(key, delta, t.DesiredVersion)
	}
	if newTags != nil || newDesired != nil {
		t.Version++
		h.markDirty(key)
		h.admTouchTwinLocked(key, tags, desired, replace)
	}
	return r.twin(), nil
}

// patchReported merges a device's reported patch and returns the new
// reported $version.
func (h *Hub) patchReported(key string, patch map[string]any) (int64, error) {
	patch = stripSystem(patch)
	if err := checkKeysAndValues(patch, "properties.reported"); err != nil {
		return 0, err
	}
	now := time.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	r, ok := h.records[key]
	if !ok {
		return 0, fmt.Errorf("identity %s: %w", key, ErrNotFound)
	}
	t := &r.Twin
	reported := t.Reported.obj()
	meta := t.ReportedMeta.tree(reported)
	mergeSection(reported, meta, patch, map[string]any{"$lastUpdated": stamp(now)})
	if err := checkSection("properties.reported", reported, maxSectionBytes); err != nil {
		return 0, err
	}
	data, err := pack(reported)
	if err != nil {
		return 0, fmt.Errorf("properties.reported: %w", err)
	}
	t.Reported, t.ReportedMeta = data, packMeta(reported, meta)
	t.ReportedVersion++
	t.Version++
	r.Identity.LastActivityTime = now.UTC()
	h.markDirty(key)
	h.admTouchReportedLocked(key, patch)
	return t.ReportedVersion, nil
}

// deviceTwinJSON is the device-side view of the twin: the properties only,
// without metadata.
func (h *Hub) deviceTwinJSON(key string) ([]byte, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	r, ok := h.records[key]
	if !ok {
		return nil, fmt.Errorf("identity %s: %w", key, ErrNotFound)
	}
	r.Identity.LastActivityTime = time.Now().UTC()
	return json.Marshal(map[string]any{
		"desired":  withSystem(r.Twin.Desired, nil, r.Twin.DesiredVersion, false),
		"reported": withSystem(r.Twin.Reported, nil, r.Twin.ReportedVersion, false),
	})
}
