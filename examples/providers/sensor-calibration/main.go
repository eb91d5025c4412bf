// Command sensor-calibration is an external twinlet provider written in Go:
// it owns the section sensorCalibration and keeps a vendor sensor's
// calibration file in line with it. The whole program is the plugin
// helper around the same providers.Info a built-in provider registers.
package main

import (
	"github.com/twinlet/twinlet/examples/providers/sensor-calibration/sensor"
	"github.com/twinlet/twinlet/providers/plugin"
)

func main() { plugin.Main(sensor.Info()) }
