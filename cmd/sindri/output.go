package main

import (
	"encoding/json"
	"fmt"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"
)

func (a *app) printJSON(v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(a.stdout, "%s\n", data)
	return err
}

func (a *app) table() *tabwriter.Writer {
	return tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
}

// group makes cmd a command that only holds subcommands: run without one
// (or with an unknown one) it is bad usage.
func group(cmd *cobra.Command, subs ...*cobra.Command) *cobra.Command {
	cmd.Args = cobra.ArbitraryArgs
	cmd.RunE = func(c *cobra.Command, argv []string) error {
		if len(argv) > 0 {
			return usageError{fmt.Errorf("unknown command %q for %q (see %s --help)", argv[0], c.CommandPath(), c.CommandPath())}
		}
		return usageError{fmt.Errorf("%s needs a command (see %s --help)", c.CommandPath(), c.CommandPath())}
	}
	cmd.AddCommand(subs...)
	return cmd
}

// parseID reads a resource id argument.
func parseID(what, s string) (int64, error) {
	id, err := strconv.ParseInt(s, 10, 64)
	if err != nil || id <= 0 {
		return 0, usageError{fmt.Errorf("%s id %q is not a positive number", what, s)}
	}
	return id, nil
}

func when(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

func whenPtr(t *time.Time) string {
	if t == nil {
		return "never"
	}
	return when(*t)
}

func bytesText(n int64) string {
	if n <= 0 {
		return "-"
	}
	return humanize.IBytes(uint64(n))
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
