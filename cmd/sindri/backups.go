package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/sindri-db/sindri/pkg/client"
)

func (a *app) backupsCmd() *cobra.Command {
	list := &cobra.Command{
		Use: "list", Short: "list your backups, newest first (all of them for the upload user)", Args: args(),
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			backups, err := cl.ListBackups(c.Context())
			if err != nil {
				return err
			}
			return a.showBackups(backups)
		},
	}
	get := &cobra.Command{
		Use: "get ID", Short: "show one backup", Args: args("ID"),
		RunE: func(c *cobra.Command, argv []string) error {
			id, err := parseID("backup", argv[0])
			if err != nil {
				return err
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			b, err := cl.GetBackup(c.Context(), id)
			if err != nil {
				return err
			}
			return a.showBackup(b)
		},
	}

	var instance, image string
	var wait bool
	create := &cobra.Command{
		Use:   "create (--instance ID | --image ID)",
		Short: "back up an instance of yours or (upload user) a ready image, without stopping it (--wait: until it is written)",
		Long: `create backs up a running instance of yours (--instance) or, for the upload
user only, a ready image (--image) without stopping it: the backup holds the
data as it was when the command returns, and the server writes it as a
tar.zst in the background. --wait waits until it is done (exit 1 if it
failed, with the reason).

Download it with backups download ID; restore it as an image with
images create --backup ID (upload user). A restore of an instance's backup
takes no --anonymisation-script: the instance's users could have planted
code that the script, run as superuser, would fire.`,
		Args: args(),
		RunE: func(c *cobra.Command, _ []string) error {
			if (instance == "") == (image == "") {
				return usageError{errors.New("give exactly one of --instance ID and --image ID")}
			}
			var src client.BackupSource
			var err error
			if instance != "" {
				src.InstanceID, err = parseID("instance", instance)
			} else {
				src.ImageID, err = parseID("image", image)
			}
			if err != nil {
				return err
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			b, err := cl.CreateBackup(c.Context(), src)
			if err != nil {
				return err
			}
			if wait {
				if b, err = waitBackup(c.Context(), cl, b); err != nil {
					return err
				}
			}
			if err := a.showBackup(b); err != nil {
				return err
			}
			switch {
			case b.Status == client.BackupFailed:
				return failure{fmt.Errorf("backup %d failed: %s", b.ID, orDash(b.Error))}
			case a.json:
			case b.Status == client.BackupRunning:
				_, err = fmt.Fprintf(a.stdout, "\nwritten in the background; to follow it: sindri backups get %d\n", b.ID)
			default:
				_, err = fmt.Fprintf(a.stdout, "\nto download it: sindri backups download %d\n", b.ID)
			}
			return err
		},
	}
	create.Flags().StringVar(&instance, "instance", "", "back up instance `ID` (one of yours)")
	create.Flags().StringVar(&image, "image", "", "back up image `ID` (a ready one; upload user only)")
	create.Flags().BoolVar(&wait, "wait", false, "wait until the backup is done (exit 1 if it fails)")

	var output string
	var force bool
	download := &cobra.Command{
		Use:   "download ID [-o FILE]",
		Short: "download a backup's archive (a tar.zst), checking its SHA-256",
		Long: `download saves a finished backup's archive, a tar.zst of the data directory,
as sindri-backup-ID.tar.zst in the current directory, or as FILE with -o
(a directory: the default name in it; -: to stdout). It checks the bytes
against the SHA-256 the server sends, and prints the file and its SHA-256.

The file is written (mode 0600) under a temporary name in its directory and
renamed when complete and checked, so a failed download leaves no file. An
existing file is not replaced (exit 2) unless --force. Written to stdout,
the bytes are out before they can be checked: a mismatch exits 1.`,
		Args: args("ID"),
		RunE: func(c *cobra.Command, argv []string) error {
			id, err := parseID("backup", argv[0])
			if err != nil {
				return err
			}
			if output == "-" {
				return a.downloadToStdout(c.Context(), id)
			}
			return a.downloadToFile(c.Context(), id, output, force)
		},
	}
	download.Flags().StringVarP(&output, "output", "o", "", "write to `FILE` (a directory: the default name in it; -: stdout)")
	download.Flags().BoolVar(&force, "force", false, "replace the file if it exists")

	del := &cobra.Command{
		Use: "delete ID", Aliases: []string{"destroy"},
		Short: "delete a backup (a running one is stopped); images restored from it stay", Args: args("ID"),
		RunE: func(c *cobra.Command, argv []string) error {
			id, err := parseID("backup", argv[0])
			if err != nil {
				return err
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			if err := cl.DeleteBackup(c.Context(), id); err != nil {
				return err
			}
			if !a.json {
				fmt.Fprintf(a.stdout, "backup %d deleted\n", id)
			}
			return nil
		},
	}
	return group(&cobra.Command{Use: "backups", Aliases: []string{"backup"},
		Short: "back up instances and images, download backups (restore: images create --backup)"},
		list, get, create, download, del)
}

// waitBackup polls b until it is no longer running.
func waitBackup(ctx context.Context, cl *client.Client, b *client.Backup) (*client.Backup, error) {
	delay := 200 * time.Millisecond
	for b.Status == client.BackupRunning {
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("stopped waiting for backup %d, which goes on: %w", b.ID, ctx.Err())
		case <-t.C:
		}
		if delay < 2*time.Second {
			delay = delay * 3 / 2
		}
		next, err := cl.GetBackup(ctx, b.ID)
		if err != nil {
			return nil, err
		}
		b = next
	}
	return b, nil
}

// backupFileName is the default name of backup id's archive, the one the
// server's Content-Disposition gives too.
func backupFileName(id int64) string { return fmt.Sprintf("sindri-backup-%d.tar.zst", id) }

// downloadToFile downloads backup id into a temporary file next to the
// destination and renames it into place once it is complete and checked.
func (a *app) downloadToFile(ctx context.Context, id int64, output string, force bool) error {
	path := output
	if path == "" {
		path = backupFileName(id)
	} else if fi, err := os.Stat(path); err == nil && fi.IsDir() {
		path = filepath.Join(path, backupFileName(id))
	}
	path, err := filepath.Abs(path)
	if err != nil {
		return usageError{err}
	}
	if err := checkTarget(path, force); err != nil {
		return err
	}
	cl, err := a.client()
	if err != nil {
		return err
	}
	b, err := cl.GetBackup(ctx, id)
	if err != nil {
		return err
	}

	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*.partial")
	if err != nil {
		return usageError{err}
	}
	placed := false
	defer func() {
		if !placed {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	var w io.Writer = tmp
	bar := progressBar(b.SizeBytes, fmt.Sprintf("downloading backup %d", id))
	if bar != nil {
		w = io.MultiWriter(tmp, bar)
	}
	n, err := cl.DownloadBackup(ctx, id, w)
	if bar != nil {
		bar.Finish()
	}
	if err != nil {
		return downloadError(err)
	}
	if err := tmp.Sync(); err != nil {
		return usageError{err}
	}
	if err := tmp.Close(); err != nil {
		return usageError{err}
	}
	if err := place(tmp.Name(), path, force); err != nil {
		return err
	}
	placed = true

	if a.json {
		return a.printJSON(map[string]any{"id": id, "file": path, "size_bytes": n, "sha256": b.SHA256})
	}
	w2 := a.table()
	fmt.Fprintf(w2, "file\t%s\n", path)
	fmt.Fprintf(w2, "size\t%s\n", bytesText(n))
	fmt.Fprintf(w2, "sha256\t%s\n", b.SHA256)
	return w2.Flush()
}

// checkTarget refuses to replace path unless force, and a directory
// always.
func checkTarget(path string, force bool) error {
	fi, err := os.Lstat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return usageError{err}
	case fi.IsDir():
		return usageError{fmt.Errorf("%s is a directory", path)}
	case !force:
		return usageError{fmt.Errorf("%s already exists; not replaced (--force replaces it)", path)}
	}
	return nil
}

// place moves the complete download tmp to path; without force it never
// replaces a file, even one that appeared during the download.
func place(tmp, path string, force bool) error {
	if force {
		if err := os.Rename(tmp, path); err != nil {
			return usageError{err}
		}
		return nil
	}
	// A hard link fails if path exists, where a rename would replace it.
	err := os.Link(tmp, path)
	if errors.Is(err, fs.ErrExist) {
		return usageError{fmt.Errorf("%s already exists; not replaced (--force replaces it)", path)}
	}
	if err != nil {
		// No hard links here (some network and FUSE filesystems):
		// check, then rename.
		if err := checkTarget(path, false); err != nil {
			return err
		}
		if err := os.Rename(tmp, path); err != nil {
			return usageError{err}
		}
		return nil
	}
	os.Remove(tmp)
	return nil
}

// downloadToStdout streams backup id to stdout; nothing else is printed
// there.
func (a *app) downloadToStdout(ctx context.Context, id int64) error {
	if f, ok := a.stdout.(*os.File); ok && isTerminal(f) {
		return usageError{errors.New("not writing a binary archive to a terminal: redirect stdout, or use -o FILE")}
	}
	cl, err := a.client()
	if err != nil {
		return err
	}
	w := a.stdout
	if isTerminal(os.Stderr) {
		b, err := cl.GetBackup(ctx, id)
		if err != nil {
			return err
		}
		if bar := progressBar(b.SizeBytes, fmt.Sprintf("downloading backup %d", id)); bar != nil {
			defer bar.Finish()
			w = io.MultiWriter(a.stdout, bar)
		}
	}
	if _, err := cl.DownloadBackup(ctx, id, w); err != nil {
		return downloadError(err)
	}
	return nil
}

// downloadError is err with its exit code: a mismatch of the SHA-256 is
// the server's fault (1), like its refusals.
func downloadError(err error) error {
	if errors.Is(err, client.ErrDigestMismatch) {
		return failure{err}
	}
	return err
}

// backupSource is what a backup was taken of, such as "instance 4".
func backupSource(b client.Backup) string {
	switch {
	case b.InstanceID != 0:
		return fmt.Sprintf("instance %d", b.InstanceID)
	case b.ImageID != 0:
		return fmt.Sprintf("image %d", b.ImageID)
	}
	return "-"
}

func (a *app) showBackups(backups []client.Backup) error {
	if a.json {
		if backups == nil {
			backups = []client.Backup{}
		}
		return a.printJSON(backups)
	}
	w := a.table()
	fmt.Fprintln(w, "ID\tSOURCE\tSTATUS\tSIZE\tCREATED AT")
	for _, b := range backups {
		fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\n", b.ID, backupSource(b), b.Status, bytesText(b.SizeBytes), when(b.CreatedAt))
	}
	return w.Flush()
}

func (a *app) showBackup(b *client.Backup) error {
	if a.json {
		return a.printJSON(b)
	}
	w := a.table()
	fmt.Fprintf(w, "id\t%d\n", b.ID)
	if b.InstanceID != 0 {
		fmt.Fprintf(w, "instance_id\t%d\n", b.InstanceID)
	}
	if b.ImageID != 0 {
		fmt.Fprintf(w, "image_id\t%d\n", b.ImageID)
	}
	fmt.Fprintf(w, "status\t%s\n", b.Status)
	if b.Error != "" {
		fmt.Fprintf(w, "error\t%s\n", b.Error)
	}
	fmt.Fprintf(w, "size\t%s\n", bytesText(b.SizeBytes))
	fmt.Fprintf(w, "sha256\t%s\n", orDash(b.SHA256))
	fmt.Fprintf(w, "created_at\t%s\n", when(b.CreatedAt))
	fmt.Fprintf(w, "updated_at\t%s\n", when(b.UpdatedAt))
	return w.Flush()
}
