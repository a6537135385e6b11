// Command ferretdb-sqlite runs FerretDB v1 (the MongoDB wire protocol) over SQLite files,
// for StreamFlow's tests: it listens on one loopback address and stops on SIGTERM/SIGINT.
//
// It embeds FerretDB's public package instead of building FerretDB's own command, whose
// binary panics at start when built with `go install` (its version file is not in the
// module). Telemetry is off in the embedded package; there is no debug listener.
//
//	ferretdb-sqlite -listen-addr 127.0.0.1:27018 -sqlite-url file:/tmp/data/
package main

import (
	"context"
	"flag"
	"log"
	"os"
	"os/signal"
	"syscall"

	"github.com/FerretDB/FerretDB/ferretdb"
)

func main() {
	addr := flag.String("listen-addr", "127.0.0.1:27017", "host:port to listen on (loopback)")
	url := flag.String("sqlite-url", "file:data/", "SQLite directory URI; must end with /")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	f, err := ferretdb.New(&ferretdb.Config{
		Listener:  ferretdb.ListenerConfig{TCP: *addr},
		Handler:   "sqlite",
		SQLiteURL: *url,
	})
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("ferretdb-sqlite listening on %s, data in %s", *addr, *url)
	if err := f.Run(ctx); err != nil && ctx.Err() == nil {
		log.Print(err)
		os.Exit(1)
	}
}
