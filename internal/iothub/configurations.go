package iothub

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// Configuration is an IoT Hub automatic device (or module) management
// configuration, in the service's JSON shape. Content is immutable once
// created: an update changes only TargetCondition, Priority, Labels and
// Metrics.Queries.
type Configuration struct {
	ID                 string               `json:"id"`
	SchemaVersion      string               `json:"schemaVersion,omitempty"`
	Labels             map[string]string    `json:"labels,omitempty"`
	Content            ConfigurationContent `json:"content"`
	ContentType        string               `json:"contentType,omitempty"`
	TargetCondition    string               `json:"targetCondition"`
	CreatedTimeUTC     *time.Time           `json:"createdTimeUtc,omitempty"`
	LastUpdatedTimeUTC *time.Time           `json:"lastUpdatedTimeUtc,omitempty"`
	Priority           int                  `json:"priority"`
	SystemMetrics      ConfigurationMetrics `json:"systemMetrics"`
	Metrics            ConfigurationMetrics `json:"metrics"`
	ETag               string               `json:"etag,omitempty"`
}

// ConfigurationContent is what a configuration writes into twins.
// DeviceContent and ModuleContent map twin paths
// ("properties.desired.section") to values (null removes the property);
// ModulesContent (IoT Edge deployments) maps module ids to
// {"properties.desired": {...}}.
type ConfigurationContent struct {
	DeviceContent  map[string]any            `json:"deviceContent,omitempty"`
	ModuleContent  map[string]any            `json:"moduleContent,omitempty"`
	ModulesContent map[string]map[string]any `json:"modulesContent,omitempty"`
}

// ConfigurationMetrics are named queries and their results: the number
// of twins each query selects. A configuration's SystemMetrics hold
// targetedCount and appliedCount.
type ConfigurationMetrics struct {
	Results map[string]int64  `json:"results,omitempty"`
	Queries map[string]string `json:"queries,omitempty"`
}

// Twin statuses of a configuration (twin.configurations.{id}.status).
const (
	ConfigurationTargeted = "Targeted"
	ConfigurationApplied  = "Applied"
)

// TestQueriesResult is the answer of TestQueries: empty strings mean the
// queries are valid.
type TestQueriesResult struct {
	TargetConditionError    string            `json:"targetConditionError,omitempty"`
	CustomMetricQueryErrors map[string]string `json:"customMetricQueryErrors,omitempty"`
}

// OK reports whether every query is valid.
func (r *TestQueriesResult) OK() bool {
	if r.TargetConditionError != "" {
		return false
	}
	for _, e := range r.CustomMetricQueryErrors {
		if e != "" {
			return false
		}
	}
	return true
}

func configurationPath(id string) string { return "/configurations/" + url.PathEscape(id) }

// CreateConfiguration creates a configuration; an existing id fails with
// 409 (ConfigurationAlreadyExists).
func (c *ServiceClient) CreateConfiguration(ctx context.Context, cfg Configuration) (*Configuration, error) {
	if cfg.ID == "" {
		return nil, errors.New("create configuration: empty id")
	}
	if cfg.SchemaVersion == "" {
		cfg.SchemaVersion = "1.0"
	}
	cfg.ETag = ""
	var out Configuration
	if _, err := c.do(ctx, request{method: http.MethodPut, path: configurationPath(cfg.ID), body: cfg, out: &out}); err != nil {
		return nil, fmt.Errorf("create configuration %s: %w", cfg.ID, err)
	}
	return &out, nil
}

// GetConfiguration reads a configuration with its current metrics.
func (c *ServiceClient) GetConfiguration(ctx context.Context, id string) (*Configuration, error) {
	var out Configuration
	if _, err := c.do(ctx, request{method: http.MethodGet, path: configurationPath(id), out: &out}); err != nil {
		return nil, fmt.Errorf("get configuration %s: %w", id, err)
	}
	return &out, nil
}

// ListConfigurations lists up to top configurations (top <= 0: the
// service's default; it has no continuation, and a hub has at most 100).
func (c *ServiceClient) ListConfigurations(ctx context.Context, top int) ([]Configuration, error) {
	q := url.Values{}
	if top > 0 {
		q.Set("top", strconv.Itoa(top))
	}
	var out []Configuration
	if _, err := c.do(ctx, request{method: http.MethodGet, path: "/configurations", query: q, out: &out}); err != nil {
		return nil, fmt.Errorf("list configurations: %w", err)
	}
	return out, nil
}

// UpdateConfiguration replaces a configuration's mutable parts. cfg.ETag
// is sent as If-Match (empty: whatever the version); a stale etag fails
// with 412. The body carries the content unchanged, as the service
// requires.
func (c *ServiceClient) UpdateConfiguration(ctx context.Context, cfg Configuration) (*Configuration, error) {
	if cfg.ID == "" {
		return nil, errors.New("update configuration: empty id")
	}
	if cfg.SchemaVersion == "" {
		cfg.SchemaVersion = "1.0"
	}
	var out Configuration
	_, err := c.do(ctx, request{method: http.MethodPut, path: configurationPath(cfg.ID), body: cfg,
		header: map[string]string{"If-Match": ifMatch(cfg.ETag)}, out: &out})
	if err != nil {
		return nil, fmt.Errorf("update configuration %s: %w", cfg.ID, err)
	}
	return &out, nil
}

// DeleteConfiguration removes a configuration; etag "" deletes whatever
// the version.
func (c *ServiceClient) DeleteConfiguration(ctx context.Context, id, etag string) error {
	_, err := c.do(ctx, request{method: http.MethodDelete, path: configurationPath(id),
		header: map[string]string{"If-Match": ifMatch(etag)}})
	if err != nil {
		return fmt.Errorf("delete configuration %s: %w", id, err)
	}
	return nil
}

// TestQueries validates a target condition and custom metric queries
// without creating a configuration. Invalid queries are reported in the
// result, not as an error.
func (c *ServiceClient) TestQueries(ctx context.Context, targetCondition string, metrics map[string]string) (*TestQueriesResult, error) {
	body := map[string]any{"targetCondition": targetCondition}
	if len(metrics) > 0 {
		body["customMetricQueries"] = metrics
	}
	var out TestQueriesResult
	if _, err := c.do(ctx, request{method: http.MethodPost, path: "/configurations/testQueries", body: body, out: &out}); err != nil {
		return nil, fmt.Errorf("test configuration queries: %w", err)
	}
	return &out, nil
}

// ApplyConfigurationContent writes configuration content into one
// device's twins at once, without a configuration.
func (c *ServiceClient) ApplyConfigurationContent(ctx context.Context, deviceID string, content ConfigurationContent) error {
	_, err := c.do(ctx, request{method: http.MethodPost, path: devicePath(deviceID) + "/applyConfigurationContent", body: content})
	if err != nil {
		return fmt.Errorf("apply configuration content to %s: %w", deviceID, err)
	}
	return nil
}
