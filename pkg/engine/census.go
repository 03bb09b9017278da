package engine

import (
	"context"
	"fmt"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/sindri-db/sindri/pkg/storage"
	"github.com/sindri-db/sindri/pkg/store"
)

// census is what reconcile finds when it holds the volumes against the
// metadata store.
type census struct {
	// accounted counts the volumes the store describes: an image's or an
	// instance's that it lists, or an abandoned one.
	accounted int
	// unaccounted names the others, each with the reason.
	unaccounted []string
	// foreign: volumes whose record names another installation.
	foreign int
	// abandoned: unreferenced instance volumes that are proven so: the
	// store holds a tombstone of their instance, and their record names
	// that instance.
	abandoned map[string]bool
	// instanceVolumeIDs are the ids of every instance volume on disk.
	instanceVolumeIDs []int64
	// floors are the highest ids that volumes of this installation (or
	// without a record) carry.
	floors store.IDFloors
	// mismatch: the store accounts for fewer volumes than it does not.
	mismatch bool
	problems []string
}

// maxNamed is how many volumes a problem names before "and N more".
const maxNamed = 5

// takeCensus holds each instance, image and upload volume against the
// store. A volume is accounted for when the store lists its instance or
// image and its record (if any: volumes made before records were kept
// have none) names that same instance or image of this installation; or
// when its instance's record went (a tombstone) and its own record names
// that instance: it is abandoned, and removeOrphans may remove it. Any
// other volume is kept, whatever happens. When the unaccounted volumes
// outnumber the accounted ones, the store is not the one these volumes
// belong to (a wrong database_url, an empty database, another
// installation's or an older dump): a mismatch.
func (e *Engine) takeCensus(ctx context.Context, entries []storage.Entry, instances []store.Instance, images []store.Image) (census, error) {
	c := census{abandoned: map[string]bool{}}
	installation, err := e.installationID(ctx)
	if err != nil {
		return c, err
	}
	listedInstances := map[int64]store.Instance{}
	for _, inst := range instances {
		listedInstances[inst.ID] = inst
	}
	listedImages := map[int64]store.Image{}
	for _, img := range images {
		listedImages[img.ID] = img
	}
	type unlisted struct {
		entry    storage.Entry
		rec      volumeRecord
		recorded bool
	}
	var unreferenced []unlisted
	var unreferencedIDs []int64
	otherInstallations := map[string]bool{}
	for _, v := range entries {
		id, kind := sindriVolume(v)
		if kind == "" {
			continue
		}
		rec, recorded, err := readVolumeRecord(v.Path)
		if err != nil {
			c.unaccounted = append(c.unaccounted, fmt.Sprintf("%s (%v)", v.Name, err))
			continue
		}
		if recorded && rec.Installation != installation {
			c.foreign++
			otherInstallations[rec.Installation] = true
			c.unaccounted = append(c.unaccounted, fmt.Sprintf("%s (of installation %s)", v.Name, rec.Installation))
			continue
		}
		switch kind {
		case recordInstance:
			c.instanceVolumeIDs = append(c.instanceVolumeIDs, id)
			c.floors.Instances = max(c.floors.Instances, id)
			inst, listed := listedInstances[id]
			switch {
			case !listed:
				unreferenced = append(unreferenced, unlisted{v, rec, recorded})
				unreferencedIDs = append(unreferencedIDs, id)
			case inst.Status == store.InstanceCreating && recorded && rec.Made && rec.is(installation, recordInstance, id, inst.CreatedAt):
				c.unaccounted = append(c.unaccounted, fmt.Sprintf("%s (instance %d is recorded creating, but its volume says it was made)", v.Name, id))
			case !recorded, rec.is(installation, recordInstance, id, inst.CreatedAt),
				rec.Kind == recordImage && rec.ID == inst.ImageID:
				c.accounted++
			default:
				c.unaccounted = append(c.unaccounted, fmt.Sprintf("%s (records %s %d created %s, not the instance the store lists)",
					v.Name, rec.Kind, rec.ID, rec.CreatedAt.UTC().Format("2006-01-02T15:04:05.999999Z")))
			}
		case recordImage:
			c.floors.Images = max(c.floors.Images, id)
			img, listed := listedImages[id]
			switch {
			case !listed:
				c.unaccounted = append(c.unaccounted, fmt.Sprintf("%s (no image %d in the store)", v.Name, id))
			case !recorded, rec.is(installation, recordImage, id, img.CreatedAt):
				c.accounted++
			default:
				c.unaccounted = append(c.unaccounted, fmt.Sprintf("%s (records %s %d created %s, not the image the store lists)",
					v.Name, rec.Kind, rec.ID, rec.CreatedAt.UTC().Format("2006-01-02T15:04:05.999999Z")))
			}
		}
	}
	tombstones, err := e.opts.Store.InstanceTombstones(ctx, unreferencedIDs)
	if err != nil {
		return c, err
	}
	for _, u := range unreferenced {
		id, _ := instanceIDOf(u.entry.Name)
		created, tombstoned := tombstones[id]
		switch {
		case !tombstoned:
			c.unaccounted = append(c.unaccounted, fmt.Sprintf("%s (no instance %d in the store, nor a tombstone of one)", u.entry.Name, id))
		case !u.recorded:
			c.unaccounted = append(c.unaccounted, fmt.Sprintf("%s (instance %d was destroyed, but the volume has no record of whose it is)", u.entry.Name, id))
		case !u.rec.is(installation, recordInstance, id, created):
			c.unaccounted = append(c.unaccounted, fmt.Sprintf("%s (records %s %d, not the destroyed instance %d)", u.entry.Name, u.rec.Kind, u.rec.ID, id))
		default:
			c.abandoned[u.entry.Name] = true
			c.accounted++
		}
	}
	c.mismatch = len(c.unaccounted) > c.accounted
	total := c.accounted + len(c.unaccounted)
	switch {
	case c.mismatch:
		hint := "is database_url the right database, or was an older dump of it restored?"
		switch {
		case len(instances) == 0 && len(images) == 0:
			hint = fmt.Sprintf("this metadata database (installation %s) lists no image and no instance: is database_url the right database?", installation)
		case c.foreign > 0:
			hint = fmt.Sprintf("%d of them belong to another sindri installation (%s) than this metadata database (%s): is database_url the right database?",
				c.foreign, strings.Join(slices.Sorted(maps.Keys(otherInstallations)), ", "), installation)
		}
		c.problems = append(c.problems, fmt.Sprintf(
			"the metadata store accounts for %d of the %d volumes on disk (not for %s); nothing is removed, started, reset or expired until they agree: %s",
			c.accounted, total, named(c.unaccounted), hint))
	case len(c.unaccounted) > 0:
		c.problems = append(c.problems, fmt.Sprintf(
			"%d volume(s) are kept that the metadata store does not account for: %s; remove them by hand once nothing needs them",
			len(c.unaccounted), named(c.unaccounted)))
	}
	return c, nil
}

