// Command go-baseline is the Go baseline of the benchmark: sidecar-injector's injection,
// served by controller-runtime's webhook server with its default settings. See README.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/go-logr/logr"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/webhook"
)

func main() {
	host := flag.String("host", "127.0.0.1", "address to listen on")
	port := flag.Int("port", webhook.DefaultPort, "port to listen on (HTTPS)")
	certDir := flag.String("cert-dir", "", "directory with tls.crt and tls.key (default: controller-runtime's, <tmp>/k8s-webhook-server/serving-certs)")
	flag.Parse()

	// controller-runtime logs through logr; slog at Info keeps its per-request V(5) lines off, as
	// in a default deployment.
	logf.SetLogger(logr.FromSlogHandler(slog.NewTextHandler(os.Stderr, nil)))

	server := webhook.NewServer(webhook.Options{
		Host:     *host,
		Port:     *port,
		CertDir:  *certDir,
		CertName: "tls.crt",
		KeyName:  "tls.key",
	})
	server.Register("/mutate", &webhook.Admission{Handler: NewInjector(DefaultCatalog())})

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := server.Start(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "go-baseline: %v\n", err)
		os.Exit(1)
	}
}
