// Command twinctl is the operator's tool for a fleet on Azure IoT Hub (or
// twinhub): devices, twins, direct methods, queries and telemetry. See
// "twinctl help".
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := newCLI(os.Stdin, os.Stdout, os.Stderr, os.Getenv).run(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}
