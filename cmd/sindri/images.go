package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/sindri-db/sindri/pkg/client"
)

func (a *app) imagesCmd() *cobra.Command {
	var ofSource string
	list := &cobra.Command{
		Use: "list", Short: "list the images, newest first (--source: those a source made)", Args: args(),
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			var images []client.Image
			if ofSource != "" {
				images, err = cl.ListImagesOfSource(c.Context(), ofSource)
			} else {
				images, err = cl.ListImages(c.Context())
			}
			if err != nil {
				return err
			}
			return a.showImages(images)
		},
	}
	list.Flags().StringVar(&ofSource, "source", "", "only the images of source `NAME`")
	get := &cobra.Command{
		Use: "get ID", Short: "show one image", Args: args("ID"),
		RunE: func(c *cobra.Command, argv []string) error {
			return a.withImage(c, argv[0], func(cl *client.Client, id int64) (*client.Image, error) {
				return cl.GetImage(c.Context(), id)
			})
		},
	}

	var name, backedUpAt, script, backup, fromInstance string
	var wait bool
	create := &cobra.Command{
		Use:   "create",
		Short: "create an image record to upload a data directory into, or (--backup) restore a backup as an image",
		Long: `create makes an image record to upload a data directory into (images upload,
then images finalise).

With --from-instance ID it branches an instance of yours: an image of its
data as it is now, made without stopping it, that only you and the upload
user see; clone it with instances create.

With --backup ID it restores a finished backup instead (upload user only):
the backup's archive becomes the image's upload and the server starts
finalising at once. --wait waits until the image is ready, as images
finalise does (exit 1 if finalising fails); without it, images finalise ID
waits later. --backed-up-at defaults to when the backup's data was backed
up: when it was taken of an instance, the image's own for an image.`,
		Args: args(),
		RunE: func(c *cobra.Command, _ []string) error {
			var backupID, instanceID int64
			if backup != "" && fromInstance != "" {
				return usageError{errors.New("give --backup or --from-instance, not both")}
			}
			if fromInstance != "" {
				var err error
				if instanceID, err = parseID("instance", fromInstance); err != nil {
					return err
				}
				if script != "" || backedUpAt != "" {
					return usageError{errors.New("--from-instance takes no --anonymisation-script and no --backed-up-at: a branch is the instance's data as it is now")}
				}
			}
			if backup != "" {
				var err error
				if backupID, err = parseID("backup", backup); err != nil {
					return err
				}
			} else if wait && instanceID == 0 {
				return usageError{errors.New("--wait goes with --backup or --from-instance: an image without one waits for an upload (then images finalise ID)")}
			}
			var at time.Time
			if backedUpAt != "" {
				var err error
				if at, err = time.Parse(time.RFC3339, backedUpAt); err != nil {
					return usageError{fmt.Errorf("--backed-up-at %q is not an RFC 3339 time such as 2017-05-01T12:00:00Z", backedUpAt)}
				}
			}
			var sql string
			if script != "" {
				data, err := os.ReadFile(script)
				if err != nil {
					return usageError{fmt.Errorf("--anonymisation-script: %w", err)}
				}
				sql = string(data)
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			var opts []client.ImageOption
			if backupID != 0 {
				opts = append(opts, client.FromBackup(backupID))
				if at.IsZero() {
					if at, err = backupTakenAt(c.Context(), cl, backupID); err != nil {
						return err
					}
				}
			}
			if instanceID != 0 {
				opts = append(opts, client.FromInstance(instanceID))
			}
			if at.IsZero() {
				at = time.Now().UTC()
			}
			img, err := cl.CreateImage(c.Context(), at, name, sql, opts...)
			if err != nil {
				return err
			}
			if wait {
				// The server is finalising already; done joins that run.
				if img, err = cl.FinaliseImage(c.Context(), img.ID); err != nil {
					return err
				}
			}
			if err := a.showImage(img); err != nil || a.json || (backupID == 0 && instanceID == 0) || wait {
				return err
			}
			_, err = fmt.Fprintf(a.stdout, "\nfinalising; to wait until it is ready: sindri images finalise %d\n", img.ID)
			return err
		},
	}
	create.Flags().StringVar(&name, "name", "", "a label for the image")
	create.Flags().StringVar(&backedUpAt, "backed-up-at", "", "when the data was backed up (RFC 3339; default now, or the backup's)")
	create.Flags().StringVar(&script, "anonymisation-script", "", "a file of SQL run when the image is finalised")
	create.Flags().StringVar(&backup, "backup", "", "restore finished backup `ID` as the image (upload user only)")
	create.Flags().StringVar(&fromInstance, "from-instance", "", "branch instance `ID` (yours): an image of its data as it is now, without stopping it, that only you (and the upload user) see")
	create.Flags().BoolVar(&wait, "wait", false, "with --backup or --from-instance: wait until the image is ready")

	upload := &cobra.Command{
		Use: "upload ID FILE", Short: "upload a tarball (tar, tar.gz, tar.zst) of a data directory into an image",
		Args: args("ID", "FILE"),
		RunE: func(c *cobra.Command, argv []string) error {
			id, err := parseID("image", argv[0])
			if err != nil {
				return err
			}
			f, err := os.Open(argv[1])
			if err != nil {
				return usageError{err}
			}
			defer f.Close()
			fi, err := f.Stat()
			if err != nil {
				return usageError{err}
			}
			if !fi.Mode().IsRegular() {
				return usageError{fmt.Errorf("%s is not a regular file", argv[1])}
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			var r io.Reader = f
			bar := progressBar(fi.Size(), fmt.Sprintf("uploading image %d", id))
			if bar != nil {
				r = io.TeeReader(f, bar)
			}
			img, err := cl.UploadImage(c.Context(), id, r, fi.Size())
			if bar != nil {
				bar.Finish()
			}
			if err != nil {
				return err
			}
			return a.showImage(img)
		},
	}
	finalise := &cobra.Command{
		Use: "finalise ID", Aliases: []string{"finalize", "done"},
		Short: "prepare, anonymise and snapshot an uploaded image; waits until it is ready", Args: args("ID"),
		RunE: func(c *cobra.Command, argv []string) error {
			return a.withImage(c, argv[0], func(cl *client.Client, id int64) (*client.Image, error) {
				return cl.FinaliseImage(c.Context(), id)
			})
		},
	}
	var force bool
	destroy := &cobra.Command{
		Use: "destroy ID", Short: "destroy an image (--force: and its instances)", Args: args("ID"),
		RunE: func(c *cobra.Command, argv []string) error {
			id, err := parseID("image", argv[0])
			if err != nil {
				return err
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			if err := cl.DestroyImage(c.Context(), id, force); err != nil {
				return err
			}
			if !a.json {
				fmt.Fprintf(a.stdout, "image %d destroyed\n", id)
			}
			return nil
		},
	}
	destroy.Flags().BoolVar(&force, "force", false, "destroy the image's instances too (upload user only)")
	return group(&cobra.Command{Use: "images", Aliases: []string{"image"}, Short: "manage images"},
		list, get, create, upload, finalise, destroy)
}

// backupTakenAt is when the data in backup id was backed up: when the
// backup was taken of an instance; for a backup of an image, the image's
// backed_up_at while the image is there to ask.
func backupTakenAt(ctx context.Context, cl *client.Client, id int64) (time.Time, error) {
	b, err := cl.GetBackup(ctx, id)
	if err != nil {
		return time.Time{}, err
	}
	if b.ImageID != 0 {
		if img, err := cl.GetImage(ctx, b.ImageID); err == nil && !img.BackedUpAt.IsZero() {
			return img.BackedUpAt, nil
		}
	}
	return b.CreatedAt, nil
}

func isTerminal(f *os.File) bool { return term.IsTerminal(int(f.Fd())) }

// progressBar is a progress bar of size bytes (-1: unknown) on stderr when
// stderr is a terminal, else nil.
func progressBar(size int64, description string) *progressbar.ProgressBar {
	if !isTerminal(os.Stderr) {
		return nil
	}
	return progressbar.NewOptions64(size,
		progressbar.OptionSetWriter(os.Stderr),
		progressbar.OptionSetDescription(description),
		progressbar.OptionShowBytes(true),
		progressbar.OptionSetWidth(30),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionShowCount(),
		progressbar.OptionClearOnFinish(),
	)
}

func (a *app) withImage(c *cobra.Command, arg string, do func(*client.Client, int64) (*client.Image, error)) error {
	id, err := parseID("image", arg)
	if err != nil {
		return err
	}
	cl, err := a.client()
	if err != nil {
		return err
	}
	img, err := do(cl, id)
	if err != nil {
		return err
	}
	return a.showImage(img)
}

func (a *app) showImages(images []client.Image) error {
	if a.json {
		if images == nil {
			images = []client.Image{}
		}
		return a.printJSON(images)
	}
	w := a.table()
	fmt.Fprintln(w, "ID\tNAME\tSTATUS\tANONYMISED\tPG\tSIZE\tBACKED UP AT\tCREATED AT")
	for _, img := range images {
		fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", img.ID, orDash(img.Name), img.Status, yesNo(img.Anonymised),
			orDash(img.PGVersion), bytesText(img.SizeBytes), when(img.BackedUpAt), when(img.CreatedAt))
	}
	return w.Flush()
}

func (a *app) showImage(img *client.Image) error {
	if a.json {
		return a.printJSON(img)
	}
	w := a.table()
	fmt.Fprintf(w, "id\t%d\n", img.ID)
	if img.Name != "" {
		fmt.Fprintf(w, "name\t%s\n", img.Name)
	}
	fmt.Fprintf(w, "status\t%s\n", img.Status)
	fmt.Fprintf(w, "ready\t%s\n", yesNo(img.Ready))
	fmt.Fprintf(w, "anonymised\t%s\n", yesNo(img.Anonymised))
	if img.Error != "" {
		fmt.Fprintf(w, "error\t%s\n", img.Error)
	}
	fmt.Fprintf(w, "pg_version\t%s\n", orDash(img.PGVersion))
	fmt.Fprintf(w, "size\t%s\n", bytesText(img.SizeBytes))
	if img.BackupID != 0 {
		fmt.Fprintf(w, "backup_id\t%d\n", img.BackupID)
	}
	if img.SourceID != 0 {
		fmt.Fprintf(w, "source_id\t%d\n", img.SourceID)
	}
	if img.Owner != "" {
		fmt.Fprintf(w, "owner\t%s\n", img.Owner)
		fmt.Fprintf(w, "instance_id\t%d\n", img.InstanceID)
	}
	fmt.Fprintf(w, "backed_up_at\t%s\n", when(img.BackedUpAt))
	fmt.Fprintf(w, "created_at\t%s\n", when(img.CreatedAt))
	fmt.Fprintf(w, "updated_at\t%s\n", when(img.UpdatedAt))
	return w.Flush()
}

// newestReadyImage is the ready image created last, of source if it is
// not "".
func newestReadyImage(ctx context.Context, cl *client.Client, source string) (*client.Image, error) {
	var images []client.Image
	var err error
	if source != "" {
		images, err = cl.ListImagesOfSource(ctx, source)
	} else {
		images, err = cl.ListImages(ctx)
	}
	if err != nil {
		return nil, err
	}
	var ready []client.Image
	for _, img := range images {
		if img.Ready {
			ready = append(ready, img)
		}
	}
	if len(ready) == 0 && source != "" {
		return nil, failure{fmt.Errorf("source %s has no ready image yet", source)}
	}
	if len(ready) == 0 {
		return nil, failure{errors.New("there is no ready image on the server")}
	}
	sort.SliceStable(ready, func(i, j int) bool {
		if !ready[i].CreatedAt.Equal(ready[j].CreatedAt) {
			return ready[i].CreatedAt.After(ready[j].CreatedAt)
		}
		return ready[i].ID > ready[j].ID
	})
	return &ready[0], nil
}
