// Package plugin is the wire protocol between twinlet and an external
// provider (a separate executable that owns one section), and the helper
// that turns a providers.Provider into such an executable:
//
//	func main() { plugin.Main(myprovider.Info()) }
//
// The protocol is JSON-RPC 2.0, one message per line on the process's
// stdin and stdout; stderr is for logs. It is written down, with a JSON
// Schema for every message, in docs/provider-protocol.md and
// docs/protocol/. The types here are that protocol in Go; the agent side
// lives in internal/extprov.
package plugin

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// ProtocolMajor is the major version of the protocol this package speaks.
// A provider or an agent that speaks another major version is refused.
const ProtocolMajor = 1

// ProtocolVersion is the full version ("major.minor") this package speaks.
// Minor versions only add optional fields.
const ProtocolVersion = "1.0"

// MaxMessage bounds one line of the protocol, either way.
const MaxMessage = 4 << 20

// The methods of the protocol. All are calls from the agent to the
// provider except MethodProgress, a notification from the provider.
const (
	MethodInitialize = "initialize"
	MethodDescribe   = "describe"
	MethodDecode     = "decode"
	MethodObserve    = "observe"
	MethodPlan       = "plan"
	MethodApply      = "apply"
	MethodMethod     = "method"
	MethodCloudScope = "cloudScope"
	MethodWatchPaths = "watchPaths"
	MethodShutdown   = "shutdown"
	MethodProgress   = "progress"
)

// Error codes of the protocol's error objects, beyond JSON-RPC's own
// (-32700 parse error, -32600 invalid request, -32601 method not found,
// -32602 invalid params, -32603 internal error).
const (
	// CodeInvalid: the desired input can never succeed as written (a
	// providers.InvalidError); data is {"errors": [FieldError…]}. Terminal.
	CodeInvalid = -32001
	// CodeMethodError: a direct method failed with a status; data is
	// {"status": 404}.
	CodeMethodError = -32002
	// CodeFailed: the call failed for a reason that may pass (a transient
	// failure); the agent retries with backoff.
	CodeFailed = -32003
	// CodeStale: the observation or plan a call refers to belongs to an
	// earlier process (it stopped at its keep-alive or crashed since). The
	// agent observes again and plans once more; nothing was done.
	CodeStale = -32004
)

// Request is a JSON-RPC 2.0 request or, without ID, a notification.
type Request struct {
	JSONRPC string          `json:"jsonrpc"`
	ID      *int64          `json:"id,omitempty"`
	Method  string          `json:"method"`
	Params  json.RawMessage `json:"params,omitempty"`
}

// Response is a JSON-RPC 2.0 response: Result or Error.
type Response struct {
	JSONRPC string          `json:"jsonrpc"`
	ID      *int64          `json:"id"`
	Result  json.RawMessage `json:"result,omitempty"`
	Error   *Error          `json:"error,omitempty"`
}

// Message is any line of the protocol, read before its kind is known.
type Message struct {
	JSONRPC string          `json:"jsonrpc"`
	ID      *int64          `json:"id,omitempty"`
	Method  string          `json:"method,omitempty"`
	Params  json.RawMessage `json:"params,omitempty"`
	Result  json.RawMessage `json:"result,omitempty"`
	Error   *Error          `json:"error,omitempty"`
}

// Error is a JSON-RPC 2.0 error object.
type Error struct {
	Code    int             `json:"code"`
	Message string          `json:"message"`
	Data    json.RawMessage `json:"data,omitempty"`
}

func (e *Error) Error() string { return fmt.Sprintf("%s (code %d)", e.Message, e.Code) }

// InitializeParams opens a session.
type InitializeParams struct {
	// ProtocolVersion is the agent's "major.minor".
	ProtocolVersion string `json:"protocolVersion"`
	// AgentVersion is twinlet's version.
	AgentVersion string `json:"agentVersion"`
	// Section is the section id the manifest gives the provider.
	Section string `json:"section"`
}

// InitializeResult answers initialize.
type InitializeResult struct {
	// ProtocolVersion is the provider's "major.minor"; a major the agent
	// does not speak ends the session.
	ProtocolVersion string `json:"protocolVersion"`
	// Name and Version identify the provider's implementation.
	Name    string `json:"name,omitempty"`
	Version string `json:"version,omitempty"`
}

// Description answers describe: what providers.Info says of a built-in.
type Description struct {
	// ID is the section id; it must be the manifest's.
	ID string `json:"id"`
	// Kind is "object" or "collection".
	Kind string `json:"kind"`
	// Schema is the JSON Schema (draft 2020-12) of the section.
	Schema json.RawMessage `json:"schema"`
	// DependsOn lists sections that must be Ready first.
	DependsOn []string `json:"dependsOn,omitempty"`
	// ReadOnly providers only observe.
	ReadOnly bool `json:"readOnly,omitempty"`
	// TimeoutSeconds bounds each call; 0 means the agent's default. The
	// manifest's timeout, when set, wins.
	TimeoutSeconds float64 `json:"timeoutSeconds,omitempty"`
	// Methods are the provider's direct methods with their payload schemas.
	Methods map[string]MethodDescription `json:"methods,omitempty"`
	// CloudDeny are the default cloud-scope denials for the section.
	CloudDeny []string `json:"cloudDeny,omitempty"`
	// CloudScope says the provider answers cloudScope calls (item-level
	// cloud scope); without it only section-level scope applies.
	CloudScope bool `json:"cloudScope,omitempty"`
	// WatchPaths says the provider answers watchPaths: the agent watches
	// the paths it names and reconciles the section when they change.
	WatchPaths bool `json:"watchPaths,omitempty"`
	// Version is the provider's version, for `twinlet providers list`.
	Version string `json:"version,omitempty"`
}

