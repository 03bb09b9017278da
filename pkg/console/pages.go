package console

import (
	"context"
	"fmt"
	"html"
	"html/template"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/sindri-db/sindri/pkg/api"
	"github.com/sindri-db/sindri/pkg/api/resource"
	"github.com/sindri-db/sindri/pkg/engine"
	"github.com/sindri-db/sindri/pkg/store"
)

// --- overview ---

type count struct {
	Status string
	N      int
}

type overviewData struct {
	Status    *resource.Status
	Disk      diskBar
	Images    []count
	Instances []count
	Backups   []count
	Limits    []limitRow
}

type diskBar struct {
	Total, Free, Instances, Backups, Other int64
	// Percentages of Total, for the bar's widths.
	InstancesPct, BackupsPct, OtherPct, FreePct float64
	BackupsX, OtherX                            float64 // where those segments start
}

type limitRow struct {
	Name  string
	Limit int64
	Used  *int64
	Yours *int64
	Bytes bool
}

func (c *Console) overview(w http.ResponseWriter, r *http.Request, q *request) error {
	st, err := c.opts.Status.Get(r.Context(), q.actor)
	if err != nil {
		return err
	}
	res := api.StatusResource(st, c.opts.Version)
	d := overviewData{Status: res, Images: counts(res.Images), Instances: counts(res.Instances), Backups: counts(res.Backups)}
	d.Disk = diskBar{Total: res.TotalBytes, Free: res.FreeBytes, Instances: res.UsedByInstancesBytes, Backups: res.UsedByBackupsBytes}
	d.Disk.Other = max(0, d.Disk.Total-d.Disk.Free-d.Disk.Instances-d.Disk.Backups)
	if t := float64(d.Disk.Total); t > 0 {
		d.Disk.InstancesPct = 100 * float64(d.Disk.Instances) / t
		d.Disk.BackupsPct = 100 * float64(d.Disk.Backups) / t
		d.Disk.OtherPct = 100 * float64(d.Disk.Other) / t
		d.Disk.FreePct = 100 * float64(d.Disk.Free) / t
		d.Disk.BackupsX = d.Disk.InstancesPct
		d.Disk.OtherX = d.Disk.InstancesPct + d.Disk.BackupsPct
	}
	for name, l := range res.Limits {
		if name == "disk_reserve" {
			d.Limits = append(d.Limits, limitRow{Name: name, Limit: l.Limit, Bytes: true})
			continue
		}
		d.Limits = append(d.Limits, limitRow{Name: name, Limit: l.Limit, Used: l.Used, Yours: l.Yours, Bytes: name == "backups_total_bytes"})
	}
	sort.Slice(d.Limits, func(i, j int) bool { return d.Limits[i].Name < d.Limits[j].Name })
	c.render(w, r, http.StatusOK, "overview.html", q, d)
	return nil
}

func counts(m map[string]int) []count {
	var out []count
	for s, n := range m {
		out = append(out, count{s, n})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Status < out[j].Status })
	return out
}

// --- images ---

type imageRow struct {
	*resource.Image
	Instances int
}

type imagesData struct {
	Images []imageRow
	// AllInstances: the counts are of every instance (the upload user's
	// view), not only the caller's.
	AllInstances bool
}

func (c *Console) images(w http.ResponseWriter, r *http.Request, q *request) error {
	images, err := c.opts.Images.List(r.Context(), q.actor)
	if err != nil {
		return err
	}
	instances, err := c.opts.Instances.List(r.Context(), q.actor)
	if err != nil {
		return err
	}
	using := map[int64]int{}
	for _, inst := range instances {
		using[inst.ImageID]++
	}
	d := imagesData{AllInstances: q.actor.Upload}
	live := false
	for _, img := range images {
		d.Images = append(d.Images, imageRow{Image: api.ImageResource(img), Instances: using[img.ID]})
		live = live || img.Status == store.ImagePending && img.HasSourceURL || img.Status == store.ImageFinalising
	}
	c.renderLive(w, r, q, "images.html", d, live)
	return nil
}

// --- instances ---

// instanceRow is a row of the instances page.
type instanceRow struct {
	ID                        int64
	Owner, Image, Status, Err string
	HostPort                  string
	Created, Expires, In      string
	Protected                 bool
	Written                   string // "": not measured yet
	WrittenBytes              int64
}

