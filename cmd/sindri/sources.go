package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/sindri-db/sindri/pkg/client"
)

// sourceFlags are what sources create and update take.
type sourceFlags struct {
	name, url, mode, schedule, script string
	keep                              int
}

func (f *sourceFlags) add(c *cobra.Command) {
	c.Flags().StringVar(&f.name, "name", "", "the source's name (letters, digits, '.', '_', '-')")
	c.Flags().StringVar(&f.url, "url", "", "the server's libpq URL, such as postgres://replicator:PASSWORD@db:5432/postgres; - reads it from stdin (keeps the password out of the process list and the shell's history)")
	c.Flags().StringVar(&f.mode, "mode", "", "basebackup (each refresh pulls a base backup) or replica")
	c.Flags().StringVar(&f.schedule, "schedule", "", `an interval such as 6h, or a five-field cron expression in UTC such as "0 3 * * *"; "" refreshes only when asked`)
	c.Flags().StringVar(&f.script, "anonymisation-script", "", "a file of SQL run on each refresh's image before it is frozen")
	c.Flags().IntVar(&f.keep, "keep", 0, "how many ready images of the source to keep (default: the server's, 3)")
}

// readURL is --url, read from stdin when it is "-".
func readURL(in io.Reader, u string) (string, error) {
	if u != "-" {
		return u, nil
	}
	line, err := bufio.NewReader(in).ReadString('\n')
	if err != nil && line == "" {
		return "", usageError{fmt.Errorf("--url -: reading the URL from stdin: %w", err)}
	}
	return strings.TrimSpace(line), nil
}

func readScript(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", usageError{fmt.Errorf("--anonymisation-script: %w", err)}
	}
	return string(data), nil
}

func (a *app) sourcesCmd() *cobra.Command {
	list := &cobra.Command{
		Use: "list", Short: "list the sources", Args: args(),
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			srcs, err := cl.ListSources(c.Context())
			if err != nil {
				return err
			}
			return a.showSources(srcs)
		},
	}
	get := &cobra.Command{
		Use: "get NAME|ID", Short: "show one source", Args: args("NAME|ID"),
		RunE: func(c *cobra.Command, argv []string) error {
			return a.withSource(c, argv[0], func(cl *client.Client, id int64) (*client.Source, error) {
				return cl.GetSource(c.Context(), id)
			})
		},
	}
	var cf sourceFlags
	create := &cobra.Command{
		Use: "create --name NAME --url URL", Short: "record a source: a server to make images of on a schedule (upload user only)",
		Args: args(),
		RunE: func(c *cobra.Command, _ []string) error {
			if cf.name == "" || cf.url == "" {
				return usageError{errors.New("sources create needs --name and --url")}
			}
			in := client.SourceInput{Name: cf.name, Mode: cf.mode, Schedule: cf.schedule, Keep: cf.keep}
			var err error
			if in.URL, err = readURL(c.InOrStdin(), cf.url); err != nil {
				return err
			}
			if c.Flags().Changed("keep") && cf.keep < 1 {
				return usageError{fmt.Errorf("--keep %d: keep at least 1", cf.keep)}
			}
			if cf.script != "" {
				if in.AnonymisationScript, err = readScript(cf.script); err != nil {
					return err
				}
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			src, err := cl.CreateSource(c.Context(), in)
			if err != nil {
				return err
			}
			return a.showSource(src)
		},
	}
	cf.add(create)
	var uf sourceFlags
	update := &cobra.Command{
		Use: "update NAME|ID [flags]", Short: "change a source: only the flags given (--url replaces the whole URL, its password too)",
		Args: args("NAME|ID"),
		RunE: func(c *cobra.Command, argv []string) error {
			var p client.SourcePatch
			for flag, field := range map[string]struct {
				to   **string
				from *string
			}{"name": {&p.Name, &uf.name}, "mode": {&p.Mode, &uf.mode}, "schedule": {&p.Schedule, &uf.schedule}} {
				if c.Flags().Changed(flag) {
					*field.to = field.from
				}
			}
			if c.Flags().Changed("url") {
				u, err := readURL(c.InOrStdin(), uf.url)
				if err != nil {
					return err
				}
				p.URL = &u
			}
			if c.Flags().Changed("anonymisation-script") {
				sql := ""
				if uf.script != "" {
					var err error
					if sql, err = readScript(uf.script); err != nil {
						return err
					}
				}
				p.AnonymisationScript = &sql
			}
			if c.Flags().Changed("keep") {
				p.Keep = &uf.keep
			}
			if p == (client.SourcePatch{}) {
				return usageError{errors.New("sources update needs at least one of --name, --url, --mode, --schedule, --anonymisation-script (\"\" removes it) and --keep")}
			}
			return a.withSource(c, argv[0], func(cl *client.Client, id int64) (*client.Source, error) {
				return cl.UpdateSource(c.Context(), id, p)
			})
		},
	}
	uf.add(update)
	del := &cobra.Command{
		Use: "delete NAME|ID", Short: "delete a source; the images it made stay", Args: args("NAME|ID"),
		RunE: func(c *cobra.Command, argv []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			id, err := resolveSource(c.Context(), cl, argv[0])
			if err != nil {
				return err
			}
			if err := cl.DeleteSource(c.Context(), id); err != nil {
				return err
			}
			if !a.json {
				fmt.Fprintf(a.stdout, "source %s deleted\n", argv[0])
			}
			return nil
		},
	}
	var wait bool
	refresh := &cobra.Command{
		Use: "refresh NAME|ID", Short: "refresh a source now: a new image of it (--wait: until it is ready; exit 1 if it fails)",
		Args: args("NAME|ID"),
		RunE: func(c *cobra.Command, argv []string) error {
			return a.withSource(c, argv[0], func(cl *client.Client, id int64) (*client.Source, error) {
				before, err := cl.GetSource(c.Context(), id)
				if err != nil {
					return nil, err
				}
				src, err := cl.RefreshSource(c.Context(), id)
				if err != nil || !wait {
					return src, err
				}
				return waitRefresh(c.Context(), cl, id, before.LastImageID)
			})
		},
	}
	refresh.Flags().BoolVar(&wait, "wait", false, "wait until the refresh has made its image (or failed)")
	return group(&cobra.Command{Use: "sources", Aliases: []string{"source"}, Short: "manage sources: servers whose images are refreshed on a schedule (upload user)"},
		list, get, create, update, del, refresh)
}

