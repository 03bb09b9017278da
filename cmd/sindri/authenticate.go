package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"runtime"
	"time"

	"github.com/spf13/cobra"

	"github.com/sindri-db/sindri/pkg/auth/logincode"
	"github.com/sindri-db/sindri/pkg/client"
)

// loginWait is how long authenticate waits for the browser leg: the
// server's 60 s and a little more, so that the server's timeout (an
// answer with a reason) comes first.
const loginWait = 60*time.Second + 15*time.Second

func (a *app) authenticateCmd() *cobra.Command {
	var noBrowser bool
	cmd := &cobra.Command{
		Use:   "authenticate",
		Short: "log in through the server's OAuth provider and store the token (mode 0600)",
		Long: `authenticate logs you in with the server's OAuth provider (Google by default):
it prints a login code and a URL (and opens the URL in a browser when it can),
waits up to 60 s for you to sign in there, and stores the token the server
issues in the config file (mode 0600). The server must have an [oauth]
section, and your e-mail address must be in the domain it trusts.

After you sign in, the browser shows the address and time the login began and
its code: confirm only if they are this command's. A login link somebody else
sent you shows a code your terminal does not: refuse it.`,
		Args: args(),
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			state, err := randomState()
			if err != nil {
				return usageError{err}
			}
			loginURL := cl.BaseURL() + "/authenticate?state=" + url.QueryEscape(state)
			fmt.Fprintf(a.stdout, "Login code: %s (begun at %s)\n", logincode.For(state), time.Now().UTC().Format("15:04:05 UTC"))
			fmt.Fprintln(a.stdout, "After you sign in, confirm in the browser only if it shows this code.")
			fmt.Fprintln(a.stdout, "To log in, open this URL in a browser:")
			fmt.Fprintln(a.stdout, loginURL)
			if !noBrowser && stdoutIsTerminal() {
				openBrowser(loginURL)
			}

			ctx, cancel := context.WithTimeout(c.Context(), loginWait)
			defer cancel()
			tok, err := cl.AccessToken(ctx, state)
			if err != nil {
				var apiErr *client.APIError
				if errors.As(err, &apiErr) {
					return fmt.Errorf("login failed: %w", err)
				}
				if ctx.Err() == context.DeadlineExceeded {
					return fmt.Errorf("login failed: no answer within %s: %w", loginWait, err)
				}
				return err
			}
			token := tok.RefreshToken
			if token == "" {
				token = tok.AccessToken
			}

			s, _, err := readSettings()
			if err != nil {
				return usageError{err}
			}
			s.Token = token
			if s.URL == "" {
				s.URL = cl.BaseURL()
			}
			path, err := writeSettings(s)
			if err != nil {
				return usageError{err}
			}
			if a.json {
				return a.printJSON(map[string]any{"url": cl.BaseURL(), "file": path, "expiry": tok.Expiry})
			}
			fmt.Fprintf(a.stdout, "Logged in to %s; token stored in %s\n", cl.BaseURL(), path)
			if os.Getenv("SINDRI_TOKEN") != "" {
				fmt.Fprintln(a.stderr, "sindri: note: SINDRI_TOKEN is set and overrides the stored token")
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&noBrowser, "no-browser", false, "only print the URL, do not open a browser")
	return cmd
}

// randomState is 32 random bytes, URL-safe base64.
func randomState() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("random state: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

func stdoutIsTerminal() bool {
	fi, err := os.Stdout.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// openBrowser opens u with the desktop's opener, if there is one; it
// does not wait for it and ignores its failure (the URL is printed).
func openBrowser(u string) {
	var name string
	switch runtime.GOOS {
	case "darwin":
		name = "open"
	default:
		if os.Getenv("DISPLAY") == "" && os.Getenv("WAYLAND_DISPLAY") == "" {
			return
		}
		name = "xdg-open"
	}
	path, err := exec.LookPath(name)
	if err != nil {
		return
	}
	cmd := exec.Command(path, u)
	if cmd.Start() == nil {
		go cmd.Wait()
	}
}