// sindriVolume tells an instance volume ("instance-N"), and an image or
// its upload volume ("image-N", "upload-N"), with its id; kind "" for
// any other entry (a backup's snapshot, a name sindri does not make).
func sindriVolume(v storage.Entry) (id int64, kind string) {
	if id, ok := instanceIDOf(v.Name); ok && v.Kind == storage.KindVolume {
		return id, recordInstance
	}
	for _, prefix := range []string{"image-", "upload-"} {
		if rest, ok := strings.CutPrefix(v.Name, prefix); ok {
			if id, err := strconv.ParseInt(rest, 10, 64); err == nil && id > 0 {
				return id, recordImage
			}
		}
	}
	return 0, ""
}

// named lists the first maxNamed of names, and how many more.
func named(names []string) string {
	if len(names) <= maxNamed {
		return strings.Join(names, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(names[:maxNamed], ", "), len(names)-maxNamed)
}

// keepIDsAhead makes the store hand out no id that is on disk already:
// that of a volume, an upload directory or a backup archive. A database
// restored from an older dump would otherwise give a new instance, image
// or backup the name of one made after the dump.
func (e *Engine) keepIDsAhead(ctx context.Context, c census) error {
	floors := c.floors
	for _, dir := range []string{e.opts.UploadsDir, e.opts.BackupsDir} {
		if dir == "" {
			continue
		}
		names, err := os.ReadDir(dir)
		if err != nil && !os.IsNotExist(err) {
			return err
		}
		for _, de := range names {
			name := strings.TrimPrefix(de.Name(), ".")
			name, _, _ = strings.Cut(name, ".")
			id, err := strconv.ParseInt(name, 10, 64)
			if err != nil || id <= 0 {
				continue
			}
			if dir == e.opts.UploadsDir {
				floors.Images = max(floors.Images, id)
			} else {
				floors.Backups = max(floors.Backups, id)
			}
		}
	}
	moved, err := e.opts.Store.AdvanceIDs(ctx, floors)
	if len(moved) > 0 {
		e.log.Warn("engine: the store was behind the ids on disk (a restored older dump?); moved its ids past them",
			"kinds", strings.Join(moved, ","), "images", floors.Images, "instances", floors.Instances, "backups", floors.Backups)
	}
	return err
}
