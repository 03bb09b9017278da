package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/sindri-db/sindri/pkg/auth"
	"github.com/sindri-db/sindri/pkg/config"
	"github.com/sindri-db/sindri/pkg/metadb"
	"github.com/sindri-db/sindri/pkg/postgres"
	"github.com/sindri-db/sindri/pkg/store"
)

const tokenUsage = `usage: sindrid token create --name NAME [-config FILE]
       sindrid token list [--all] [-config FILE]
       sindrid token revoke (--name NAME | --id ID | --email ADDRESS) [-config FILE]`

// runToken manages named API tokens for CI jobs, and the tokens OAuth
// logins were given: list --all shows the unrevoked ones (expired
// included), revoke --email ends a person's logins, revoke --id any one
// token. A token is printed once, on create; the store keeps only its hash.
func runToken(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usageError(tokenUsage)
	}
	verb := args[0]
	if verb != "create" && verb != "list" && verb != "revoke" {
		return usageError(tokenUsage)
	}
	fs := flag.NewFlagSet("sindrid token "+verb, flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "/etc/sindri/config.toml", "path of the TOML configuration file")
	name := fs.String("name", "", "the token's name, such as ci-main")
	all := fs.Bool("all", false, "list: OAuth logins' tokens as well as API tokens")
	id := fs.Int64("id", 0, "revoke: the token with this ID (from list --all)")
	email := fs.String("email", "", "revoke: every OAuth login of this e-mail address")
	if err := fs.Parse(args[1:]); err != nil {
		return usageError(err.Error())
	}
	chosen := 0
	for _, set := range []bool{*name != "", *id != 0, *email != ""} {
		if set {
			chosen++
		}
	}
	switch {
	case fs.NArg() > 0,
		verb == "create" && (*name == "" || chosen != 1 || *all),
		verb == "list" && chosen != 0,
		verb == "revoke" && (chosen != 1 || *all):
		return usageError(tokenUsage)
	}
	cfg, err := config.Load(*configPath)
	if err != nil {
		return err
	}
	st, closeStore, err := openStore(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		return err
	}
	defer closeStore()
	a, err := auth.New(auth.Options{SharedSecret: cfg.SharedSecret, Store: st})
	if err != nil {
		return err
	}
	switch verb {
	case "create":
		token, _, err := a.CreateAPIToken(ctx, *name)
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, token)
		fmt.Fprintf(stderr, "sindrid: token %q created; it is shown only now\n", *name)
	case "list":
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		if !*all {
			tokens, err := a.ListAPITokens(ctx)
			if err != nil {
				return err
			}
			fmt.Fprintln(tw, "NAME\tCREATED\tLAST USED")
			for _, t := range tokens {
				fmt.Fprintf(tw, "%s\t%s\t%s\n", t.Name, t.CreatedAt.Format(time.RFC3339), lastUsed(t))
			}
			return tw.Flush()
		}
		tokens, err := a.ListTokens(ctx)
		if err != nil {
			return err
		}
		fmt.Fprintln(tw, "ID\tKIND\tNAME OR E-MAIL\tCREATED\tEXPIRES\tLAST USED")
		for _, t := range tokens {
			who, expires := t.Name, "never"
			if t.Kind == store.TokenOAuth {
				who = t.Email
			}
			if t.ExpiresAt != nil {
				expires = t.ExpiresAt.Format(time.RFC3339)
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", t.ID, t.Kind, who, t.CreatedAt.Format(time.RFC3339), expires, lastUsed(t))
		}
		return tw.Flush()
	case "revoke":
		switch {
		case *name != "":
			if err := a.RevokeAPIToken(ctx, *name); errors.Is(err, store.ErrNotFound) {
				return fmt.Errorf("there is no token named %q", *name)
			} else if err != nil {
				return err
			}
			fmt.Fprintf(stderr, "sindrid: token %q revoked\n", *name)
		case *id != 0:
			if err := a.RevokeToken(ctx, *id); errors.Is(err, store.ErrNotFound) {
				return fmt.Errorf("there is no unrevoked token with ID %d (see sindrid token list --all)", *id)
			} else if err != nil {
				return err
			}
			fmt.Fprintf(stderr, "sindrid: token %d revoked\n", *id)
		default:
			n, err := a.RevokeTokensOf(ctx, *email)
			if errors.Is(err, store.ErrNotFound) {
				return fmt.Errorf("%s has no unrevoked login", *email)
			} else if err != nil {
				return err
			}
			fmt.Fprintf(stderr, "sindrid: %d login(s) of %s revoked\n", n, *email)
		}
	default:
		return usageError(tokenUsage)
	}
	return nil
}

func lastUsed(t store.Token) string {
	if t.LastUsedAt == nil {
		return "never"
	}
	return t.LastUsedAt.Format(time.RFC3339)
}

// openStore reaches the metadata store: the configured database, or the
// embedded cluster, which it adopts when sindrid runs and otherwise
// starts and stops again when done.
func openStore(ctx context.Context, cfg *config.Config, log *slog.Logger) (*store.Store, func(), error) {
	url := cfg.DatabaseURL
	var stopMeta *metadb.Cluster // the embedded cluster when this command started it
	if cfg.EmbeddedMetadataDB() {
		owner, err := postgres.LookupUser(cfg.Postgres.User)
		if err != nil {
			return nil, nil, err
		}
		// Never make a metadata cluster here: on an unmounted data_path it
		// would be a throwaway one, and would keep the loopback from
		// mounting.
		if _, err := postgres.MajorVersion(filepath.Join(cfg.MetaDir(), "data")); err != nil {
			return nil, nil, fmt.Errorf("no metadata database under %s: start sindrid once first (and check that data_path is mounted)", cfg.MetaDir())
		}
		running := false
		if st, err := postgres.Status(filepath.Join(cfg.MetaDir(), "data")); err == nil && st.Alive {
			running = true
		}
		meta, err := metadb.Start(ctx, cfg.MetaDir(), cfg.Postgres.BinDir, owner, log)
		if err != nil {
			return nil, nil, fmt.Errorf("embedded metadata database (is data_path mounted? start sindrid once first): %w", err)
		}
		if !running {
			stopMeta = meta
		}
		url = meta.URL()
	}
	st, err := store.Open(ctx, url)
	if err == nil {
		_, err = st.Migrate(ctx)
	}
	closeAll := func() {
		if st != nil {
			st.Close()
		}
		if stopMeta != nil {
			stopMeta.Stop(context.Background())
		}
	}
	if err != nil {
		closeAll()
		return nil, nil, err
	}
	return st, closeAll, nil
}

type usageError string

func (u usageError) Error() string { return string(u) }