// instanceRows renders the rows of the instances table. A page may have
// thousands, and html/template's escaping (a reflective call per value)
// took most of 1,000 rows' 35 ms of CPU, so the rows are written here:
// every value goes through html.EscapeString, and only into element text
// or a double-quoted attribute, where that escaping is what html/template
// would apply (TestInstanceRowsAreEscaped).
func instanceRows(rows []instanceRow, showOwner, measured bool) template.HTML {
	var b strings.Builder
	b.Grow(len(rows) * 900)
	esc := html.EscapeString
	for _, r := range rows {
		id := strconv.FormatInt(r.ID, 10)
		status := esc(r.Status)
		fmt.Fprintf(&b, "<tr id=\"instance-%s\" data-status=\"%s\">\n", id, status)
		fmt.Fprintf(&b, "<th scope=\"row\"><a href=\"/ui/instances/%s\">Instance %s</a></th>\n", id, id)
		if showOwner {
			fmt.Fprintf(&b, "<td data-label=\"Owner\">%s</td>\n", esc(r.Owner))
		}
		fmt.Fprintf(&b, "<td data-label=\"Image\">%s</td>\n", esc(r.Image))
		fmt.Fprintf(&b, "<td data-label=\"Status\"><span class=\"badge %s\">%s</span>", status, status)
		if r.Err != "" {
			fmt.Fprintf(&b, "<br><small class=\"error-text\">%s</small>", esc(r.Err))
		}
		fmt.Fprintf(&b, "</td>\n<td data-label=\"Host:port\"><code>%s</code></td>\n<td data-label=\"Created\">%s</td>\n", esc(r.HostPort), esc(r.Created))
		if r.Protected {
			b.WriteString("<td data-label=\"Expires\">never (protected)</td>\n<td data-label=\"Protected\">yes</td>\n")
		} else {
			fmt.Fprintf(&b, "<td data-label=\"Expires\">%s <small class=\"muted\">%s</small></td>\n<td data-label=\"Protected\">no</td>\n", esc(r.Expires), esc(r.In))
		}
		if measured {
			if r.Written != "" {
				fmt.Fprintf(&b, "<td data-label=\"Disk written\" class=\"written\"><data value=\"%d\">%s</data></td>\n", r.WrittenBytes, esc(r.Written))
			} else {
				b.WriteString("<td data-label=\"Disk written\" class=\"written\"><span class=\"muted\">measuring…</span></td>\n")
			}
		}
		b.WriteString("</tr>\n")
	}
	return template.HTML(b.String())
}

type instancesData struct {
	Rows       template.HTML // instanceRows
	Empty      bool
	ShowOwner  bool
	Measured   bool // the disk written is measured
	Operations []operation
}

func (c *Console) instances(w http.ResponseWriter, r *http.Request, q *request) error {
	instances, err := c.opts.Instances.List(r.Context(), q.actor)
	if err != nil {
		return err
	}
	names, err := c.imageNames(r.Context(), q.actor)
	if err != nil {
		return err
	}
	d := instancesData{ShowOwner: q.actor.Upload, Measured: c.opts.Written != nil}
	var running []int64
	for _, inst := range instances {
		if inst.Status == store.InstanceRunning {
			running = append(running, inst.ID)
		}
	}
	written := c.written.get(q.actor, running)
	var rows []instanceRow
	live := false
	for _, inst := range instances {
		res := api.InstanceResource(inst, c.opts.PublicHostname, false) // its fleet host's hostname, if any
		row := instanceRow{ID: inst.ID, Owner: inst.Owner, Image: names[inst.ImageID], Status: res.Status, Err: inst.Error,
			HostPort: res.Hostname + ":" + strconv.Itoa(inst.Port), Created: formatTime(inst.CreatedAt),
			Expires: formatTime(inst.ExpiresAt), In: relative(inst.ExpiresAt), Protected: inst.Protected}
		if n, ok := written[inst.ID]; ok {
			row.Written, row.WrittenBytes = formatBytes(n), n
		}
		rows = append(rows, row)
		live = live || res.Status == string(store.InstanceCreating)
	}
	d.Rows, d.Empty = instanceRows(rows, d.ShowOwner, d.Measured), len(rows) == 0
	ops, busy := c.sessions.takeOps(q.session)
	d.Operations = ops
	c.renderLive(w, r, q, "instances.html", d, live || busy)
	return nil
}

// imageNames names each image by its name, or by "image N".
func (c *Console) imageNames(ctx context.Context, a engine.Actor) (map[int64]string, error) {
	images, err := c.opts.Images.List(ctx, a)
	if err != nil {
		return nil, err
	}
	names := map[int64]string{}
	for _, img := range images {
		names[img.ID] = imageName(img.ID, img.Name)
	}
	return names, nil
}

func imageName(id int64, name string) string {
	if name != "" {
		return fmt.Sprintf("%s (%d)", name, id)
	}
	return fmt.Sprintf("image %d", id)
}