// WatchPathsParams asks which paths to watch for a spec.
type WatchPathsParams struct {
	Env  Env             `json:"env"`
	Spec json.RawMessage `json:"spec"`
}

// WatchPathsResult lists host paths (under env.root), files or
// directories, whose changes should trigger a reconcile.
type WatchPathsResult struct {
	Paths []string `json:"paths"`
}

// MethodDescription is one direct method.
type MethodDescription struct {
	Description string          `json:"description,omitempty"`
	Schema      json.RawMessage `json:"schema"`
}

// Env is what a call knows of providers.Env.
type Env struct {
	Root         string   `json:"root"`
	StateDir     string   `json:"stateDir,omitempty"`
	AllowedRoots []string `json:"allowedRoots,omitempty"`
	Managed      []string `json:"managed,omitempty"`
	Interrupted  []string `json:"interrupted,omitempty"`
}

// DecodeParams asks for the spec of a merged, schema-valid section.
type DecodeParams struct {
	Env     Env             `json:"env"`
	Section json.RawMessage `json:"section"`
}

// DecodeResult is the provider's spec, opaque JSON handed back later.
type DecodeResult struct {
	Spec json.RawMessage `json:"spec"`
}

// ObserveParams asks what the spec names looks like now.
type ObserveParams struct {
	Env  Env             `json:"env"`
	Spec json.RawMessage `json:"spec"`
}

// ObserveResult is the observation. Observed is reported as the section's
// body; Private, when present, is handed to plan instead of Observed (a
// provider that keeps more than it reports).
type ObserveResult struct {
	Observed json.RawMessage `json:"observed"`
	Private  json.RawMessage `json:"private,omitempty"`
}

// PlanParams asks for the changes that converge spec and observed.
type PlanParams struct {
	Spec     json.RawMessage `json:"spec"`
	Observed json.RawMessage `json:"observed"`
}

// PlanResult is the plan, in order.
type PlanResult struct {
	Changes []Change `json:"changes"`
}

// Change is providers.Change on the wire. Data is opaque JSON handed back
// on apply.
type Change struct {
	Action         string          `json:"action"`
	Item           string          `json:"item"`
	Key            string          `json:"key,omitempty"`
	Before         string          `json:"before,omitempty"`
	After          string          `json:"after,omitempty"`
	Once           bool            `json:"once,omitempty"`
	RebootRequired bool            `json:"rebootRequired,omitempty"`
	Data           json.RawMessage `json:"data,omitempty"`
}

// ApplyParams asks for one change.
type ApplyParams struct {
	Env    Env    `json:"env"`
	Change Change `json:"change"`
}

// MethodParams runs a direct method with a payload that passed its schema.
type MethodParams struct {
	Env     Env             `json:"env"`
	Name    string          `json:"name"`
	Payload json.RawMessage `json:"payload"`
}

// MethodResult is a direct method's response body.
type MethodResult struct {
	Response json.RawMessage `json:"response"`
}

// CloudScopeParams asks which parts of the twin's contribution the rules
// forbid.
type CloudScopeParams struct {
	Rules Rules           `json:"rules"`
	Twin  json.RawMessage `json:"twin"`
}

// Rules is providers.ScopeRules on the wire.
type Rules struct {
	Deny       []string `json:"deny,omitempty"`
	Allow      []string `json:"allow,omitempty"`
	Privileged bool     `json:"privileged,omitempty"`
}

// CloudScopeResult lists the forbidden parts.
type CloudScopeResult struct {
	Errors []FieldError `json:"errors"`
}

// FieldError is a located problem (providers.FieldError).
type FieldError struct {
	Pointer string `json:"pointer"`
	Message string `json:"message"`
}

// InvalidData is the data of a CodeInvalid error.
type InvalidData struct {
	Errors []FieldError `json:"errors"`
}

// MethodErrorData is the data of a CodeMethodError error.
type MethodErrorData struct {
	Status int `json:"status"`
}

// ProgressParams is a progress notification of the call with id Request.
type ProgressParams struct {
	Request int64  `json:"request"`
	Step    string `json:"step"`
	Done    int    `json:"done"`
	Total   int    `json:"total"`
}

// Major returns the major number of a "major.minor" version.
func Major(v string) (int, error) {
	s, _, _ := strings.Cut(v, ".")
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("protocol version %q is not major.minor", v)
	}
	return n, nil
}
