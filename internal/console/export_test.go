package console

// SetBeforePatch makes the server call f between reading a twin and
// writing a section into it with the etag it read.
func SetBeforePatch(s *Server, f func()) { s.beforePatch = f }

// Fetches returns how many times the shared polls have read the hub.
func Fetches(s *Server) int64 { return s.fetches.Load() }