// createInstance starts a clone of the form's image for the caller and
// sends the browser to the instances page, where it shows it creating
// until it runs (or why it failed).
func (c *Console) createInstance(w http.ResponseWriter, r *http.Request, q *request) error {
	imageID, err := formID(r, "image_id")
	if err != nil {
		return err
	}
	var ttl time.Duration
	if v := r.PostForm.Get("ttl"); v != "" {
		if ttl, err = time.ParseDuration(v); err != nil || ttl <= 0 {
			return api.BadRequest(fmt.Sprintf("lifetime %q is not a positive duration such as 30m or 2h", v))
		}
	}
	op := c.sessions.start(q.session, fmt.Sprintf("an instance of image %d", imageID))
	ctx := context.WithoutCancel(r.Context())
	go func() {
		inst, err := c.opts.Instances.Create(ctx, q.actor, engine.NewInstance{ImageID: imageID, TTL: ttl})
		var e *api.Error
		if err != nil {
			e = c.asError(ctx, err)
		}
		c.sessions.finish(op, inst.ID, e)
	}()
	http.Redirect(w, r, "/ui/instances", http.StatusSeeOther)
	return nil
}

type instanceData struct {
	*resource.Instance
	Owner     string
	Image     string
	PSQL      string
	Env       string
	Extend    []extendOption
	Backups   []*resource.Backup
	ShowOwner bool
}

type extendOption struct {
	Value, Label string
}

var extendOptions = []extendOption{{"1h", "1 hour"}, {"4h", "4 hours"}, {"24h", "1 day"}, {"72h", "3 days"}, {"168h", "7 days"}}

func (c *Console) instance(w http.ResponseWriter, r *http.Request, q *request) error {
	id, err := pathID(r)
	if err != nil {
		return err
	}
	inst, err := c.opts.Instances.Get(r.Context(), q.actor, id)
	if err != nil {
		return err
	}
	res := api.InstanceResource(inst, c.opts.PublicHostname, false)
	d := instanceData{Instance: res, Owner: inst.Owner, ShowOwner: q.actor.Upload, Extend: extendOptions,
		PSQL: fmt.Sprintf("psql %q", res.DatabaseURL), Env: fmt.Sprintf("eval $(sindri env %d)", res.ID)}
	if img, err := c.opts.Images.Get(r.Context(), q.actor, inst.ImageID); err == nil {
		d.Image = imageName(img.ID, img.Name)
	} else {
		d.Image = imageName(inst.ImageID, "")
	}
	backups, err := c.opts.Backups.List(r.Context(), q.actor)
	if err != nil {
		return err
	}
	live := res.Status == string(store.InstanceCreating)
	for _, b := range backups {
		if b.InstanceID == id {
			d.Backups = append(d.Backups, api.BackupResource(b))
			live = live || b.Status == store.BackupRunning
		}
	}
	c.renderLive(w, r, q, "instance.html", d, live)
	return nil
}

type confirmData struct {
	Title, Question, Action, Button, Cancel string
	Danger                                  bool
}

// confirmInstance asks before a reset or a destroy.
func (c *Console) confirmInstance(w http.ResponseWriter, r *http.Request, q *request) error {
	id, err := pathID(r)
	if err != nil {
		return err
	}
	inst, err := c.opts.Instances.Get(r.Context(), q.actor, id)
	if err != nil {
		return err
	}
	d := confirmData{Action: fmt.Sprintf("/ui/instances/%d/%s", inst.ID, r.PathValue("action")), Cancel: fmt.Sprintf("/ui/instances/%d", inst.ID), Danger: true}
	switch r.PathValue("action") {
	case "reset":
		d.Title, d.Button = fmt.Sprintf("Reset instance %d?", inst.ID), "Reset instance"
		d.Question = "Every change made in it since it was created is thrown away: it gets its image's data again. Its port, user and password stay."
	case "destroy":
		d.Title, d.Button = fmt.Sprintf("Destroy instance %d?", inst.ID), "Destroy instance"
		d.Question = "Its server stops and its data is deleted. This cannot be undone. Its backups stay."
	default:
		return &api.Error{Status: http.StatusNotFound, Code: api.CodeNotFound, Title: "Page not found",
			Detail: fmt.Sprintf("the console has no page %s", r.URL.Path)}
	}
	c.render(w, r, http.StatusOK, "confirm.html", q, d)
	return nil
}

func (c *Console) resetInstance(w http.ResponseWriter, r *http.Request, q *request) error {
	id, err := pathID(r)
	if err != nil {
		return err
	}
	inst, err := c.opts.Instances.Reset(r.Context(), q.actor, id)
	if err != nil {
		return err
	}
	return c.redirect(w, r, q, fmt.Sprintf("/ui/instances/%d", inst.ID), fmt.Sprintf("Instance %d was reset to its image's data.", inst.ID))
}

