package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/sindri-db/sindri/pkg/client"
	"github.com/sindri-db/sindri/pkg/version"
)

// settings is the config file, os.UserConfigDir()/sindri/config.json.
type settings struct {
	URL   string `json:"url,omitempty"`
	Token string `json:"token,omitempty"`
}

// configDir is the directory of sindri's files, created 0700.
func configDir() (string, error) {
	base, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("no configuration directory: %w", err)
	}
	return filepath.Join(base, "sindri"), nil
}

func configPath() (string, error) {
	dir, err := configDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, "config.json"), nil
}

func readSettings() (settings, string, error) {
	var s settings
	path, err := configPath()
	if err != nil {
		return s, "", err
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return s, path, nil
	}
	if err != nil {
		return s, path, err
	}
	if err := json.Unmarshal(data, &s); err != nil {
		return s, path, fmt.Errorf("%s: %w", path, err)
	}
	return s, path, nil
}

func writeSettings(s settings) (string, error) {
	path, err := configPath()
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return path, err
	}
	data, _ := json.MarshalIndent(s, "", "  ")
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(data, '\n'), 0o600); err != nil {
		return path, err
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		return path, err
	}
	return path, os.Rename(tmp, path)
}

// effective is the configuration in force: the file, overridden by
// SINDRI_URL and SINDRI_TOKEN; from says where each value came from.
func effective() (s settings, from map[string]string, err error) {
	s, path, err := readSettings()
	from = map[string]string{}
	if s.URL != "" {
		from["url"] = path
	}
	if s.Token != "" {
		from["token"] = path
	}
	if v := os.Getenv("SINDRI_URL"); v != "" {
		s.URL, from["url"] = v, "SINDRI_URL"
	}
	if v := os.Getenv("SINDRI_TOKEN"); v != "" {
		s.Token, from["token"] = v, "SINDRI_TOKEN"
	}
	return s, from, err
}

// client is the API client of the configured server.
func (a *app) client() (*client.Client, error) {
	s, _, err := effective()
	if err != nil {
		return nil, usageError{err}
	}
	if s.URL == "" {
		return nil, usageError{errors.New("no server URL: run `sindri config set url URL` or set SINDRI_URL")}
	}
	c, err := client.New(s.URL, s.Token, client.WithUserAgent("sindri/"+version.Version))
	if err != nil {
		return nil, usageError{err}
	}
	return c, nil
}

func (a *app) configCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "config", Short: "show or change the server URL and token"}
	show := &cobra.Command{
		Use:   "show",
		Short: "show the configuration in force (SINDRI_URL and SINDRI_TOKEN override the file)",
		Args:  args(),
		RunE: func(c *cobra.Command, _ []string) error {
			s, from, err := effective()
			if err != nil {
				return usageError{err}
			}
			path, _ := configPath()
			if a.json {
				return a.printJSON(map[string]any{"url": s.URL, "token": s.Token, "file": path, "sources": from})
			}
			w := a.table()
			fmt.Fprintf(w, "file\t%s\n", path)
			fmt.Fprintf(w, "url\t%s\t%s\n", orDash(s.URL), source(from["url"]))
			fmt.Fprintf(w, "token\t%s\t%s\n", orDash(mask(s.Token)), source(from["token"]))
			return w.Flush()
		},
	}
	set := &cobra.Command{
		Use:   "set KEY VALUE",
		Short: "set url or token in the config file (mode 0600)",
		Args:  args("KEY", "VALUE"),
		RunE: func(c *cobra.Command, argv []string) error {
			s, _, err := readSettings()
			if err != nil {
				return usageError{err}
			}
			switch key, value := argv[0], argv[1]; key {
			case "url":
				u, err := url.Parse(value)
				if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
					return usageError{fmt.Errorf("url %q: want http://HOST[:PORT] or https://HOST[:PORT]", value)}
				}
				s.URL = strings.TrimRight(value, "/")
			case "token":
				s.Token = value
			default:
				return usageError{fmt.Errorf("unknown key %q: the keys are url and token", key)}
			}
			path, err := writeSettings(s)
			if err != nil {
				return usageError{err}
			}
			if !a.json {
				fmt.Fprintf(a.stdout, "%s set in %s\n", argv[0], path)
			}
			return nil
		},
	}
	cmd.AddCommand(show, set)
	return cmd
}

func mask(token string) string {
	if len(token) <= 8 {
		return strings.Repeat("*", len(token))
	}
	return token[:4] + strings.Repeat("*", 8)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func source(from string) string {
	if from == "" {
		return ""
	}
	return "(from " + from + ")"
}