// waitRefresh polls source id until a refresh after the one that made
// image last has ended: with a new image, or failed.
func waitRefresh(ctx context.Context, cl *client.Client, id, last int64) (*client.Source, error) {
	for {
		src, err := cl.GetSource(ctx, id)
		if err != nil {
			return nil, err
		}
		switch {
		case src.Status != client.SourceRefreshing && src.LastImageID != last:
			return src, nil
		case src.Status == client.SourceFailed:
			return nil, failure{fmt.Errorf("refreshing source %s failed: %s", src.Name, src.Error)}
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// resolveSource is the id of the source named ref (or of id ref).
func resolveSource(ctx context.Context, cl *client.Client, ref string) (int64, error) {
	if id, err := strconv.ParseInt(ref, 10, 64); err == nil && id > 0 {
		return id, nil
	}
	srcs, err := cl.ListSources(ctx)
	if err != nil {
		return 0, err
	}
	for _, s := range srcs {
		if s.Name == ref {
			return s.ID, nil
		}
	}
	return 0, failure{fmt.Errorf("there is no source named %q", ref)}
}

func (a *app) withSource(c *cobra.Command, ref string, do func(*client.Client, int64) (*client.Source, error)) error {
	cl, err := a.client()
	if err != nil {
		return err
	}
	id, err := resolveSource(c.Context(), cl, ref)
	if err != nil {
		return err
	}
	src, err := do(cl, id)
	if err != nil {
		return err
	}
	return a.showSource(src)
}

func (a *app) showSources(srcs []client.Source) error {
	if a.json {
		if srcs == nil {
			srcs = []client.Source{}
		}
		return a.printJSON(srcs)
	}
	w := a.table()
	fmt.Fprintln(w, "ID\tNAME\tMODE\tSCHEDULE\tKEEP\tSTATUS\tLAST IMAGE\tLAST REFRESH\tNEXT REFRESH")
	for _, s := range srcs {
		last := "-"
		if s.LastImageID != 0 {
			last = strconv.FormatInt(s.LastImageID, 10)
		}
		fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", s.ID, s.Name, s.Mode, orDash(s.Schedule), s.Keep, s.Status,
			last, whenPtr(s.LastRefreshAt), whenPtr(s.NextRefreshAt))
	}
	return w.Flush()
}

func (a *app) showSource(s *client.Source) error {
	if a.json {
		return a.printJSON(s)
	}
	w := a.table()
	fmt.Fprintf(w, "id\t%d\n", s.ID)
	fmt.Fprintf(w, "name\t%s\n", s.Name)
	fmt.Fprintf(w, "url\t%s\n", s.URL)
	fmt.Fprintf(w, "mode\t%s\n", s.Mode)
	fmt.Fprintf(w, "schedule\t%s\n", orDash(s.Schedule))
	fmt.Fprintf(w, "keep\t%d\n", s.Keep)
	fmt.Fprintf(w, "status\t%s\n", s.Status)
	if s.Error != "" {
		fmt.Fprintf(w, "error\t%s\n", s.Error)
	}
	if s.LastImageID != 0 {
		fmt.Fprintf(w, "last_image_id\t%d\n", s.LastImageID)
	}
	fmt.Fprintf(w, "last_refresh_at\t%s\n", whenPtr(s.LastRefreshAt))
	fmt.Fprintf(w, "next_refresh_at\t%s\n", whenPtr(s.NextRefreshAt))
	if s.LagBytes != nil {
		fmt.Fprintf(w, "lag_bytes\t%d\n", *s.LagBytes)
	}
	if s.LagSeconds != nil {
		fmt.Fprintf(w, "lag_seconds\t%.1f\n", *s.LagSeconds)
	}
	fmt.Fprintf(w, "created_at\t%s\n", when(s.CreatedAt))
	return w.Flush()
}
