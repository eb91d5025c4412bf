package hub

import (
	"net/http"
	"strconv"
)

// configurationRoutes serves the configurations API of the service:
// PUT/GET/DELETE /configurations/{id}, GET /configurations?top=N,
// POST /configurations/testQueries and
// POST /devices/{id}/applyConfigurationContent.
func (h *Hub) configurationRoutes(mux *http.ServeMux) {
	read := []string{RightRegistryRead}
	write := []string{RightRegistryWrite}
	handle := func(pattern string, rights []string, fn func(http.ResponseWriter, *http.Request) error) {
		mux.Handle(pattern, h.serviceEndpoint(route{rights, fn}))
	}
	handle("PUT /configurations/{id}", write, h.restPutConfiguration)
	handle("GET /configurations/{id}", read, h.restGetConfiguration)
	handle("DELETE /configurations/{id}", write, h.restDeleteConfiguration)
	handle("GET /configurations", read, h.restListConfigurations)
	handle("GET /configurations/{$}", read, h.restListConfigurations)
	handle("POST /configurations/testQueries", read, h.restTestQueries)
	handle("POST /devices/{id}/applyConfigurationContent", write, h.restApplyContent)
	// The newer .NET SDK sends PUT.
	handle("PUT /devices/{id}/applyConfigurationContent", write, h.restApplyContent)
}

func (h *Hub) restPutConfiguration(w http.ResponseWriter, r *http.Request) error {
	var c Configuration
	if err := readJSON(r, &c); err != nil {
		return err
	}
	id := r.PathValue("id")
	if c.ID != "" && c.ID != id {
		return invalidConfig("body names configuration %q, path names %q", c.ID, id)
	}
	c.ID = id
	out, err := h.PutConfiguration(c, r.Header.Get("If-Match"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, out.Etag, out)
	return nil
}

func (h *Hub) restGetConfiguration(w http.ResponseWriter, r *http.Request) error {
	c, err := h.GetConfiguration(r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, c.Etag, c)
	return nil
}

func (h *Hub) restDeleteConfiguration(w http.ResponseWriter, r *http.Request) error {
	if err := h.DeleteConfiguration(r.PathValue("id"), r.Header.Get("If-Match")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (h *Hub) restListConfigurations(w http.ResponseWriter, r *http.Request) error {
	top := 0
	if v := r.URL.Query().Get("top"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			return invalidConfig("top must be a positive integer, not %q", v)
		}
		top = n
	}
	writeJSON(w, http.StatusOK, "", h.ListConfigurations(top))
	return nil
}

func (h *Hub) restTestQueries(w http.ResponseWriter, r *http.Request) error {
	var in struct {
		TargetCondition     string            `json:"targetCondition"`
		CustomMetricQueries map[string]string `json:"customMetricQueries"`
	}
	if err := readJSON(r, &in); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, "", h.TestConfigurationQueries(in.TargetCondition, in.CustomMetricQueries))
	return nil
}

func (h *Hub) restApplyContent(w http.ResponseWriter, r *http.Request) error {
	var c ConfigurationContent
	if err := readJSON(r, &c); err != nil {
		return err
	}
	if err := h.ApplyConfigurationContent(r.PathValue("id"), c); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
