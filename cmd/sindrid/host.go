package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"text/tabwriter"
	"time"

	"github.com/sindri-db/sindri/pkg/config"
	"github.com/sindri-db/sindri/pkg/store"
)

const hostUsage = `usage: sindrid host list [-config FILE]
       sindrid host drain NAME [-config FILE]
       sindrid host undrain NAME [-config FILE]`

// runHost lists the fleet's hosts, or stops (drain) or restarts (undrain)
// the placement of new instances on one: a drained host's instances run
// on, and it is drained across its restarts until undrained. It needs
// [fleet] in the configuration, whose database_url names the fleet's
// metadata database; it may run on any host of the fleet.
func runHost(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usageError(hostUsage)
	}
	verb := args[0]
	if verb != "list" && verb != "drain" && verb != "undrain" {
		return usageError(hostUsage)
	}
	fs := flag.NewFlagSet("sindrid host "+verb, flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "/etc/sindri/config.toml", "path of the TOML configuration file")
	if err := fs.Parse(args[1:]); err != nil {
		return usageError(err.Error())
	}
	// The name may come before the flags or after them.
	var name string
	if verb != "list" && fs.NArg() > 0 {
		name = fs.Arg(0)
		if err := fs.Parse(fs.Args()[1:]); err != nil {
			return usageError(err.Error())
		}
	}
	if fs.NArg() > 0 || (verb != "list" && name == "") {
		return usageError(hostUsage)
	}
	cfg, err := config.Load(*configPath)
	if err != nil {
		return err
	}
	if !cfg.Fleet.Enabled() {
		return fmt.Errorf("%s has no [fleet] section with a name: this sindrid is a single host, not part of a fleet", *configPath)
	}
	st, closeStore, err := openStore(ctx, cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		return err
	}
	defer closeStore()

	if verb == "list" {
		hosts, err := st.ListHosts(ctx, cfg.Fleet.DownTimeout)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tSTATE\tINSTANCES\tFREE\tDRIVER\tPEER URL\tLAST HEARTBEAT")
		for _, h := range hosts {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\n", h.Name, h.State, h.Instances,
				config.ByteSize(h.FreeBytes), h.StorageDriver, h.PeerURL, h.HeartbeatAt.Format(time.RFC3339))
		}
		return tw.Flush()
	}

	state, done := store.HostDraining, "drained: no new instance is placed on it; its instances run on"
	if verb == "undrain" {
		state, done = store.HostActive, "active: new instances may be placed on it"
	}
	if err := st.SetHostState(ctx, name, state); errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("there is no host named %q in the fleet (sindrid host list shows them)", name)
	} else if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "sindrid: host %q %s\n", name, done)
	return nil
}