func (c *Console) protectInstance(w http.ResponseWriter, r *http.Request, q *request) error {
	id, err := pathID(r)
	if err != nil {
		return err
	}
	protect, err := strconv.ParseBool(r.PostForm.Get("protected"))
	if err != nil {
		return api.BadRequest("protected must be true or false")
	}
	inst, err := c.opts.Instances.Update(r.Context(), q.actor, id, nil, &protect)
	if err != nil {
		return err
	}
	notice := fmt.Sprintf("Instance %d is protected: it never expires.", inst.ID)
	if !inst.Protected {
		notice = fmt.Sprintf("Instance %d is no longer protected: it expires at its expiry time.", inst.ID)
	}
	return c.redirect(w, r, q, fmt.Sprintf("/ui/instances/%d", inst.ID), notice)
}

func (c *Console) extendInstance(w http.ResponseWriter, r *http.Request, q *request) error {
	id, err := pathID(r)
	if err != nil {
		return err
	}
	v := r.PostForm.Get("ttl")
	ttl, err := time.ParseDuration(v)
	if err != nil || ttl <= 0 {
		return api.BadRequest(fmt.Sprintf("lifetime %q is not a positive duration such as 30m or 2h", v))
	}
	at := c.opts.Now().Add(ttl).UTC().Truncate(time.Second)
	inst, err := c.opts.Instances.Update(r.Context(), q.actor, id, &at, nil)
	if err != nil {
		return err
	}
	return c.redirect(w, r, q, fmt.Sprintf("/ui/instances/%d", inst.ID),
		fmt.Sprintf("Instance %d now expires at %s.", inst.ID, at.Format("2006-01-02 15:04 UTC")))
}

func (c *Console) destroyInstance(w http.ResponseWriter, r *http.Request, q *request) error {
	id, err := pathID(r)
	if err != nil {
		return err
	}
	if err := c.opts.Instances.Destroy(r.Context(), q.actor, id); err != nil {
		return err
	}
	return c.redirect(w, r, q, "/ui/instances", fmt.Sprintf("Instance %d was destroyed.", id))
}

// --- backups ---

type backupRow struct {
	*resource.Backup
	Owner string
}

type backupsData struct {
	Backups   []backupRow
	ShowOwner bool
}

func (c *Console) backups(w http.ResponseWriter, r *http.Request, q *request) error {
	backups, err := c.opts.Backups.List(r.Context(), q.actor)
	if err != nil {
		return err
	}
	d := backupsData{ShowOwner: q.actor.Upload}
	live := false
	for _, b := range backups {
		d.Backups = append(d.Backups, backupRow{Backup: api.BackupResource(b), Owner: b.Owner})
		live = live || b.Status == store.BackupRunning
	}
	c.renderLive(w, r, q, "backups.html", d, live)
	return nil
}

func (c *Console) createBackup(w http.ResponseWriter, r *http.Request, q *request) error {
	id, err := formID(r, "instance_id")
	if err != nil {
		return err
	}
	b, err := c.opts.Backups.Create(r.Context(), q.actor, engine.BackupSource{InstanceID: id})
	if err != nil {
		return err
	}
	return c.redirect(w, r, q, fmt.Sprintf("/ui/instances/%d", id),
		fmt.Sprintf("Backup %d of instance %d is being written.", b.ID, id))
}

func (c *Console) downloadBackup(w http.ResponseWriter, r *http.Request, q *request) error {
	id, err := pathID(r)
	if err != nil {
		return err
	}
	f, b, err := c.opts.Backups.Open(r.Context(), q.actor, id)
	if err != nil {
		return err
	}
	defer f.Close()
	w.Header().Set("Content-Type", "application/zstd")
	w.Header().Set("Content-Disposition", fmt.Sprintf(`attachment; filename="sindri-backup-%d.tar.zst"`, b.ID))
	http.ServeContent(w, r, "", b.UpdatedAt, f)
	return nil
}

func (c *Console) confirmBackupDelete(w http.ResponseWriter, r *http.Request, q *request) error {
	id, err := pathID(r)
	if err != nil {
		return err
	}
	b, err := c.opts.Backups.Get(r.Context(), q.actor, id)
	if err != nil {
		return err
	}
	c.render(w, r, http.StatusOK, "confirm.html", q, confirmData{
		Title: fmt.Sprintf("Delete backup %d?", b.ID), Question: "Its archive is deleted. What it was taken of, and images restored from it, stay.",
		Action: fmt.Sprintf("/ui/backups/%d/delete", b.ID), Button: "Delete backup", Cancel: "/ui/backups", Danger: true,
	})
	return nil
}

func (c *Console) deleteBackup(w http.ResponseWriter, r *http.Request, q *request) error {
	id, err := pathID(r)
	if err != nil {
		return err
	}
	if err := c.opts.Backups.Delete(r.Context(), q.actor, id); err != nil {
		return err
	}
	return c.redirect(w, r, q, "/ui/backups", fmt.Sprintf("Backup %d was deleted.", id))
}
