package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"strings"

	"github.com/sindri-db/sindri/pkg/config"
	"github.com/sindri-db/sindri/pkg/engine"
	"github.com/sindri-db/sindri/pkg/store"
)

const secretsUsage = `usage: sindrid secrets rotate-key [-config FILE]`

// openSecrets gives the store its keyring at start: it takes the secrets
// lock (shared; a key rotation takes it exclusive) for as long as sindrid
// runs, taken again if its connection is lost (store.SecretsLock), reads
// the key file or makes it when the store holds no sealed value, seals
// what is still in clear (rows from before secrets were sealed) and
// finishes a key rotation that was cut short.
func openSecrets(ctx context.Context, st *store.Store, path string, log *slog.Logger) (_ *store.SecretsLock, err error) {
	lock, err := st.HoldSecretsLock(ctx, path, log)
	if errors.Is(err, store.ErrLocked) {
		return nil, errors.New("a secrets key rotation (sindrid secrets rotate-key) is using the metadata store: start sindrid once it is done")
	} else if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			lock.Release()
		}
	}()
	created, err := st.LoadKeyring(ctx, path, true)
	if err != nil {
		return nil, fmt.Errorf("secrets: %w", err)
	}
	if created {
		log.Info("sindrid: made the secrets key file: back it up apart from the metadata database", "path", path)
	}
	n, err := st.SealSecrets(ctx, engine.RedactSourceURL)
	if err != nil {
		return nil, fmt.Errorf("secrets: %w", err)
	}
	if n > 0 {
		log.Info("sindrid: sealed secrets that were in clear or under an older key", "count", n, "key_id", st.Keyring().Current())
	}
	if err := retainUsedKeys(ctx, st); err != nil {
		return nil, fmt.Errorf("secrets: %w", err)
	}
	return lock, nil
}

// retainUsedKeys drops from the key file every old key that no value is
// sealed with any more.
func retainUsedKeys(ctx context.Context, st *store.Store) error {
	if len(st.Keyring().IDs()) == 1 {
		return nil
	}
	inUse, err := st.SealedKeyIDs(ctx)
	if err != nil {
		return err
	}
	return st.Keyring().Retain(slices.Collect(maps.Keys(inUse)))
}

// runSecrets rotates the secrets key: a new key first in the key file (the
// old ones kept, so that every value still opens if it stops here), every
// secret sealed again with it in one transaction, then the old keys
// dropped. sindrid must be stopped (its instances keep running): it holds
// the secrets lock, and the old key, while it runs. A rotation cut short
// is finished by running it again or by sindrid's next start.
func runSecrets(ctx context.Context, args []string, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "rotate-key" {
		return usageError(secretsUsage)
	}
	fs := flag.NewFlagSet("sindrid secrets rotate-key", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "/etc/sindri/config.toml", "path of the TOML configuration file")
	if err := fs.Parse(args[1:]); err != nil {
		return usageError(err.Error())
	}
	if fs.NArg() > 0 {
		return usageError(secretsUsage)
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
	release, err := st.LockSecrets(ctx, true)
	if errors.Is(err, store.ErrLocked) {
		return errors.New("sindrid is running on this metadata store (or another rotation is): stop it first (its instances keep running), rotate, then start it again")
	} else if err != nil {
		return err
	}
	defer release()
	path := cfg.SecretsKeyFilePath()
	if _, err := st.LoadKeyring(ctx, path, false); err != nil {
		return err
	}
	kr := st.Keyring()
	old := kr.IDs()
	id, err := kr.Rotate()
	if err != nil {
		return err
	}
	n, err := st.SealSecrets(ctx, engine.RedactSourceURL)
	if err != nil {
		return fmt.Errorf("%w (%s holds the new key and the old ones, so nothing is lost: run rotate-key again)", err, path)
	}
	if err := retainUsedKeys(ctx, st); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "sindrid: key %s replaces %s in %s; %d secret(s) sealed again with it\n", id, strings.Join(old, ", "), path, n)
	return nil
}
