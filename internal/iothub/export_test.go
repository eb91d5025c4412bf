package iothub

// Inject hands a message to the client as paho would, for external tests
// that need a real hub too.
func (c *DeviceClient) Inject(topic string, payload []byte) {
	c.onMessage(nil, message{topic: topic, payload: payload})
}

// message is a stand-in for the paho messages the broker connection hands
// to onMessage. Tests call onMessage the way paho does, to inject what a
// faithful hub never sends (a version gap, a bad $version) and to race a
// reply against a disconnect far more often than real traffic would.
type message struct {
	topic   string
	payload []byte
}

func (m message) Duplicate() bool   { return false }
func (m message) Qos() byte         { return 1 }
func (m message) Retained() bool    { return false }
func (m message) Topic() string     { return m.topic }
func (m message) MessageID() uint16 { return 1 }
func (m message) Payload() []byte   { return m.payload }
func (m message) Ack()              {}

// KeepAlivePings counts the pings of the current connection.
func (c *DeviceClient) KeepAlivePings() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn == nil {
		return 0
	}
	return c.conn.pings.Load()
}

// MuteKeepAlive stops the current connection's pings, as a device whose
// process hangs would.
func (c *DeviceClient) MuteKeepAlive() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.conn.mute.Store(true)
}
