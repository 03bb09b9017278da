package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/sindri-db/sindri/pkg/client"
	"github.com/sindri-db/sindri/pkg/version"
)

func (a *app) envCmd() *cobra.Command {
	var asURL bool
	cmd := &cobra.Command{
		Use:   "env ID",
		Short: "print the shell variables that point psql at an instance: eval $(sindri env ID)",
		Long: `env writes the instance's TLS certificates into a private directory under your
configuration directory and prints the PG* variables that make psql (and
every libpq program) log in as role draupnir with them:

  eval $(sindri env ID)
  psql

With --url it prints the instance's database URL instead.`,
		Args: args("ID"),
		RunE: func(c *cobra.Command, argv []string) error {
			id, err := parseID("instance", argv[0])
			if err != nil {
				return err
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			inst, err := cl.GetInstance(c.Context(), id)
			if err != nil {
				return err
			}
			return a.printEnv(inst, asURL)
		},
	}
	cmd.Flags().BoolVar(&asURL, "url", false, "print the instance's database URL instead")
	return cmd
}

func (a *app) newCmd() *cobra.Command {
	var opts createOptions
	var asURL bool
	cmd := &cobra.Command{
		Use:   "new",
		Short: "create an instance of the newest ready image and print its env: eval $(sindri new)",
		Args:  args(),
		RunE: func(c *cobra.Command, _ []string) error {
			inst, err := a.createInstance(c, "", opts)
			if err != nil {
				return err
			}
			return a.printEnv(inst, asURL)
		},
	}
	opts.flags(cmd)
	cmd.Flags().BoolVar(&asURL, "url", false, "print the instance's database URL instead of the env")
	return cmd
}

// printEnv writes the instance's credentials to files and prints the
// export line (or the database URL, or with --json the instance and the
// variables).
func (a *app) printEnv(inst *client.Instance, asURL bool) error {
	if asURL && !a.json {
		_, err := fmt.Fprintln(a.stdout, inst.DatabaseURL)
		return err
	}
	if inst.Credentials == nil {
		return fmt.Errorf("the server sent no credentials for instance %d", inst.ID)
	}
	dir, err := writeCredentials(inst)
	if err != nil {
		return err
	}
	vars := [][2]string{
		{"PGHOST", inst.Hostname},
		{"PGPORT", strconv.Itoa(inst.Port)},
		{"PGUSER", "draupnir"},
		{"PGDATABASE", "postgres"},
		{"PGSSLMODE", "verify-ca"},
		{"PGSSLROOTCERT", filepath.Join(dir, "ca.crt")},
		{"PGSSLCERT", filepath.Join(dir, "client.crt")},
		{"PGSSLKEY", filepath.Join(dir, "client.key")},
	}
	if a.json {
		env := map[string]string{}
		for _, v := range vars {
			env[v[0]] = v[1]
		}
		return a.printJSON(map[string]any{"instance": inst, "env": env})
	}
	parts := []string{"export"}
	for _, v := range vars {
		parts = append(parts, v[0]+"="+shellQuote(v[1]))
	}
	_, err = fmt.Fprintln(a.stdout, strings.Join(parts, " "))
	return err
}

// writeCredentials writes the PEM files 0600 into a private 0700
// directory, configDir/instances/ID, and returns it.
func writeCredentials(inst *client.Instance) (string, error) {
	base, err := configDir()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(base, "instances", strconv.FormatInt(inst.ID, 10))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	for _, d := range []string{base, filepath.Join(base, "instances"), dir} {
		if err := os.Chmod(d, 0o700); err != nil {
			return "", err
		}
	}
	for name, pem := range map[string]string{
		"ca.crt":     inst.Credentials.CACertificate,
		"client.crt": inst.Credentials.ClientCertificate,
		"client.key": inst.Credentials.ClientKey,
	} {
		if pem == "" {
			return "", errors.New("the server sent empty credentials for instance " + strconv.FormatInt(inst.ID, 10))
		}
		path := filepath.Join(dir, name)
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, []byte(pem), 0o600); err != nil {
			return "", err
		}
		if err := os.Chmod(tmp, 0o600); err != nil {
			return "", err
		}
		if err := os.Rename(tmp, path); err != nil {
			return "", err
		}
	}
	return dir, nil
}

// shellQuote quotes s for a POSIX shell when it needs it.
func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./:@%+=,", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func (a *app) statusCmd() *cobra.Command {
	return &cobra.Command{
		Use: "status", Short: "show the server's status", Args: args(),
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			st, err := cl.Status(c.Context())
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(st)
			}
			w := a.table()
			fmt.Fprintf(w, "server\t%s\n", cl.BaseURL())
			fmt.Fprintf(w, "status\t%s\n", st.Status)
			for _, p := range st.Problems {
				fmt.Fprintf(w, "problem\t%s\n", p)
			}
			fmt.Fprintf(w, "version\t%s (API %s)\n", st.Version, orDash(st.APIVersion))
			fmt.Fprintf(w, "storage\t%s\n", st.StorageDriver)
			fmt.Fprintf(w, "disk\t%s free of %s, %s used by instances\n", bytesText(st.FreeBytes), bytesText(st.TotalBytes), bytesText(st.UsedByInstancesBytes))
			fmt.Fprintf(w, "images\t%s\n", counts(st.Images))
			fmt.Fprintf(w, "instances\t%s\n", counts(st.Instances))
			fmt.Fprintf(w, "expected cloning time\t%d ms\n", st.ExpectedCloningTimeMS)
			return w.Flush()
		},
	}
}

func counts(m map[string]int) string {
	if len(m) == 0 {
		return "none"
	}
	var parts []string
	for _, k := range []string{"pending", "finalising", "ready", "failed", "creating", "running", "stopped"} {
		if n, ok := m[k]; ok {
			parts = append(parts, fmt.Sprintf("%d %s", n, k))
			delete(m, k)
		}
	}
	for k, n := range m {
		parts = append(parts, fmt.Sprintf("%d %s", n, k))
	}
	return strings.Join(parts, ", ")
}

func (a *app) versionCmd() *cobra.Command {
	return &cobra.Command{
		Use: "version", Short: "show the client's, the server's and the API's versions", Args: args(),
		RunE: func(c *cobra.Command, _ []string) error {
			out := map[string]string{"client": version.Version, "api": version.API}
			var serverErr error
			if s, _, _ := effective(); s.URL != "" {
				cl, err := a.client()
				if err == nil {
					var st *client.Status
					if st, err = cl.Status(c.Context()); err == nil {
						out["server"] = st.Version
					}
				}
				serverErr = err
			}
			if a.json {
				if err := a.printJSON(out); err != nil {
					return err
				}
			} else {
				w := a.table()
				fmt.Fprintf(w, "client\t%s\n", out["client"])
				fmt.Fprintf(w, "server\t%s\n", orDash(out["server"]))
				fmt.Fprintf(w, "api\t%s\n", out["api"])
				if err := w.Flush(); err != nil {
					return err
				}
			}
			return serverErr
		},
	}
}
