// Command sindri is the client of a sindri server, in the style of
// Draupnir's client. For now it reports its version; the commands that
// talk to the server come with the client issue.
package main

import (
	"fmt"
	"os"

	"github.com/sindri-db/sindri/pkg/version"
)

func main() {
	if len(os.Args) == 2 && os.Args[1] == "version" {
		fmt.Printf("sindri %s (API %s)\n", version.Version, version.API)
		return
	}
	fmt.Fprintln(os.Stderr, "usage: sindri version\n(the client's server commands are not built yet)")
	os.Exit(2)
}
