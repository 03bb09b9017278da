// Command sindri is the client of a sindri server, in the style of
// Draupnir's client: it manages images, instances (thin clones) and
// backups, and sets up a shell to reach an instance with psql.
//
// Exit codes: 0 success; 1 the server answered with an error; 2 bad usage,
// bad configuration, or the server cannot be reached.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"

	"github.com/spf13/cobra"

	"github.com/sindri-db/sindri/pkg/client"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	err := newRoot(os.Stdout, os.Stderr).ExecuteContext(ctx)
	stop()
	os.Exit(report(os.Stderr, err))
}

// report prints err on one line and returns the exit code for it.
func report(stderr io.Writer, err error) int {
	if err == nil {
		return 0
	}
	msg := strings.Join(strings.Fields(err.Error()), " ")
	fmt.Fprintln(stderr, "sindri: "+msg)
	var apiErr *client.APIError
	var f failure
	if errors.As(err, &apiErr) || errors.As(err, &f) {
		return 1
	}
	return 2
}

// app is the state the commands share.
type app struct {
	stdout, stderr io.Writer
	json           bool
}

func newRoot(stdout, stderr io.Writer) *cobra.Command {
	a := &app{stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:   "sindri",
		Short: "sindri manages PostgreSQL thin clones on a sindri (Draupnir API 5) server",
		Long: `sindri manages PostgreSQL thin clones on a sindri (Draupnir API 5) server.

The server's URL and your token come from ` + "`sindri config set url|token`" + `,
or from the environment variables SINDRI_URL and SINDRI_TOKEN, which win.

Typical use:
  eval $(sindri new)       # a fresh instance of the newest image
  psql -c 'select 1'

Exit status: 0 ok, 1 the server refused, 2 bad usage or no connection.`,
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.PersistentFlags().BoolVar(&a.json, "json", false, "print the result as JSON")
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return usageError{fmt.Errorf("%w (see %s --help)", err, c.CommandPath())}
	})
	root.AddCommand(a.configCmd(), a.imagesCmd(), a.instancesCmd(), a.backupsCmd(), a.sourcesCmd(), a.envCmd(), a.newCmd(), a.statusCmd(), a.versionCmd(), a.authenticateCmd())
	return root
}

// failure is a refusal that the client finds itself (such as no ready
// image to clone): exit 1, like an error from the server.
type failure struct{ error }

func (e failure) Unwrap() error { return e.error }

// usageError is bad usage: exit 2.
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

// args is cobra.ExactArgs with a message that names the arguments.
func args(names ...string) cobra.PositionalArgs {
	return func(c *cobra.Command, got []string) error {
		if len(got) != len(names) {
			return usageError{fmt.Errorf("usage: %s", c.UseLine())}
		}
		return nil
	}
}
